"""Scores from saved predictions: per-split accuracy and macro F1, their mean/std/CI, per-class scores.

Everything here reads `<run>/splits/<k>/predictions.csv` of the finished splits (those with DONE)
and nothing else: reports never depend on the model or the training code. Repeated CV: every
split carries its repeat (split.json), scores are per split, pooled over all splits, and per repeat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from bench.core.runfolder import RunFolder, RunFolderError
from reports.files import read_split_json, split_file
from reports.stats import t_interval

PROB_PREFIX = "prob_"
REQUIRED_COLUMNS = ["clip", "fold", "label", "pred"]


def class_names(pred_df: pd.DataFrame) -> list[str]:
    """Class names in class-id order, recovered from the `prob_<class>` columns."""
    return [c[len(PROB_PREFIX) :] for c in pred_df.columns if c.startswith(PROB_PREFIX)]


def _read_split(run_dir, k: int) -> pd.DataFrame:
    path = split_file(run_dir, k, "predictions.csv")
    if not path.exists():
        raise FileNotFoundError(f"split {k} is marked DONE but has no {path}")
    df = pd.read_csv(path, dtype={"clip": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing or not class_names(df):
        raise ValueError(f"{path}: missing columns {missing or ['prob_<class>...']}")
    df.insert(0, "split", k)
    df.insert(1, "repeat", int(read_split_json(run_dir, k).get("repeat", 1)))  # DONE vouches for it
    return df


def _check(pred: pd.DataFrame) -> None:
    """Labels and predictions are class ids in range; every clip is tested once (once per repeat)."""
    n_classes = len(class_names(pred))
    for col in ("label", "pred"):
        values = pred[col]
        if values.isna().any() or not values.between(0, n_classes - 1).all():
            raise RunFolderError(f"predictions: column {col!r} has values outside class ids 0..{n_classes - 1}")
        if not np.all(values == values.round()):
            raise RunFolderError(f"predictions: column {col!r} holds non-integer class ids")
    keys = ["repeat", "clip"] if "repeat" in pred.columns else ["clip"]
    dup = pred.loc[pred.duplicated(keys, keep=False), ["split", "clip"]]
    if len(dup):
        pairs = ", ".join(f"{c} (split {k})" for k, c in zip(dup["split"].head(6), dup["clip"].head(6)))
        once = " in one repeat" if "repeat" in pred.columns and pred["repeat"].nunique() > 1 else ""
        raise RunFolderError(f"clips tested more than once{once}: {pairs}; the run's splits overlap")


def load_predictions(run_dir) -> pd.DataFrame:
    """All finished splits' predictions concatenated, with leading `split` and `repeat` columns."""
    splits = RunFolder(run_dir).verified()  # each DONE split checked against its digest and folds.csv
    if not splits:
        raise FileNotFoundError(f"{run_dir}: no finished splits (no splits/<k>/DONE)")
    frames = [_read_split(run_dir, k) for k in splits]
    names = class_names(frames[0])
    for k, df in zip(splits, frames):
        if class_names(df) != names:
            raise ValueError(f"split {k}: prob columns {class_names(df)} differ from split {splits[0]}: {names}")
    pred = pd.concat(frames, ignore_index=True)
    _check(pred)
    pred["label"] = pred["label"].astype(int)
    pred["pred"] = pred["pred"].astype(int)
    return pred


FOLD_COLUMNS = ["split", "repeat", "test_fold", "n", "accuracy", "macro_f1"]


def fold_scores(pred_df: pd.DataFrame) -> pd.DataFrame:
    """One row per split: split, repeat, test_fold, n, accuracy, macro_f1 (keyed by split: with
    repeats, one test fold number is tested once per repeat; `repeat` is 1 without a column).

    Macro F1 averages over the classes present in that split's labels or predictions (sklearn's
    default), so a class absent from a test fold and never predicted there does not count as 0.
    """
    rows = []
    for k, df in pred_df.groupby("split", sort=True):
        folds = df["fold"].unique()
        if len(folds) != 1:
            raise ValueError(f"split {k}: predictions span test folds {sorted(folds)}")
        rows.append(
            {
                "split": int(k),
                "repeat": int(df["repeat"].iloc[0]) if "repeat" in df.columns else 1,
                "test_fold": int(folds[0]),
                "n": len(df),
                "accuracy": float((df["label"] == df["pred"]).mean()),
                "macro_f1": float(f1_score(df["label"], df["pred"], average="macro", zero_division=0)),
            }
        )
    return pd.DataFrame(rows, columns=FOLD_COLUMNS)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def summary(fold_df: pd.DataFrame) -> dict:
    """Mean, sample std (ddof=1) and 95 % t-interval of accuracy over splits; macro F1 mean/std.
    One split: std 0 and no interval (`acc_ci95_low`/`_high` None: `interval_text` says so)."""
    n = len(fold_df)
    if n == 0:
        raise ValueError("summary of zero splits")
    acc = fold_df["accuracy"].to_numpy(dtype=float)
    acc_mean, acc_std = _mean_std(acc)
    f1_mean, f1_std = _mean_std(fold_df["macro_f1"].to_numpy(dtype=float))
    low, high = t_interval(acc) if n > 1 else (None, None)  # one value has no spread to bound
    if low is not None:  # an accuracy lies in [0, 1]: the t-interval of few splits can overshoot
        low, high = max(0.0, low), min(1.0, high)
    return {
        "acc_mean": acc_mean,
        "acc_std": acc_std,
        "acc_ci95_low": low,
        "acc_ci95_high": high,
        "macro_f1_mean": f1_mean,
        "macro_f1_std": f1_std,
        "n_splits": n,
    }


def interval_text(low, high) -> str:
    """`0.512–0.634`, or what stands in for an interval of one split (summary's None)."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):  # None, or NaN in a table
        return "one split: no interval"
    return f"{low:.3f}–{high:.3f}"


def repeat_scores(fold_df: pd.DataFrame) -> pd.DataFrame:
    """One row per repeat: repeat, splits, acc_mean, acc_std, macro_f1_mean (over its splits)."""
    rows = []
    for r, df in fold_df.groupby("repeat", sort=True):
        acc_mean, acc_std = _mean_std(df["accuracy"].to_numpy(dtype=float))
        rows.append(
            {
                "repeat": int(r),
                "splits": len(df),
                "acc_mean": acc_mean,
                "acc_std": acc_std,
                "macro_f1_mean": float(df["macro_f1"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=["repeat", "splits", "acc_mean", "acc_std", "macro_f1_mean"])


def repeat_summary(fold_df: pd.DataFrame) -> dict:
    """Per-repeat mean accuracies and the sample std of those means (how much the estimate moves
    from one fold assignment, or training seed, to the next); the pooled figures are `summary`'s."""
    rep = repeat_scores(fold_df)
    means = rep["acc_mean"].to_numpy(dtype=float)
    return {
        "repeats_scored": len(rep),
        "acc_repeat_means": [float(m) for m in means],
        "acc_repeat_std": _mean_std(means)[1],
    }


def per_class(pred_df: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support per class over all test predictions pooled.

    Every class gets a row; one never predicted has precision 0, one with no support has 0s.
    """
    names = class_names(pred_df)
    p, r, f, s = precision_recall_fscore_support(
        pred_df["label"], pred_df["pred"], labels=list(range(len(names))), zero_division=0
    )
    return pd.DataFrame(
        {
            "label": range(len(names)),
            "class": names,
            "precision": p,
            "recall": r,
            "f1": f,
            "support": s.astype(int),
        }
    )
