"""Whether a finished split counts: its DONE digest, its files, the settings and its predictions.

`RunFolder.problem(k)` asks `split_problem`; what it checks is described in bench/core/runfolder.py
with the layout. Nothing here writes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.records import SEAL, SPLIT_FILES, fold_column, read_json, sha


def split_problem(folder, index: int, score_test: bool = True, settings: str | None = None) -> str | None:
    """Why split `index` of `folder` (a RunFolder) does not count (None: it does): no DONE, a digest
    that does not match its files or the saved settings, or predictions that are not the test fold's
    clips. `settings`: `folder.settings_digest()` when the caller checks several splits at once."""
    where = folder.split_dir(index)
    done = read_json(where / "DONE")
    if not (where / "DONE").is_file():
        return "not finished"
    if not done.get("files"):
        return "its DONE marker holds no digest (written by an older foldbench, or damaged)"
    if done.get("split") != index:
        return f"its DONE marker is split {done.get('split')}'s"
    for name in SPLIT_FILES:
        path = where / name
        if (name in done["files"]) != path.is_file():
            return f"{name} is {'missing' if name in done['files'] else 'not in its DONE digest'}"
        if path.is_file() and sha(path) != done["files"][name]:
            return f"{name} changed after the split finished (its digest differs)"
    seal = done.get("seal")
    if seal not in (None, SEAL):
        return f"its DONE marker has seal {seal!r}, which this foldbench does not know"
    expected = settings if settings is not None and seal == SEAL else folder.settings_digest(seal)
    if done.get("settings") != expected:
        return "it was made with other settings or another fold plan"
    if score_test:
        if "predictions.csv" not in done["files"]:
            return "it has no test predictions"
        return predictions_problem(folder, index)
    return None


def predictions_problem(folder, index: int) -> str | None:
    """Why split `index`'s predictions.csv is not exactly its test fold's clips, each once, with
    their labels and the most probable class as `pred` (None: it is)."""
    info = folder.read_split_info(index)
    pred = pd.read_csv(folder.split_dir(index) / "predictions.csv", dtype={"clip": str})
    plan = pd.read_csv(folder.path / "folds.csv", dtype={"clip": str})
    repeat = info.get("repeat", 1)
    column = fold_column(repeat) if isinstance(repeat, int) else None
    if column not in plan.columns:
        return f"its repeat {repeat!r} has no fold column in folds.csv"
    test = plan[plan[column] == info.get("test_fold")]
    if not {"clip", "label", "pred", "fold"} <= set(pred.columns):
        return "predictions.csv lacks the clip, fold, label or pred column"
    if pred["clip"].duplicated().any():
        return "predictions.csv lists a clip twice"
    if sorted(pred["clip"]) != sorted(test["clip"]):
        where = "" if repeat == 1 else f" of repeat {repeat}"
        return (
            f"predictions.csv holds {len(pred)} clips, not the {len(test)} of test fold "
            f"{info.get('test_fold')}{where} in folds.csv"
        )
    labels = dict(zip(test["clip"], test["label"]))
    if any(labels[c] != lab for c, lab in zip(pred["clip"], pred["label"])):
        return "predictions.csv gives clips other labels than folds.csv"
    probs = pred[[c for c in pred.columns if c.startswith("prob_")]]
    if probs.empty or not probs.notna().all().all():
        return "predictions.csv has missing class probabilities"
    return _pred_problem(pred["pred"], probs.to_numpy(dtype=float))


def _pred_problem(pred: pd.Series, probs: np.ndarray) -> str | None:
    """Why the predicted classes are not those of the saved probabilities (None: they are): each
    `pred` a class id whose probability is the row's highest (a tie may go either way)."""
    ids = pd.to_numeric(pred, errors="coerce").to_numpy(dtype=float)
    if np.isnan(ids).any() or (ids != np.round(ids)).any() or not ((ids >= 0) & (ids < probs.shape[1])).all():
        return f"predictions.csv's pred column holds values that are not class ids 0..{probs.shape[1] - 1}"
    chosen = probs[np.arange(len(ids)), ids.astype(int)]
    wrong = np.flatnonzero(chosen < probs.max(axis=1))
    if len(wrong):
        return (
            f"predictions.csv's pred is not the most probable class in {len(wrong)} row(s) (first: row {wrong[0] + 1})"
        )
    return None
