"""Leakage, measured by the harness itself: `--protocol random` against the honest group-aware folds,
and `reports.compare` (paired per clip, and per fold when two runs share their folds)."""
import json

import numpy as np
import pandas as pd
import pytest

from bench import prepare
from bench.runfolder import RunFolder
from bench.synth import write_folder_dataset
from bench.tracking import Tracker
from cli import main
from conftest import FAST
from reports.compare import CompareError, compare_runs, render_comparison

SPEAKERS, CLIPS = 6, 8  # per class
REGEX = r"^(?P<group>[a-z]\d+)_"


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Two classes rendered by the same synthesizer, so their sound says nothing about the class;
    each speaker (a1_..., b4_...) leaves a strong recording signature on all of its clips."""
    root = tmp_path_factory.mktemp("leak") / "sounds"
    for cls in ("a", "b"):  # one call per class: both use synthesizer 0
        write_folder_dataset(root, {cls: [f"{cls}{s}_{j:02d}" for s in range(SPEAKERS) for j in range(CLIPS)]},
                             seed=1, sr=8000, duration=0.5, signature=1.0)
    return root


class TagSpy(Tracker):
    """MLflow off, but the tags of the job's parent run (the one tagged with the dataset) are kept."""
    tags: list = []

    def start(self, name, params=None, tags=None, parent=None, run_id=None):
        if "dataset" in (tags or {}):
            TagSpy.tags.append(dict(tags))
        return None


def kfold(tmp_path, root, name, *extra):
    sets = [f"--set={k}={v}" for k, v in FAST.items() if k != "tracking.mlflow"]
    return main(["kfold", "--dataset", "folder", "--root", str(root), "--folds", "5", "--epochs", "12",
                 "--no-mlflow", "--quiet", "--name", name, "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), *sets, *extra])


def test_random_protocol_scores_higher_than_honest_folds(signed, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepare, "Tracker", TagSpy)  # the job's tracker is made in prepare
    TagSpy.tags = []
    assert kfold(tmp_path, signed, "honest", "--group-regex", REGEX) == 0
    assert kfold(tmp_path, signed, "leaky", "--group-regex", REGEX, "--protocol", "random") == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs"

    honest = pd.read_csv(runs / "honest" / "folds.csv")
    assert (honest.groupby("group")["fold"].nunique() == 1).all()  # no speaker in two folds
    leaky = pd.read_csv(runs / "leaky" / "folds.csv")
    assert (leaky.groupby("group")["fold"].nunique() > 1).all()  # every speaker on both sides

    a = json.loads((runs / "leaky" / "scores.json").read_text())
    b = json.loads((runs / "honest" / "scores.json").read_text())
    assert a["leaky"] is True and b["leaky"] is False
    assert a["acc_mean"] > b["acc_mean"] + 0.15, (a["acc_mean"], b["acc_mean"])
    assert "LEAKY PROTOCOL RandomFolds(n_folds=5, seed=0)" in (runs / "leaky" / "report.md").read_text()
    assert "LEAKY" not in (runs / "honest" / "report.md").read_text()
    assert "LEAKY PROTOCOL" in out  # the terminal summary says it too
    assert [t["leaky"] for t in TagSpy.tags] == [False, True]  # the MLflow parent-run tag

    assert main(["compare", str(runs / "leaky"), str(runs / "honest"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["diff_acc_mean"] == pytest.approx(a["acc_mean"] - b["acc_mean"])
    assert result["a"]["leaky"] and not result["b"]["leaky"] and result["per_fold"] is None
    assert result["clips"]["common"] == 2 * SPEAKERS * CLIPS
    assert result["clips"]["only_a_right"] > result["clips"]["only_b_right"]
    assert main(["compare", str(runs / "leaky"), str(runs / "honest")]) == 0
    text = capsys.readouterr().out
    assert "difference of mean accuracy, A - B: +" in text and "no per-fold pairing" in text
    assert "The leaky protocol scores +" in text


# ---- compare on hand-written run folders: every number below by hand ----

def write_run(run, rows, plan=None, dataset="toy"):
    """rows: (clip, fold, label, pred); one split per fold."""
    (run / "splits").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {run.name}\ndataset:\n  name: {dataset}\n")
    df = pd.DataFrame(rows, columns=["clip", "fold", "label", "pred"])
    df[["clip", "fold", "label"]].to_csv(run / "folds.csv", index=False)
    if plan is not None:  # the plan is written before any split is sealed
        (run / "plan.json").write_text(json.dumps(plan))
    for k, (fold, part) in enumerate(df.groupby("fold"), start=1):
        d = run / "splits" / str(k)
        d.mkdir()
        part = part.assign(prob_x=np.where(part["pred"] == 0, 0.9, 0.1), prob_y=np.where(part["pred"] == 1, 0.9, 0.1))
        part.to_csv(d / "predictions.csv", index=False)
        (d / "split.json").write_text(json.dumps({"split": k, "test_fold": int(fold)}))
        RunFolder(run).seal(k)
    return run


#            clip  fold label
CLIPS_ = [("c1", 1, 0), ("c2", 1, 1), ("c3", 2, 0), ("c4", 2, 1), ("c5", 3, 0), ("c6", 3, 1)]


def test_compare_same_folds_is_paired_per_fold(tmp_path):
    # A right on c1 c2 c3 c4 c5 (fold acc 1, 1, 0.5); B right on c1 c3 c6 (0.5, 0.5, 0.5)
    a = write_run(tmp_path / "a", [(c, f, y, y if c != "c6" else 1 - y) for c, f, y in CLIPS_],
                  plan={"protocol": "StratifiedFolds(n_folds=3, seed=0)", "leaky": False})
    b = write_run(tmp_path / "b", [(c, f, y, y if c in ("c1", "c3", "c6") else 1 - y) for c, f, y in CLIPS_])
    r = compare_runs(a, b)
    assert r["diff_acc_mean"] == pytest.approx(2.5 / 3 - 0.5)
    assert r["clips"] == {"common": 6, "only_in_a": 0, "only_in_b": 0, "acc_a": pytest.approx(5 / 6),
                          "acc_b": pytest.approx(0.5), "both_right": 2, "only_a_right": 3, "only_b_right": 1,
                          "both_wrong": 0, "mcnemar_p": pytest.approx(0.625)}  # binomial: 4 discordant, 3 vs 1
    pf = r["per_fold"]
    assert [f["diff"] for f in pf["folds"]] == pytest.approx([0.5, 0.5, 0.0])
    assert pf["diff_mean"] == pytest.approx(1 / 3) and pf["a_better_folds"] == 2 and pf["n_folds"] == 3
    half = 4.302652729911275 * np.std([0.5, 0.5, 0.0], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert pf["diff_ci95"] == pytest.approx([1 / 3 - half, 1 / 3 + half])
    text = render_comparison(r)
    assert "| 3 | 0.500 | 0.500 | +0.000 |" in text and "A better on 2 of 3 folds" in text


def test_compare_refuses_different_data(tmp_path):
    a = write_run(tmp_path / "a", [(c, f, y, y) for c, f, y in CLIPS_])
    other = write_run(tmp_path / "other", [("z1", 1, 0, 0), ("z2", 2, 1, 1)])
    with pytest.raises(CompareError, match="share no test clip"):
        compare_runs(a, other)
    relabelled = write_run(tmp_path / "relabelled", [(c, f, 1 - y, y) for c, f, y in CLIPS_])
    with pytest.raises(CompareError, match="different labels"):
        compare_runs(a, relabelled)
    elsewhere = write_run(tmp_path / "elsewhere", [(c, f, y, y) for c, f, y in CLIPS_], dataset="us8k")
    with pytest.raises(CompareError, match="dataset toy.*us8k"):
        compare_runs(a, elsewhere)
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(a), str(tmp_path / "empty")]) == 2  # error: ..., exit status 2


def test_compare_warns_when_a_run_is_incomplete(tmp_path):
    a = write_run(tmp_path / "a", [(c, f, y, y) for c, f, y in CLIPS_])
    b = write_run(tmp_path / "b", [(c, f, y, y) for c, f, y in CLIPS_])
    (b / "splits" / "3" / "DONE").unlink()  # b stopped before finishing split 3
    r = compare_runs(a, b)
    assert r["a"]["missing_splits"] == [] and r["b"]["missing_splits"] == [3]
    text = render_comparison(r)
    assert "run B is incomplete (split(s) 3 not finished)" in text and "run A is incomplete" not in text
