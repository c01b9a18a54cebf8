"""Leakage, measured by the harness itself: `--protocol random` against the honest group-aware folds,
set side by side by `compare` (tests/test_compare.py covers compare itself)."""

import json

import pandas as pd
import pytest

from bench.drivers import prepare
from bench.data.synth import write_folder_dataset
from bench.tracking.tracker import Tracker
from cli import main
from conftest import FAST

SPEAKERS, CLIPS = 6, 8  # per class
REGEX = r"^(?P<group>[a-z]\d+)_"


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Two classes rendered by the same synthesizer, so their sound says nothing about the class;
    each speaker (a1_..., b4_...) leaves a strong recording signature on all of its clips."""
    root = tmp_path_factory.mktemp("leak") / "sounds"
    for cls in ("a", "b"):  # one call per class: both use synthesizer 0
        write_folder_dataset(
            root,
            {cls: [f"{cls}{s}_{j:02d}" for s in range(SPEAKERS) for j in range(CLIPS)]},
            seed=1,
            sr=8000,
            duration=0.5,
            signature=1.0,
        )
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
    return main(
        [
            "kfold",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--folds",
            "5",
            "--epochs",
            "12",
            "--no-mlflow",
            "--quiet",
            "--name",
            name,
            "--runs-dir",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *sets,
            *extra,
        ]
    )


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

    cmp = ["--runs-dir", str(runs), "--no-mlflow"]
    assert main(["compare", str(runs / "leaky"), str(runs / "honest"), "--json", "--out", "c1", *cmp]) == 0
    result = json.loads(capsys.readouterr().out)
    leaky_row, honest_row = result["runs"]  # best first
    assert leaky_row["run"] == "leaky" and leaky_row["leaky"] and not honest_row["leaky"]
    v = honest_row["vs_best"]
    assert v["diff"] == pytest.approx(b["acc_mean"] - a["acc_mean"])
    assert not v["paired"] and "other folds" in v["reason"] and v["ttest"] is None  # folds differ
    assert v["mcnemar"]["n_clips"] == 2 * SPEAKERS * CLIPS  # but every clip tested once in both
    assert v["mcnemar"]["only_best_right"] > v["mcnemar"]["only_run_right"]
    assert main(["compare", str(runs / "leaky"), str(runs / "honest"), "--out", "c2", *cmp]) == 0
    text = capsys.readouterr().out
    assert "honest: not paired with leaky: other folds" in text
    assert "The leaky protocol (leaky) scores +" in text and "what leakage is worth here" in text
