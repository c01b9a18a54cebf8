"""Readers see only what the run folder verified: split folders by the plan's split list, plan.json
as far as the DONE markers vouch for it, predictions that agree with their own probabilities; and a
report that fails replaces none of its files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cli
from bench.core.runfolder import RunFolder
from reports import build_report
from reports.files import atomic_write_text, read_plan
from tests.test_reports import write_run

OUTPUTS = [
    "scores.json",
    "per_fold.csv",
    "per_class.csv",
    "confusion_counts.csv",
    "report.md",
    "report.html",
    "fold_scores.png",
    "learning_curves.png",
]
PLAN = {
    "protocol": "PredefinedFolds()",
    "leaky": False,
    "leak_reason": None,
    "n_clips": 12,
    "dataset_fingerprint": "c1-abc",
    "warnings": [],
    "notes": [],
    "splits": [{"split": k, "test_fold": k} for k in (1, 2, 3)],
}


def sealed_run(path, done=(1, 2)):
    """test_reports' hand-written run, with a plan.json, its splits sealed over it."""
    run = write_run(path, done=())
    atomic_write_text(run / "plan.json", json.dumps(PLAN))
    for k in done:
        RunFolder(run).seal(k)
    return run


def older_run(path):
    """The hand-written run with its splits 1 and 2 sealed as the previous release sealed them: no
    "seal", a digest over the settings, folds.csv and plan.json's PLAN_KEYS only."""
    run = sealed_run(path, done=())
    folder = RunFolder(run)
    for k in (1, 2):
        folder.seal(k)
        done = json.loads((folder.split_dir(k) / "DONE").read_text())
        del done["seal"]
        done["settings"] = folder.settings_digest(seal=None)
        atomic_write_text(folder.split_dir(k) / "DONE", json.dumps(done))
    return run


def snapshot(run):
    return {name: (run / name).read_bytes() for name in OUTPUTS}


@pytest.mark.parametrize("stray", ["02", "2.0", "+2", " 2", "٢", "11", "x", "README"])
def test_anything_else_under_splits_is_refused_and_no_output_changes(tmp_path, stray):
    """A second spelling of split 2 holding perfect predictions (the case that once scored 1.000),
    another number, a stray folder or file: named in one line, never scored, no output replaced."""
    run = sealed_run(tmp_path / "r")
    build_report(run)
    before = snapshot(run)
    target = run / "splits" / stray
    if stray == "README":
        target.write_text("notes\n")
    else:
        shutil.copytree(run / "splits" / "2", target)
        pred = pd.read_csv(target / "predictions.csv", dtype={"clip": str})
        pred["pred"] = pred["label"]  # a perfect split
        pred.to_csv(target / "predictions.csv", index=False)
    assert cli.main(["report", str(run)]) == 2
    assert snapshot(run) == before
    with pytest.raises(ValueError, match="not a split of the fold plan"):
        build_report(run)
    assert (
        cli.main(
            [
                "compare",
                str(run),
                str(sealed_run(tmp_path / "other")),
                "--out",
                "cmp",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--no-mlflow",
            ]
        )
        == 2
    )
    assert not (tmp_path / "runs" / "cmp").exists()


@pytest.mark.parametrize(
    "field,value",
    [
        ("dataset_fingerprint", "c1-forged"),
        ("n_clips", 99),
        ("warnings", ["forged"]),
        ("notes", ["forged"]),
        ("repeats", 2),
        ("extra", 1),
    ],
)
def test_every_field_of_plan_json_is_vouched_for(tmp_path, field, value):
    run = sealed_run(tmp_path / "r")
    scores = build_report(run)
    assert read_plan(run)["dataset_fingerprint"] == "c1-abc"
    plan = json.loads((run / "plan.json").read_text())
    plan[field] = value
    atomic_write_text(run / "plan.json", json.dumps(plan))
    with pytest.raises(ValueError, match="split 1 cannot be scored: it was made with other settings"):
        build_report(run)
    assert cli.main(["report", str(run)]) == 2
    assert json.loads((run / "scores.json").read_text()) == json.loads(json.dumps(scores, default=str))


def test_an_older_done_vouches_for_its_keys_only(tmp_path):
    """A DONE written before every plan.json field was vouched for (no seal) still verifies, and
    readers are shown only the fields it vouched for: the fingerprint is not read."""
    run = older_run(tmp_path / "r")
    folder = RunFolder(run)
    assert folder.verified() == [1, 2]
    plan = read_plan(run)
    assert plan["protocol"] == "PredefinedFolds()" and "dataset_fingerprint" not in plan
    scores = build_report(run)
    assert scores["acc_mean"] == pytest.approx((2 / 4 + 3 / 5) / 2)
    plan = json.loads((run / "plan.json").read_text())
    plan["leaky"] = True  # one of the keys it did vouch for
    atomic_write_text(run / "plan.json", json.dumps(plan))
    with pytest.raises(ValueError, match="it was made with other settings"):
        build_report(run)


def test_pred_must_be_the_most_probable_class_even_when_resealed(tmp_path):
    run = sealed_run(tmp_path / "r")
    path = RunFolder(run).split_dir(1) / "predictions.csv"
    pred = pd.read_csv(path, dtype={"clip": str})
    pred.loc[1, "pred"] = pred.loc[1, "label"]  # c2 now "correct", its probabilities unchanged
    pred.to_csv(path, index=False)
    RunFolder(run).seal(1)
    with pytest.raises(
        ValueError,
        match=r"split 1 cannot be scored: predictions.csv's pred is not the "
        r"most probable class in 1 row\(s\) \(first: row 2\)",
    ):
        build_report(run)
    pred.loc[1, "pred"] = 7  # not a class id
    pred.to_csv(path, index=False)
    RunFolder(run).seal(1)
    with pytest.raises(ValueError, match="pred column holds values that are not class ids 0..2"):
        build_report(run)


def test_a_tie_between_probabilities_may_go_either_way(tmp_path):
    run = sealed_run(tmp_path / "r")
    path = RunFolder(run).split_dir(1) / "predictions.csv"
    pred = pd.read_csv(path, dtype={"clip": str})
    probs = [c for c in pred.columns if c.startswith("prob_")]
    pred.loc[0, probs] = [0.45, 0.45, 0.1]
    pred.loc[0, "pred"] = 1  # c1 (a dog) predicted cat on a tie
    pred.to_csv(path, index=False)
    RunFolder(run).seal(1)
    assert build_report(run)["per_fold"][0]["accuracy"] == pytest.approx(1 / 4)


def test_a_report_that_fails_midway_replaces_no_file(tmp_path, monkeypatch):
    run = sealed_run(tmp_path / "r")
    build_report(run)
    before = snapshot(run)
    # a third split finishes, then drawing fails after scores.json and the tables are computed
    pd.read_csv(run / "splits" / "3" / "predictions.csv")
    RunFolder(run).seal(3)
    import reports.render as render

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(render, "plot_fold_scores", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        build_report(run)
    assert snapshot(run) == before
    assert not [p for p in run.iterdir() if p.name.startswith(".staged")]
    monkeypatch.undo()
    assert build_report(run)["n_splits"] == 3
    assert snapshot(run) != before


def test_scores_do_not_depend_on_the_name_in_config_yaml(tmp_path):
    """config.yaml's `name` is not vouched for by any digest: the report names the run by its folder."""
    run = sealed_run(tmp_path / "my-run")
    (run / "config.yaml").write_text("name: forged\ndataset:\n  name: toy\n")
    assert build_report(run)["run"] == "my-run"
    assert np.isclose(json.loads((run / "scores.json").read_text())["acc_mean"], (0.5 + 0.6) / 2)


@pytest.mark.parametrize(
    "splits",
    [
        [{"split": "x"}],
        "abc",
        [1, 2],
        [{"split": 1}, {"split": 1}],
        [{"split": 1.5}],
        [{"split": -1}],
        [{"split": True}],
    ],
)
def test_a_damaged_split_list_is_one_line_not_a_traceback(tmp_path, capsys, splits):
    run = sealed_run(tmp_path / "r")
    plan = json.loads((run / "plan.json").read_text())
    atomic_write_text(run / "plan.json", json.dumps({**plan, "splits": splits}))
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plan.json: its split list is damaged" in err


def test_an_older_done_does_not_vouch_for_quarantine_csv(tmp_path):
    """An older DONE never covered quarantine.csv: a listing added to it afterwards is not shown, and
    the report says why instead of claiming a count."""
    run = older_run(tmp_path / "r")
    with open(run / "quarantine.csv", "a") as f:
        f.write("fold1/evil.wav,FORGEDREASON\n")
    scores = build_report(run)
    md = (run / "report.md").read_text()
    assert scores["quarantined"] is None and "FORGEDREASON" not in md
    assert "written before they covered quarantine.csv" in md


def test_a_full_disk_while_reporting_names_the_run_folder_and_replaces_nothing(tmp_path, monkeypatch, capsys):
    import errno
    import os

    run = sealed_run(tmp_path / "r")
    build_report(run)
    before = snapshot(run)
    real = pd.DataFrame.to_csv

    def full(self, path=None, *args, **kwargs):
        if path is not None and Path(path).name.startswith(".per_class"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert cli.main(["report", str(run)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"(writing in {run.resolve()})" in err
    assert snapshot(run) == before and not [p for p in run.iterdir() if p.name.startswith(".staged")]
