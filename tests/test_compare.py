"""`compare` over any number of runs: pairing, the tests of reports.stats, outputs and MLflow.

Hand-written run folders where the numbers are worked out by hand; three real tiny kfold runs
(two on the same folds, one on other folds) where the folder format itself matters."""

import json

import numpy as np
import pandas as pd
import pytest

from bench.core.runfolder import RunFolder
from bench.data.synth import write_folder_dataset
from cli import main
from conftest import FAST
from reports.compare import CompareError, compare_runs, render_comparison
from reports.stats import bayes_correlated_ttest, corrected_ttest, mcnemar_exact

#            clip  fold label, 3 folds of 4 clips (2 per class)
CLIPS = [(f"c{f}{j}", f, j % 2) for f in (1, 2, 3) for j in range(4)]


def write_run(run, right, dataset="toy", plan=None, info=None, labels=None, repeats=None):
    """A sealed run folder; `right`: the clips it predicts correctly. Split k tests fold k, validates
    on fold k+1 (4 clips) and trains on the other 4: n_train 4, n_test 4 in split.json. `repeats` R:
    the same fold plan R times over (split 3(r-1)+k tests fold k of repeat r), each clip tested R
    times; `right` then applies to every repeat."""
    (run / "splits").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {run.name}\ndataset:\n  name: {dataset}\n")
    df = pd.DataFrame(CLIPS, columns=["clip", "fold", "label"])
    df["label"] = [(labels or {}).get(c, y) for c, _, y in CLIPS]
    df["pred"] = [y if c in right else 1 - y for c, y in zip(df["clip"], df["label"])]
    columns = repeats or max([1] + [i.get("repeat", 1) for i in (info or {}).values()])
    for r in range(2, columns + 1):  # a repeat's fold column (here the same assignment again)
        df[f"fold_{r}"] = df["fold"]
    df[["clip", "fold", "label", *(f"fold_{r}" for r in range(2, columns + 1))]].to_csv(run / "folds.csv", index=False)
    splits = [(3 * (r - 1) + f, r, f) for r in range(1, (repeats or 1) + 1) for f in (1, 2, 3)]
    plan = plan or {"protocol": "Toy(n_folds=3)", "leaky": False}
    if repeats:
        plan = {**plan, "splits": [{"split": k, "repeat": r, "test_fold": f} for k, r, f in splits]}
    (run / "plan.json").write_text(json.dumps(plan))
    for k, r, f in splits:
        part = df[df["fold"] == f][["clip", "fold", "label", "pred"]]
        d = run / "splits" / str(k)
        d.mkdir()
        part.assign(prob_x=np.where(part["pred"] == 0, 0.9, 0.1), prob_y=np.where(part["pred"] == 1, 0.9, 0.1)).to_csv(
            d / "predictions.csv", index=False
        )
        extra = {"repeat": r} if repeats else (info or {}).get(k, {})
        (d / "split.json").write_text(
            json.dumps({"split": k, "test_fold": f, "n_train": 4, "n_val": 4, "n_test": 4, **extra})
        )
        RunFolder(run).seal(k)
    return run


ALL = {c for c, _, _ in CLIPS}
# per-split accuracy (folds 1, 2, 3): A 1, 1, 0.75; B 0.75, 0.5, 0.75; C 0.5, 0.5, 0.25
A_RIGHT = ALL - {"c33"}
B_RIGHT = ALL - {"c10", "c20", "c21", "c30"}
C_RIGHT = {"c10", "c11", "c20", "c21", "c30"}


def test_three_runs_one_table_best_first(tmp_path):
    c = write_run(tmp_path / "c", C_RIGHT)
    a = write_run(tmp_path / "a", A_RIGHT)
    b = write_run(tmp_path / "b", B_RIGHT)
    r = compare_runs(c, a, b, rope=0.01)
    assert [row["run"] for row in r["runs"]] == ["a", "b", "c"] and r["best"] == "a"
    assert [row["rank"] for row in r["runs"]] == [1, 2, 3]
    assert r["runs"][0]["vs_best"] is None
    vb = r["runs"][1]["vs_best"]
    d = np.array([0.75 - 1, 0.5 - 1, 0.75 - 0.75])  # b - a per split
    assert vb["paired"] and vb["splits"] == [1, 2, 3] and vb["diff"] == pytest.approx(d.mean())
    assert vb["ratio_test_train"] == 1.0  # n_test 4 / n_train 4, from split.json
    assert vb["ttest"]["p"] == pytest.approx(corrected_ttest(d, 1.0).p)
    assert vb["ttest"]["t"] == pytest.approx(d.mean() / np.sqrt((1 / 3 + 1) * d.var(ddof=1)))
    bayes = bayes_correlated_ttest(d, 1.0, 0.01)
    assert (vb["bayes"]["p_better"], vb["bayes"]["p_equiv"], vb["bayes"]["p_worse"]) == pytest.approx(bayes[:3])
    # per clip: only a right on c10 c20 c21 c30, only b right on c33 -> 4 vs 1
    assert vb["mcnemar"] == {
        "n_clips": 12,
        "only_run_right": 1,
        "only_best_right": 4,
        "p": pytest.approx(mcnemar_exact(1, 4)),
    }
    text = render_comparison(r)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[1] for line in rows] == ["a", "b", "c"]
    assert rows[0].split(" | ")[6] == "best" and rows[1].split(" | ")[6] == f"{d.mean():+.3f}"


def test_identical_runs_are_equivalent(tmp_path):
    a = write_run(tmp_path / "a", A_RIGHT)
    b = write_run(tmp_path / "b", A_RIGHT)
    v = compare_runs(a, b)["runs"][1]["vs_best"]
    assert v["paired"] and v["diff"] == 0
    assert v["ttest"]["p"] == 1.0 and v["ttest"]["t"] == 0.0
    assert v["bayes"]["p_equiv"] == pytest.approx(1.0)
    assert v["mcnemar"]["p"] == 1.0


def test_other_data_and_other_folds_are_not_paired(tmp_path):
    a = write_run(tmp_path / "a", A_RIGHT)
    elsewhere = write_run(tmp_path / "elsewhere", B_RIGHT, dataset="us8k")
    r = compare_runs(a, elsewhere)  # no exception: compared by means only
    v = r["runs"][1]["vs_best"]
    assert not v["paired"] and v["ttest"] is None and v["bayes"] is None and v["mcnemar"] is None
    assert "on dataset us8k, a on toy" in v["reason"]
    assert "elsewhere: not paired with a: on dataset us8k" in render_comparison(r)
    relabelled = write_run(tmp_path / "relabelled", A_RIGHT, labels={"c10": 1})
    v = compare_runs(a, relabelled)["runs"][1]["vs_best"]
    assert not v["paired"] and "other labels" in v["reason"]
    assert v["mcnemar"] is None and v["mcnemar_reason"] == "the runs give their clips different labels"
    fp = write_run(tmp_path / "fp", B_RIGHT, plan={"protocol": "Toy(n_folds=3)", "dataset_fingerprint": "x"})
    fp2 = write_run(tmp_path / "fp2", A_RIGHT, plan={"protocol": "Toy(n_folds=3)", "dataset_fingerprint": "y"})
    assert "fingerprints differ" in compare_runs(fp, fp2)["runs"][1]["vs_best"]["reason"]


def test_unfinished_splits_pair_on_the_common_ones(tmp_path):
    a = write_run(tmp_path / "a", A_RIGHT)
    b = write_run(tmp_path / "b", B_RIGHT)
    (b / "splits" / "3" / "DONE").unlink()  # b stopped before finishing split 3
    r = compare_runs(a, b)
    v = r["runs"][1]["vs_best"]
    assert v["paired"] and v["splits"] == [1, 2] and v["diff"] == pytest.approx(-0.375)
    assert r["runs"][1]["missing_splits"] == [3] and v["mcnemar"]["n_clips"] == 8  # folds 1 and 2 only
    text = render_comparison(r)
    assert "b: paired on the 2 split(s) both finished (1, 2)" in text
    assert "b is incomplete: split(s) 3 not finished" in text


def test_one_common_split_gives_no_test_over_splits(tmp_path):
    a = write_run(tmp_path / "a", A_RIGHT)
    b = write_run(tmp_path / "b", B_RIGHT)
    for k in (2, 3):
        (b / "splits" / str(k) / "DONE").unlink()
    v = compare_runs(a, b)["runs"][1]["vs_best"]
    assert v["paired"] and v["ttest"] is None and "one split in common" in v["notes"][-1]


def test_repeats_are_read_from_split_json(tmp_path):
    a = write_run(tmp_path / "a", A_RIGHT, info={3: {"repeat": 2}})
    b = write_run(tmp_path / "b", B_RIGHT)
    r = compare_runs(a, b)
    assert r["runs"][0]["repeats"] == 2 and r["runs"][1]["repeats"] == 1  # absent means repeat 1
    assert "| 3 (2 repeats) |" in render_comparison(r)
    assert not r["runs"][1]["vs_best"]["paired"]  # a repeated plan is another fold assignment
    assert "other folds" in r["runs"][1]["vs_best"]["reason"]


def test_two_repeated_runs_on_the_same_plans_are_paired_per_split_and_per_clip(tmp_path):
    a = write_run(tmp_path / "a", A_RIGHT, repeats=2)
    b = write_run(tmp_path / "b", B_RIGHT, repeats=2)
    r = compare_runs(a, b)
    v = r["runs"][1]["vs_best"]
    assert r["best"] == "a" and v["paired"] and v["splits"] == [1, 2, 3, 4, 5, 6]
    # each clip tested once per repeat: 12 clips x 2 repeats, paired repeat by repeat
    assert v["mcnemar"] is not None, v["mcnemar_reason"]
    assert v["mcnemar"]["n_clips"] == 24
    # per repeat: only b right on the clips b has and a lacks, only a right on the reverse
    assert (v["mcnemar"]["only_run_right"], v["mcnemar"]["only_best_right"]) == (
        2 * len(B_RIGHT - A_RIGHT),
        2 * len(A_RIGHT - B_RIGHT),
    )


def test_refusals(tmp_path, capsys):
    a = write_run(tmp_path / "runs" / "a", A_RIGHT)
    b = write_run(tmp_path / "runs" / "b", B_RIGHT)
    out = ["--runs-dir", str(tmp_path / "runs"), "--no-mlflow"]
    with pytest.raises(CompareError, match="two or more"):
        compare_runs(a)
    capsys.readouterr()
    for argv in (
        [str(a)],
        [str(a), str(tmp_path / "nowhere")],
        [str(a), str(a)],
        [str(a), str(b), "--out", str(tmp_path / "outside")],
        [str(a), str(b), "--rope", "-0.1"],
    ):
        assert main(["compare", *argv, *out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    (tmp_path / "empty").mkdir()  # a folder without finished splits cannot be read
    assert main(["compare", str(a), str(tmp_path / "empty"), *out]) == 2
    assert "fewer than two readable runs" in capsys.readouterr().err
    # ... but beside two readable runs it is left out with a note
    r = compare_runs(a, b, tmp_path / "empty")
    assert len(r["runs"]) == 2 and "no finished splits" in render_comparison(r)
    bad_store = f"sqlite:///{tmp_path / 'no-such-folder' / 'mlflow.db'}"
    assert (
        main(
            [
                "compare",
                str(a),
                str(b),
                "--out",
                "cmp",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--tracking-uri",
                bad_store,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow store") and err.count("\n") == 1
    assert not (tmp_path / "runs" / "cmp").exists()  # the store is checked before anything is written
    (tmp_path / "runs" / "taken").mkdir()
    (tmp_path / "runs" / "taken" / "x").write_text("")
    assert main(["compare", str(a), str(b), "--out", "taken", *out]) == 2
    assert "already exists" in capsys.readouterr().err


def test_outputs_agree(tmp_path, capsys):
    runs = tmp_path / "runs"
    a, b, c = (write_run(runs / n, right) for n, right in (("a", A_RIGHT), ("b", B_RIGHT), ("c", C_RIGHT)))
    assert main(["compare", str(b), str(c), str(a), "--out", "cmp", "--runs-dir", str(runs), "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    folder = runs / "cmp"
    assert sorted(p.name for p in folder.iterdir()) == ["compare.csv", "compare.json", "compare.md", "compare.png"]
    assert (folder / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "compare.md").read_text()
    assert md in printed  # the terminal shows the same table
    data = json.loads((folder / "compare.json").read_text())
    csv = pd.read_csv(folder / "compare.csv")
    assert list(csv["run"]) == [r["run"] for r in data["runs"]] == ["a", "b", "c"]
    assert csv["acc_mean"].tolist() == pytest.approx([r["acc_mean"] for r in data["runs"]])
    assert csv["ttest_p"].iloc[1] == pytest.approx(data["runs"][1]["vs_best"]["ttest"]["p"])
    assert csv["p_equiv"].iloc[2] == pytest.approx(data["runs"][2]["vs_best"]["bayes"]["p_equiv"])
    for r in data["runs"]:
        assert f"{r['acc_mean']:.3f} ± {r['acc_std']:.3f}" in md
    assert main(["compare", str(a), str(b), "--out", "cmp2", "--runs-dir", str(runs), "--no-mlflow", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((runs / "cmp2" / "compare.json").read_text())


def test_comparison_is_logged_to_mlflow(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    a, b = write_run(runs / "a", A_RIGHT), write_run(runs / "b", B_RIGHT)
    (a / "mlflow.json").write_text('{"parent": "abc123"}\n')  # as kfold leaves it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["compare", str(a), str(b), "--out", "cmp", "--runs-dir", str(runs), "--tracking-uri", uri]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("toy")  # the dataset's name, as kfold's
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'comparison'")
    tags = run.data.tags
    assert tags["best"] == "a" and tags["compared_runs"] == "a, b"
    assert tags["run.a.folder"] == str(a.resolve()) and tags["run.a.parent_run"] == "abc123"
    assert "run.b.parent_run" not in tags and run.data.params == {"rope": "0.01"}
    assert run.data.metrics["acc_mean.a"] == pytest.approx(2.75 / 3)
    assert run.data.metrics["acc_mean.b"] == pytest.approx(2 / 3)
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id)) == [
        "compare.csv",
        "compare.json",
        "compare.md",
        "compare.png",
    ]
    assert run.info.status == "FINISHED"


# ---- real tiny runs: two on the same folds, one on other folds ----


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    root = tmp / "sounds"
    write_folder_dataset(
        root,
        {
            "a": [f"a{s}_{j}" for s in range(4) for j in range(3)],
            "b": [f"b{s}_{j}" for s in range(4) for j in range(3)],
        },
        seed=1,
        sr=8000,
        duration=0.5,
    )
    sets = [f"--set={k}={v}" for k, v in FAST.items() if k != "tracking.mlflow"]
    for name, extra in (("three", []), ("three-seed1", ["--seed", "1"]), ("four", ["--folds", "4"])):
        folds = [] if extra[:1] == ["--folds"] else ["--folds", "3"]
        assert (
            main(
                [
                    "kfold",
                    "--dataset",
                    "folder",
                    "--root",
                    str(root),
                    "--epochs",
                    "2",
                    "--no-mlflow",
                    "--quiet",
                    "--threads",
                    "1",
                    "--name",
                    name,
                    "--runs-dir",
                    str(tmp / "runs"),
                    "--cache-dir",
                    str(tmp / "cache"),
                    *folds,
                    *extra,
                    *sets,
                ]
            )
            == 0
        )
    return tmp / "runs"


def test_real_runs_pair_only_on_the_same_folds(real_runs, capsys):
    capsys.readouterr()
    r = compare_runs(real_runs / "four", real_runs / "three", real_runs / "three-seed1")
    names = [row["run"] for row in r["runs"]]
    three = {"three", "three-seed1"}
    for row in r["runs"][1:]:
        v = row["vs_best"]
        # against the best run on the same folds where the best overall is on others
        should_pair = row["run"] in three and (r["best"] in three or names.index(row["run"]) == 2)
        assert v["paired"] == should_pair, (names, v["reason"])
        assert row["vs"] == (names[1] if should_pair and r["best"] not in three else r["best"])
        if should_pair:
            assert v["splits"] == [1, 2, 3] and v["ttest"] is not None and v["mcnemar"]["n_clips"] == 24
            # n_train / n_test as split.json writes them: 1 test fold, 1 validation fold, 1 training fold
            assert v["ratio_test_train"] == pytest.approx(1.0)
        else:
            assert "other folds" in v["reason"] and "n_folds=4" in v["reason"] + r["runs"][0]["protocol"]
            assert v["ttest"] is None and v["bayes"] is None
            assert v["mcnemar"] is not None  # same clips, each tested once: per-clip pairing holds
    text = render_comparison(r)
    assert "not paired with" in text and "other folds" in text


def test_a_full_disk_leaves_no_partial_comparison_and_the_same_command_runs_again(tmp_path, monkeypatch, capsys):
    """compare.png's write fails with ENOSPC after the csv, md and json were written: exit 3, and
    the --out folder holds none of them (no comparison that looks finished but lacks its plot), so
    the same command, run again once space is free ("run the command again"), is not refused."""
    import errno
    import os

    import reports.plots

    runs = tmp_path / "runs"
    a, b = (write_run(runs / n, right) for n, right in (("a", A_RIGHT), ("b", B_RIGHT)))
    flags = ["compare", str(a), str(b), "--out", "cmp", "--runs-dir", str(runs), "--no-mlflow"]
    real = reports.plots.plot_comparison

    def full(result, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(reports.plots, "plot_comparison", full)
    assert main(flags) == 3
    assert "No space left on device" in capsys.readouterr().err
    assert not (runs / "cmp").exists() or not any((runs / "cmp").iterdir())
    monkeypatch.setattr(reports.plots, "plot_comparison", real)
    assert main(flags) == 0
    assert sorted(p.name for p in (runs / "cmp").iterdir()) == [
        "compare.csv",
        "compare.json",
        "compare.md",
        "compare.png",
    ]
