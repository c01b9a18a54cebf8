"""Invariants of a fold plan, checked before any training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import ProtocolError, Split


def check_plan(
    table: pd.DataFrame,
    folds: np.ndarray,
    splits: list[Split],
    classes: list[str],
    groups_must_not_cross: bool = False,
    every_clip_tested: bool = True,
) -> list[str]:
    """Raise `ProtocolError` for a plan that cannot give an honest score; return warnings.

    Checked: every clip tested exactly once (with `every_clip_tested=False`, a one-split plan:
    every clip in exactly one of train, validation, test); train, validation and test disjoint in every split;
    every class present in every training set; no group (source recording, speaker, artist) in two
    folds (an error when the protocol promises it, otherwise a warning listing the groups).
    """
    n = len(table)
    if not every_clip_tested:
        if len(splits) != 1:
            raise ProtocolError(f"a fixed-list plan has one split, not {len(splits)}")
        used = np.concatenate([splits[0].train, splits[0].val, splits[0].test])
        if len(used) != n or len(np.unique(used)) != n:
            raise ProtocolError(
                f"the split uses {len(np.unique(used))} distinct clips of {n} "
                f"({len(used)} rows): every clip must be in exactly one part"
            )
    tested = np.concatenate([s.test for s in splits]) if splits else np.array([], dtype=int)
    if every_clip_tested and (len(tested) != n or len(np.unique(tested)) != n):
        raise ProtocolError(
            f"the plan tests {len(np.unique(tested))} distinct clips of {n} "
            f"({len(tested)} test rows): every clip must be tested exactly once"
        )
    labels = table["label"].to_numpy()
    for s in splits:
        parts = {"train": s.train, "val": s.val, "test": s.test}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if np.intersect1d(parts[a], parts[b]).size:
                raise ProtocolError(f"split {s.index}: {a} and {b} share clips")
        absent = sorted(set(range(len(classes))) - set(labels[s.train].tolist()))
        if absent:
            raise ProtocolError(
                f"split {s.index} (test fold {s.test_fold}): class(es) "
                f"{', '.join(classes[c] for c in absent)} absent from the training set"
            )
    return check_groups(table, folds, error=groups_must_not_cross)


def check_groups(table: pd.DataFrame, folds: np.ndarray, error: bool = False) -> list[str]:
    if "group" not in table.columns or table["group"].isna().all():
        return []
    per_group = pd.Series(folds, index=table.index).groupby(table["group"]).nunique()
    crossing = per_group[per_group > 1]
    if crossing.empty:
        return []
    msg = (
        f"{len(crossing)} group(s) appear in more than one fold (clips of one source in train "
        f"and test leak): " + ", ".join(map(str, crossing.index[:10])) + (" ..." if len(crossing) > 10 else "")
    )
    if error:
        raise ProtocolError(msg)
    return [msg]
