"""kfold end to end on GTZAN and folder layouts: default stratified folds, gtzan-filtered, quarantine."""

import json

import pandas as pd
import pytest
from torchaudio.datasets import gtzan as ta_gtzan

from bench.data.synth import write_folder_dataset, write_gtzan
from cli import main
from conftest import FAST

N_PER_GENRE = 40  # excerpts 0..39: every genre has clips in torchaudio's filtered training list


def fast_flags(tmp_path, name, epochs=1):
    sets = [f"--set={k}={v}" for k, v in FAST.items() if k != "tracking.mlflow"]
    return [
        "--no-mlflow",
        "--quiet",
        "--name",
        name,
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--epochs",
        str(epochs),
        *sets,
    ]


@pytest.fixture(scope="module")
def gtzan_root(tmp_path_factory):
    """GTZAN layout, 40 excerpts per genre, and the redistribution's undecodable jazz.00054.wav."""
    root = tmp_path_factory.mktemp("gtzan")
    write_gtzan(root, n_per_genre=N_PER_GENRE, sr=8000, duration=0.25)
    (root / "genres" / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" * 4)
    return root


def test_gtzan_default_stratified_10_folds_with_quarantine(gtzan_root, tmp_path, capsys):
    code = main(
        ["kfold", "--dataset", "gtzan", "--root", str(gtzan_root), "--splits", "1", *fast_flags(tmp_path, "gtzan")]
    )
    err = capsys.readouterr().err
    assert code == 0 and "quarantined 1 file(s)" in err
    run = tmp_path / "runs" / "gtzan"
    folds = pd.read_csv(run / "folds.csv")
    assert len(folds) == 10 * N_PER_GENRE and "jazz/jazz.00054.wav" not in set(folds["clip"])
    counts = pd.crosstab(folds["class"], folds["fold"])
    assert counts.shape == (10, 10) and (counts == N_PER_GENRE // 10).all().all()  # stratified exactly
    quarantine = pd.read_csv(run / "quarantine.csv")
    assert quarantine["clip"].tolist() == ["jazz/jazz.00054.wav"]
    report = (run / "report.md").read_text()
    assert "jazz/jazz.00054.wav" in report and "StratifiedFolds(n_folds=10, seed=0)" in report
    assert json.loads((run / "plan.json").read_text())["leaky"] is False
    # Same seed, same folds.csv.
    assert (
        main(
            ["kfold", "--dataset", "gtzan", "--root", str(gtzan_root), "--splits", "1", *fast_flags(tmp_path, "again")]
        )
        == 0
    )
    assert (tmp_path / "runs" / "again" / "folds.csv").read_text() == (run / "folds.csv").read_text()


def test_gtzan_filtered_one_split(gtzan_root, tmp_path, capsys):
    code = main(
        [
            "kfold",
            "--dataset",
            "gtzan",
            "--root",
            str(gtzan_root),
            "--protocol",
            "gtzan-filtered",
            *fast_flags(tmp_path, "filtered"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0 and "leaves out" in err
    run = tmp_path / "runs" / "filtered"
    lists = {1: ta_gtzan.filtered_test, 2: ta_gtzan.filtered_valid, 3: ta_gtzan.filtered_train}
    present = {f"{g}.{i:05d}" for g in ta_gtzan.gtzan_genres for i in range(N_PER_GENRE)}
    folds = pd.read_csv(run / "folds.csv")
    stems = folds["clip"].str.split("/").str[1].str.rsplit(".", n=1).str[0]
    for fold, ids in lists.items():
        assert set(stems[folds["fold"] == fold]) == set(ids) & present
    plan = json.loads((run / "plan.json").read_text())
    assert plan["protocol"] == "GtzanFiltered()" and plan["left_out"] == len(present - set().union(*lists.values()))
    assert [(s["test_fold"], s["val_fold"], s["n_test"]) for s in plan["splits"]] == [
        (1, 2, (folds["fold"] == 1).sum())
    ]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["n_splits"] == 1 and scores["missing_splits"] == []
    assert "INCOMPLETE" not in (run / "report.md").read_text()


def test_folder_unreadable_and_empty_files_are_quarantined(tmp_path, capsys):
    root = tmp_path / "sounds"
    write_folder_dataset(
        root, {c: [f"s{i}_{j}" for i in range(5) for j in range(2)] for c in ("a", "b", "c")}, sr=8000, duration=0.25
    )
    (root / "a" / "unreadable.wav").write_bytes(b"\x00\x01 not a sound file")
    (root / "b" / "zero.flac").write_bytes(b"")
    (root / "c" / "readme.txt").write_text("not audio")
    code = main(
        [
            "kfold",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--splits",
            "1",
            "--folds",
            "3",
            *fast_flags(tmp_path, "f"),
        ]
    )
    assert code == 0
    run = tmp_path / "runs" / "f"
    quarantine = pd.read_csv(run / "quarantine.csv").set_index("clip")["reason"]
    assert quarantine["b/zero.flac"] == "empty file (0 bytes)"
    assert quarantine["a/unreadable.wav"].startswith("cannot decode")
    report = (run / "report.md").read_text()
    assert "a/unreadable.wav" in report and "b/zero.flac" in report and "skipped 1 non-audio file(s)" in report
    assert pd.read_csv(run / "folds.csv")["fold"].nunique() == 3
