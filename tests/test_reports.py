"""Reports from a hand-written run folder; every expected number below is worked out by hand."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.core.runfolder import RunFolder
from reports import build_report, summary_table
from reports.aggregate import class_names, fold_scores, load_predictions, per_class, summary
from reports.confusion import confusion_counts, normalize_rows, plot_confusion
from reports.files import atomic_write_text, missing_splits

# Class ids 0, 1, 2 are named in this (non-alphabetical) order; "bird" is never predicted.
CLASSES = ["dog", "cat", "bird"]

# (clip, label, pred) per split; split k tests fold k.
SPLIT_ROWS = {
    1: [("c1", 0, 0), ("c2", 0, 1), ("c3", 1, 1), ("c4", 2, 0)],  # 2/4 correct
    2: [("c5", 0, 0), ("c6", 1, 1), ("c7", 1, 0), ("c8", 2, 1), ("c9", 1, 1)],  # 3/5 correct
    3: [("c10", 2, 2), ("c11", 2, 2), ("c12", 0, 2)],  # no DONE: must not count
}

# Splits 1 and 2 pooled, rows true (dog, cat, bird), columns predicted (dog, cat, bird):
#   true dog:  c1 dog, c5 dog, c2 cat        -> [2, 1, 0]
#   true cat:  c7 dog, c3 c6 c9 cat          -> [1, 3, 0]
#   true bird: c4 dog, c8 cat                -> [1, 1, 0]
EXPECTED_COUNTS = [[2, 1, 0], [1, 3, 0], [1, 1, 0]]
EXPECTED_NORMALIZED = [[2 / 3, 1 / 3, 0], [1 / 4, 3 / 4, 0], [1 / 2, 1 / 2, 0]]

QUARANTINE = [("broken_17.wav", "undecodable: not a RIFF file"), ("quiet_3.wav", "silent")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run, done=(1, 2)):
    run.mkdir()
    (run / "config.yaml").write_text("name: fake-run\ndataset:\n  name: toy\n")
    folds = [
        (clip, f"audio/{clip}.wav", y, CLASSES[y], k, f"g{clip}")
        for k, rows in SPLIT_ROWS.items()
        for clip, y, _ in rows
    ]
    pd.DataFrame(folds, columns=["clip", "path", "label", "class", "fold", "group"]).to_csv(
        run / "folds.csv", index=False
    )
    pd.DataFrame(QUARANTINE, columns=["clip", "reason"]).to_csv(run / "quarantine.csv", index=False)
    for k, rows in SPLIT_ROWS.items():
        d = run / "splits" / str(k)
        d.mkdir(parents=True)
        pred = pd.DataFrame(rows, columns=["clip", "label", "pred"])
        pred.insert(1, "fold", k)
        for c, name in enumerate(CLASSES):
            pred[f"prob_{name}"] = np.where(pred["pred"] == c, 0.8, 0.1)
        pred.to_csv(d / "predictions.csv", index=False)
        no_val = k == 2  # split 2 has no validation fold: empty val_acc
        pd.DataFrame(
            {
                "epoch": [1, 2, 3],
                "train_loss": [1.0, 0.7, 0.5],
                "val_acc": [np.nan] * 3 if no_val else [0.4, 0.6, 0.55],
                "lr": [1e-3, 5e-4, 1e-4],
            }
        ).to_csv(d / "history.csv", index=False)
        (d / "split.json").write_text(
            json.dumps(
                {
                    "split": k,
                    "test_fold": k,
                    "val_fold": None if no_val else k % 3 + 1,
                    "best_epoch": 3 if no_val else 2,
                    "val_acc": None if no_val else 0.6,
                    "test_acc": 0.5,
                    "n_train": 6,
                    "n_val": 3,
                    "n_test": len(rows),
                }
            )
        )
        if k in done:
            RunFolder(run).seal(k)
    return run


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "fake-run")


def test_predictions_only_from_done_splits(run):
    pred = load_predictions(run)
    assert sorted(pred["split"].unique()) == [1, 2]
    assert len(pred) == 9 and "c10" not in set(pred["clip"])
    assert class_names(pred) == CLASSES  # column order, not alphabetical
    assert missing_splits(run) == [3]


def test_fold_scores_by_hand(run):
    folds = fold_scores(load_predictions(run))
    assert folds["split"].tolist() == [1, 2] and folds["test_fold"].tolist() == [1, 2]
    assert folds["n"].tolist() == [4, 5]
    assert folds["accuracy"].tolist() == pytest.approx([2 / 4, 3 / 5])
    # split 1: F1 dog 1/2, cat 2/3, bird 0 -> 7/18; split 2: dog 2/3, cat 2/3, bird 0 -> 4/9
    assert folds["macro_f1"].tolist() == pytest.approx([7 / 18, 4 / 9])


def test_confusion_counts_and_never_predicted_class(run):
    counts = confusion_counts(load_predictions(run))
    assert list(counts.index) == CLASSES and list(counts.columns) == CLASSES
    assert counts.to_numpy().tolist() == EXPECTED_COUNTS
    assert counts["bird"].sum() == 0  # never predicted, still a column


def test_normalize_rows(run):
    normalized = normalize_rows(confusion_counts(load_predictions(run)))
    np.testing.assert_allclose(normalized.to_numpy(), EXPECTED_NORMALIZED)
    with_empty = pd.DataFrame([[3, 1, 0], [0, 0, 0], [0, 2, 2]], index=CLASSES, columns=CLASSES)
    out = normalize_rows(with_empty)
    assert not out.isna().any().any()
    np.testing.assert_allclose(out.to_numpy(), [[0.75, 0.25, 0], [0, 0, 0], [0, 0.5, 0.5]])


def test_per_class_by_hand(run):
    pc = per_class(load_predictions(run)).set_index("class")
    # dog: 2 right of 4 predicted, 3 true; cat: 3 of 5 predicted, 4 true; bird: never predicted
    assert pc.loc["dog", ["precision", "recall", "f1"]].tolist() == pytest.approx([1 / 2, 2 / 3, 4 / 7])
    assert pc.loc["cat", ["precision", "recall", "f1"]].tolist() == pytest.approx([3 / 5, 3 / 4, 2 / 3])
    assert pc.loc["bird", ["precision", "recall", "f1"]].tolist() == [0, 0, 0]
    assert pc["support"].tolist() == [3, 4, 2]


def test_summary_ci_known_values():
    # ten folds: five at 0.8, five at 0.9 -> mean 0.85, sample std sqrt(10 * 0.05**2 / 9)
    folds = pd.DataFrame({"accuracy": [0.8] * 5 + [0.9] * 5, "macro_f1": [0.7] * 10})
    s = summary(folds)
    std = math.sqrt(0.025 / 9)
    half = 2.2621571627 * std / math.sqrt(10)  # t(0.975, df=9)
    assert s["n_splits"] == 10
    assert s["acc_mean"] == pytest.approx(0.85) and s["acc_std"] == pytest.approx(std)
    assert s["acc_ci95_low"] == pytest.approx(0.85 - half) and s["acc_ci95_high"] == pytest.approx(0.85 + half)
    assert s["macro_f1_mean"] == pytest.approx(0.7) and s["macro_f1_std"] == pytest.approx(0)
    # two folds 0.5, 0.52: std 0.01*sqrt(2), t(0.975, 1) = 12.7062047 -> half = 12.7062047 * 0.01
    s2 = summary(pd.DataFrame({"accuracy": [0.5, 0.52], "macro_f1": [0.4, 0.5]}))
    assert s2["acc_ci95_high"] - s2["acc_mean"] == pytest.approx(12.7062047 * 0.01)
    # ... and where that half-width passes 0 or 1, the interval stops at the bounds of an accuracy
    s3 = summary(pd.DataFrame({"accuracy": [0.5, 0.6], "macro_f1": [0.4, 0.5]}))
    assert (s3["acc_ci95_low"], s3["acc_ci95_high"]) == (0.0, 1.0)


def test_summary_single_fold():
    s = summary(pd.DataFrame({"accuracy": [0.7], "macro_f1": [0.6]}))
    assert s["acc_std"] == 0 and s["macro_f1_std"] == 0
    assert s["acc_mean"] == pytest.approx(0.7)
    assert s["acc_ci95_low"] is None and s["acc_ci95_high"] is None  # one value bounds nothing


def test_build_report(run):
    scores = build_report(run)
    on_disk = json.loads((run / "scores.json").read_text())
    assert on_disk == scores
    assert scores["missing_splits"] == [3] and scores["n_splits"] == 2 and scores["quarantined"] == 2
    assert scores["acc_mean"] == pytest.approx(0.55)
    assert [f["accuracy"] for f in scores["per_fold"]] == pytest.approx([0.5, 0.6])
    counts = pd.read_csv(run / "confusion_counts.csv", index_col=0)
    assert counts.to_numpy().tolist() == EXPECTED_COUNTS and list(counts.columns) == CLASSES

    md = (run / "report.md").read_text()
    assert md.startswith("# fake-run")
    assert "accuracy 0.550 ± 0.071" in md and "over 2 folds" in md
    assert "split(s) 3 not finished" in md
    for clip, reason in QUARANTINE:
        assert clip in md and reason in md
    for png in ["confusion_counts.png", "confusion_normalized.png", "learning_curves.png", "fold_scores.png"]:
        assert f"]({png})" in md  # embedded by relative link
        data = (run / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000

    table = summary_table(scores)
    assert "0.500" in table and "0.600" in table and "split(s) 3 not finished" in table
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_complete_run_has_no_warning(tmp_path):
    run = write_run(tmp_path / "full", done=(1, 2, 3))
    scores = build_report(run)
    assert scores["missing_splits"] == [] and scores["n_splits"] == 3
    # split 3 adds c10, c11 (bird -> bird) and c12 (dog -> bird): bird is now predicted
    assert pd.read_csv(run / "confusion_counts.csv", index_col=0)["bird"].tolist() == [1, 0, 2]
    assert "not finished" not in (run / "report.md").read_text()


def test_no_done_split_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished splits"):
        load_predictions(write_run(tmp_path / "empty", done=()))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, None)  # fails while writing
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_confusion_png_many_classes(tmp_path):
    names = [f"class_{i:02d}" for i in range(50)]
    counts = np.diag(np.full(50, 40))  # sparse, as real matrices are: zeros are left blank
    counts[np.arange(50), (np.arange(50) * 7 + 3) % 50] += 5
    plot_confusion(normalize_rows(pd.DataFrame(counts, index=names, columns=names)), tmp_path / "big.png", "50 classes")
    data = (tmp_path / "big.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 2000 and height > 2000  # figure grows with the class count


def test_clip_tested_twice_is_an_error(tmp_path):
    run = write_run(tmp_path / "dup")
    path = run / "splits" / "2" / "predictions.csv"
    pred = pd.read_csv(path)
    pred.loc[0, "clip"] = "c1"  # c1 is already in split 1's test set
    pred.to_csv(path, index=False)
    with pytest.raises(ValueError, match="split 2 cannot be scored: predictions.csv changed"):
        load_predictions(run)  # the DONE digest catches the edit
    RunFolder(run).seal(2)  # sealed anyway (a buggy writer): the check against folds.csv catches it
    with pytest.raises(
        ValueError, match="split 2 cannot be scored: predictions.csv holds 5 clips, not the 5 of test fold 2"
    ):
        load_predictions(run)


def test_an_edited_plan_or_an_extra_split_never_counts(tmp_path):
    """plan.json's protocol, leakage and splits are vouched for by every DONE; a split folder that
    is not in the plan is refused, not scored."""
    run = write_run(tmp_path / "p")
    atomic_write_text(
        run / "plan.json",
        json.dumps({"protocol": "X", "leaky": True, "splits": [{"split": 1}, {"split": 2}, {"split": 3}]}),
    )
    with pytest.raises(ValueError, match="split 1 cannot be scored: it was made with other settings"):
        build_report(run)
    run = write_run(tmp_path / "q")
    import shutil

    shutil.copytree(run / "splits" / "1", run / "splits" / "11")
    with pytest.raises(ValueError, match=r"11 is not a split of the fold plan"):
        build_report(run)


@pytest.mark.parametrize("edit", ["truncate", "relabel", "drop_done_digest"])
def test_tampered_split_never_counts(tmp_path, edit):
    """A finished split whose files were changed afterwards is named, never scored."""
    run = write_run(tmp_path / "t")
    scores = build_report(run)
    path = run / "splits" / "2" / "predictions.csv"
    pred = pd.read_csv(path)
    if edit == "truncate":  # the case: cut to 3 rows, the mean moved 0.572 -> 0.617
        pred.head(3).to_csv(path, index=False)
    elif edit == "relabel":
        pred.assign(label=pred["pred"]).to_csv(path, index=False)
    else:
        (run / "splits" / "2" / "DONE").write_text("2026-01-01T00:00:00\n")  # an old-style marker
    with pytest.raises(ValueError, match="split 2 cannot be scored"):
        build_report(run)
    RunFolder(run).seal(2)  # even re-sealed, predictions must be exactly fold 2's clips and labels
    if edit != "drop_done_digest":
        with pytest.raises(ValueError, match="split 2 cannot be scored: predictions.csv"):
            build_report(run)
    else:
        assert build_report(run)["acc_mean"] == scores["acc_mean"]
