"""Folds made from the labels: `stratified` (the honest default where a dataset has no folds of its
own) and `random` (the leaky baseline that measures what ignoring groups is worth).

Both are scikit-learn's splitters, seeded: `StratifiedKFold`, or `StratifiedGroupKFold` when the
manifest has groups (a speaker, an artist, a source recording), so that no group is in two folds.
Fold k is the k-th test set the splitter yields; the same seed gives the same fold ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .base import Protocol, ProtocolError, register_protocol


def has_groups(table: pd.DataFrame) -> bool:
    return "group" in table.columns and bool(table["group"].notna().any())


def check_class_sizes(table: pd.DataFrame, n_folds: int) -> None:
    """Every class needs a clip in every fold; name the classes that have fewer clips than folds."""
    counts = table.groupby("class", sort=True).size()
    small = counts[counts < n_folds]
    if len(small):
        raise ProtocolError(
            "class(es) with fewer clips than the "
            f"{n_folds} folds: "
            + ", ".join(f"{c} ({n} clip{'s' if n != 1 else ''})" for c, n in small.items())
            + "; add clips, merge or drop the class, or use fewer folds (--folds)"
        )


def _fold_ids(splitter, table: pd.DataFrame, groups=None) -> np.ndarray:
    labels = table["label"].to_numpy()
    folds = np.zeros(len(table), dtype=int)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups), start=1):
        folds[test] = k
    return folds


class _Seeded(Protocol):
    reshufflable = True  # a seed: repeated CV draws another fold assignment per repeat

    def __init__(self, n_folds: int = 10, seed: int = 0):
        if n_folds < 2:
            raise ProtocolError(f"n_folds must be at least 2, got {n_folds}")
        self.n_folds = n_folds
        self.seed = seed

    def _stratified(self, table: pd.DataFrame) -> np.ndarray:
        """Seeded StratifiedKFold fold ids, groups ignored."""
        return _fold_ids(StratifiedKFold(self.n_folds, shuffle=True, random_state=self.seed), table)


@register_protocol("stratified")
class StratifiedFolds(_Seeded):
    """Stratified k folds, seeded; group-aware (no group in two folds) when the clips have groups."""

    def assign(self, table: pd.DataFrame) -> np.ndarray:
        """Fold ids; sets `group_disjoint` (True when the clips' groups were used)."""
        check_class_sizes(table, self.n_folds)
        if not has_groups(table):
            self.group_disjoint = False
            return self._stratified(table)
        groups = table["group"]
        if groups.isna().any():
            clips = table.loc[groups.isna(), "clip"].head(5).tolist()
            raise ProtocolError(
                f"{int(groups.isna().sum())} clip(s) have no group, e.g. "
                f"{', '.join(clips)}: give every clip a group or none"
            )
        n_groups = groups.nunique()
        if n_groups < self.n_folds:
            raise ProtocolError(
                f"{n_groups} group(s) cannot fill {self.n_folds} folds: every clip of "
                f"a group goes to one fold; use fewer folds (--folds)"
            )
        self.group_disjoint = True
        splitter = StratifiedGroupKFold(self.n_folds, shuffle=True, random_state=self.seed)
        return _fold_ids(splitter, table, groups.astype(str).to_numpy())


@register_protocol("random")
class RandomFolds(_Seeded):
    """LEAKY, to measure leakage only: stratified shuffled folds that ignore the dataset's folds and
    groups, so clips of one source recording land in training and test."""

    leaky = True
    leak_reason = (
        "folds are drawn at random, ignoring the dataset's own folds and groups: clips "
        "of one source recording (speaker, artist) sit in training and test"
    )

    def assign(self, table: pd.DataFrame) -> np.ndarray:
        check_class_sizes(table, self.n_folds)
        return self._stratified(table)
