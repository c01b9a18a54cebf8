"""The protocol base class, the shared split scheme and the registry: a leaf module (numpy and
scikit-learn only), so protocol modules import it without cycles.

A protocol turns a manifest into one fold id per clip (`assign`); its splits derive from that
column. The shared scheme: split k tests fold k, validates on the next fold (k+1 mod n, in fold
order) and trains on the rest; with `val="none"` it trains on every other fold. A protocol with
fixed lists (`holdout.py`) overrides `splits` (one split) and may give fold id 0 to clips it
leaves out. What a protocol promises is said by class attributes with defaults here, as in
scikit-learn's splitters the parameters of `__init__` are kept under their own names, and `repr`
shows them. A `reshufflable` protocol takes a `seed`: repeated CV draws repeat r with seed + r - 1.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import PredefinedSplit
from bench.core.errors import FoldbenchError

PROTOCOLS: dict[str, type[Protocol]] = {}


class ProtocolError(FoldbenchError, ValueError):
    """A fold plan that would make the evaluation wrong; the message says which clips or classes."""


@dataclass(frozen=True)
class Split:
    index: int  # 1-based split number
    test_fold: int
    val_fold: int | None
    train: np.ndarray  # row positions in the manifest
    val: np.ndarray
    test: np.ndarray
    repeat: int = 1  # repeated CV: which repeat (1..R); split numbers run on across repeats


def make_splits(folds: np.ndarray, val: str = "next") -> list[Split]:
    """One split per fold, through scikit-learn's PredefinedSplit (test fold = fold id)."""
    if val not in ("next", "none"):
        raise ProtocolError(f"val must be 'next' or 'none', not {val!r}")
    folds = np.asarray(folds)
    order = sorted(np.unique(folds).tolist())
    if len(order) < (3 if val == "next" else 2):
        raise ProtocolError(
            f"{len(order)} fold(s) is too few for test{' + validation' if val == 'next' else ''} + training"
        )
    splits = []
    for i, (rest, test) in enumerate(PredefinedSplit(test_fold=folds).split(), start=1):
        test_fold = int(folds[test[0]])
        val_fold = order[(order.index(test_fold) + 1) % len(order)] if val == "next" else None
        is_val = folds[rest] == val_fold
        splits.append(Split(i, test_fold, val_fold, train=rest[~is_val], val=rest[is_val], test=test))
    return splits


class Protocol:
    """Base of every protocol: `assign(table)` gives fold ids 1..n (0: left out); `splits`."""

    name: str = ""  # the registry name, set by @register_protocol
    leaky: bool = False  # True: the score measures leakage, not the model
    leak_reason: str | None = None  # why, for the report
    cross_validated: bool = True  # False: one split, each clip in exactly one part
    group_disjoint: bool = False  # True: no group (speaker, source) in two folds
    reshufflable: bool = False  # True: another seed gives another fold assignment (repeated CV
    #   reseeds it per repeat); False: the folds are fixed (predefined, fixed lists)

    def assign(self, table: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def splits(self, folds: np.ndarray, val: str = "next") -> list[Split]:
        """The splits over `folds` (the ids `assign` gave): by default one per fold."""
        return make_splits(folds, val)

    @classmethod
    def params(cls) -> list[str]:
        """The names of `__init__`'s parameters: the protocol's config."""
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{p}={getattr(self, p)!r}' for p in self.params())})"


def register_protocol(name: str):
    def add(cls: type[Protocol]) -> type[Protocol]:
        if not issubclass(cls, Protocol):
            raise TypeError(f"protocol {name!r}: {cls.__name__} must subclass protocols.Protocol")
        cls.name = name
        PROTOCOLS[name] = cls
        return cls

    return add


def list_protocols() -> list[str]:
    return sorted(PROTOCOLS)


def create_protocol(name: str, **kw) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(list_protocols())}")
    cls = PROTOCOLS[name]
    unknown = sorted(set(kw) - set(cls.params()))
    if unknown:
        raise ProtocolError(
            f"protocol {name} takes no option {', '.join(unknown)}; its options: {', '.join(cls.params()) or 'none'}"
        )
    return cls(**kw)
