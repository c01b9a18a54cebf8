"""Protocols turn a manifest into one fold id per clip; splits derive from that column.

Registry: `PROTOCOLS` (a dict filled by `@register_protocol`), `create_protocol(name, **kw)`,
`list_protocols()`. Every protocol has `assign(table) -> np.ndarray` of fold ids (1..n). The split
scheme is shared: split k tests fold k, validates on the next fold (k+1 mod n, in fold order) and
trains on the rest; with `val="none"` it trains on every other fold.

A protocol with fixed train/validation/test lists (`holdout.py`) instead provides its own
`splits(folds, val)` (one split) and may give fold id 0 to clips it leaves out; `plan_splits` picks.
Optional class attributes: `leaky` (True: the score measures leakage, not the model),
`leak_reason`, `cross_validated` (False: one split), `group_disjoint` (True: groups never cross).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import PredefinedSplit

PROTOCOLS: dict[str, type] = {}


class ProtocolError(ValueError):
    """A fold plan that would make the evaluation wrong; the message says which clips or classes."""


def register_protocol(name: str):
    def add(cls):
        cls.name = name
        PROTOCOLS[name] = cls
        return cls
    return add


def list_protocols() -> list[str]:
    return sorted(PROTOCOLS)


def create_protocol(name: str, **kw):
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(list_protocols())}")
    return PROTOCOLS[name](**kw)


@dataclass(frozen=True)
class Split:
    index: int  # 1-based split number
    test_fold: int
    val_fold: int | None
    train: np.ndarray  # row positions in the manifest
    val: np.ndarray
    test: np.ndarray


def make_splits(folds: np.ndarray, val: str = "next") -> list[Split]:
    """One split per fold, through scikit-learn's PredefinedSplit (test fold = fold id)."""
    if val not in ("next", "none"):
        raise ProtocolError(f"val must be 'next' or 'none', not {val!r}")
    folds = np.asarray(folds)
    order = sorted(np.unique(folds).tolist())
    if len(order) < (3 if val == "next" else 2):
        raise ProtocolError(f"{len(order)} fold(s) is too few for test{' + validation' if val == 'next' else ''} + training")
    splits = []
    for i, (rest, test) in enumerate(PredefinedSplit(test_fold=folds).split(), start=1):
        test_fold = int(folds[test[0]])
        val_fold = order[(order.index(test_fold) + 1) % len(order)] if val == "next" else None
        is_val = folds[rest] == val_fold
        splits.append(Split(i, test_fold, val_fold, train=rest[~is_val], val=rest[is_val], test=test))
    return splits


def plan_splits(protocol, folds: np.ndarray, val: str = "next") -> list[Split]:
    """The protocol's own splits when it has them (fixed lists), else one split per fold."""
    own = getattr(protocol, "splits", None)
    return own(folds, val) if own is not None else make_splits(folds, val)


from . import holdout, predefined, stratified  # noqa: E402,F401  (registers the protocols)
