"""From manifest to fold plan: the protocol and its options, fold ids, splits, and the cheap checks.

`make_plan` is what `kfold` runs before training and what `datasets check` runs after decoding:
the protocol assigns fold ids (refusing classes smaller than the folds, groups it cannot honour),
the splits follow, `check_plan` checks the invariants, and clips whose audio is identical are
found from a hash per clip (`kfold` hashes the cached waveforms; `datasets check` the decoded
files). The same audio under two classes is an error to `kfold`; copies in two folds are leakage,
an error to both (`kfold --allow-leaky` records the run as leaky instead).

Repeated CV (`protocol.repeats` R): a reshufflable protocol assigns folds R times, repeat r with
seed + r - 1 (repeat 1 is the plan of R=1); fixed folds are the same in every repeat, whose splits
then differ in their training seed only. Split numbers run on: repeat r, fold k is split
(r-1)*n + k. Every repeat's plan is checked, and so are its copies across folds.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from protocols import PROTOCOLS, Protocol, ProtocolError, Split, create_protocol, plan_splits
from protocols.checks import check_plan

from bench.core.config import RunConfig
from bench.data.datasets import DATASETS, Dataset
from bench.core.runfolder import fold_column


def protocol_name(cfg: RunConfig, dataset: Dataset | None = None) -> str:
    if cfg.protocol.name:
        return cfg.protocol.name
    return dataset.protocol if dataset is not None else DATASETS[cfg.dataset.name].protocol


def protocol_options(cfg: RunConfig, name: str | None = None) -> dict:
    """The config's protocol settings as keyword arguments of protocol `name`: `n_folds` (--folds,
    else the dataset kind's default: 10, folder 5) and `seed`, for the protocols that take them."""
    name = name or protocol_name(cfg)
    if name not in PROTOCOLS:
        return {}  # create_protocol names the known ones
    accepted = inspect.signature(PROTOCOLS[name]).parameters
    opts = {}
    if "n_folds" in accepted:
        kind = DATASETS.get(cfg.dataset.name)
        opts["n_folds"] = cfg.protocol.folds or (kind.folds if kind else 10)
    elif cfg.protocol.folds is not None:
        raise ProtocolError(
            f"--folds {cfg.protocol.folds}: protocol {name} has fixed lists (one split), not a number of folds"
        )
    if "seed" in accepted:
        opts["seed"] = cfg.protocol.seed
    return opts


@dataclass
class Plan:
    protocol: Protocol
    table: pd.DataFrame  # the clips in the plan: usable and used by the protocol, index 0..n-1
    rows: np.ndarray  # their row numbers in the manifest
    repeat_folds: list[np.ndarray]  # fold id per clip of `table`, one array per repeat
    splits: list[Split]  # every repeat's, numbered on: repeat r, fold k is split (r-1)*n + k
    left_out: list[str]  # usable clips the protocol does not use (fixed lists)
    # set, clip, class, fold (repeat 1), fold_2 .. fold_R: clips whose audio is identical to another's
    duplicates: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    @property
    def folds(self) -> np.ndarray:
        """Repeat 1's fold ids (the whole plan when there are no repeats)."""
        return self.repeat_folds[0]

    @property
    def repeats(self) -> int:
        return len(self.repeat_folds)

    @property
    def repeats_vary(self) -> str:
        """What differs between repeats: "folds" (a reseeded assignment) or "seed" (training only)."""
        return "folds" if self.protocol.reshufflable else "seed"

    @property
    def copies_leak(self) -> bool:
        """Identical audio in two folds (kfold accepts such a plan only with --allow-leaky)."""
        return copies_across_folds(self.duplicates) is not None

    @property
    def leaky(self) -> bool:
        return self.protocol.leaky or self.copies_leak

    @property
    def leak_reason(self) -> str | None:
        if self.copies_leak:
            return "--allow-leaky: identical audio sits in more than one fold (a copy trains, a copy tests)"
        return self.protocol.leak_reason

    def summary(self) -> dict:
        """What `plan.json` in the run folder records."""
        return {
            "protocol": repr(self.protocol),
            "protocol_name": self.protocol.name,
            "leaky": self.leaky,
            "leak_reason": self.leak_reason,
            "group_disjoint": self.protocol.group_disjoint,
            "n_clips": len(self.table),
            "left_out": len(self.left_out),
            "repeats": self.repeats,
            "repeats_vary": self.repeats_vary,
            "splits": [
                {
                    "split": s.index,
                    "repeat": s.repeat,
                    "test_fold": s.test_fold,
                    "val_fold": s.val_fold,
                    "n_train": len(s.train),
                    "n_val": len(s.val),
                    "n_test": len(s.test),
                }
                for s in self.splits
            ],
            "warnings": self.warnings,
        }


def make_plan(cfg: RunConfig, dataset: Dataset, ok: np.ndarray, hashes=None) -> Plan:
    """The fold plan over the usable clips (`ok`: manifest mask); `hashes`: one per manifest row
    (None for unusable rows) to find identical audio, or None to skip that check."""
    rows = np.flatnonzero(ok)
    table = dataset.table.iloc[rows].reset_index(drop=True)
    name = protocol_name(cfg, dataset)
    opts = protocol_options(cfg, name)
    protocol = create_protocol(name, **opts)
    assigned = [np.asarray(protocol.assign(table), dtype=int)]
    for r in range(2, cfg.protocol.repeats + 1):
        if not protocol.reshufflable:  # fixed folds: every repeat keeps them
            assigned.append(assigned[0].copy())
            continue
        if "seed" not in opts:
            raise ProtocolError(f"protocol {name} is reshufflable but takes no seed")
        again = np.asarray(create_protocol(name, **{**opts, "seed": opts["seed"] + r - 1}).assign(table), dtype=int)
        if not np.array_equal(again > 0, assigned[0] > 0):
            raise ProtocolError(f"protocol {name}: repeat {r} leaves out other clips than repeat 1")
        assigned.append(again)
    used = assigned[0] > 0
    left_out = table.loc[~used, "clip"].tolist()
    rows, table = rows[used], table[used].reset_index(drop=True)
    repeat_folds = [f[used] for f in assigned]
    splits, warnings = [], []
    for r, folds in enumerate(repeat_folds, start=1):
        own = plan_splits(protocol, folds, cfg.protocol.val)
        own = [dataclasses.replace(s, index=(r - 1) * len(own) + s.index, repeat=r) for s in own]
        found = check_plan(
            table,
            folds,
            own,
            dataset.classes,
            groups_must_not_cross=protocol.group_disjoint,
            every_clip_tested=protocol.cross_validated,
        )
        warnings += [w if r == 1 else f"repeat {r}: {w}" for w in found if r == 1 or protocol.reshufflable]
        splits += own
    if left_out:
        warnings.insert(
            0,
            f"protocol {name} leaves out {len(left_out)} clip(s) that are in none of "
            f"its lists, e.g. {', '.join(left_out[:5])}",
        )
    dups = duplicate_sets(table, repeat_folds, None if hashes is None else np.asarray(hashes, dtype=object)[rows])
    across = copies_across_folds(dups)
    if across:
        warnings.append(across)
    return Plan(protocol, table, rows, repeat_folds, splits, left_out, dups, warnings)


# ---- identical audio ----


def duplicate_sets(table: pd.DataFrame, folds, hashes) -> pd.DataFrame:
    """set, clip, class, fold for every clip whose hash another clip shares; sets numbered 1..
    `folds`: one array of fold ids, a list of them (one per repeat: columns fold, fold_2, ...), or
    None."""
    if folds is None or isinstance(folds, np.ndarray):
        folds = [folds]
    fold_cols = {fold_column(r): f if f is not None else np.nan for r, f in enumerate(folds, start=1)}
    columns = ["set", "clip", "class", *fold_cols]
    if hashes is None:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(
        {"hash": hashes, "clip": table["clip"].to_numpy(), "class": table["class"].to_numpy(), **fold_cols}
    )
    df = df[df["hash"].notna() & df["hash"].duplicated(keep=False)]
    df["set"] = df.groupby("hash", sort=False).ngroup() + 1
    return df.sort_values(["set", "clip"])[columns].reset_index(drop=True)


def _describe(group: pd.DataFrame, fold: str | None) -> str:
    folds = group[fold] if fold else [np.nan] * len(group)
    return " = ".join(
        f"{c} ({cls}{f', fold {int(f)}' if pd.notna(f) else ''})"
        for c, cls, f in zip(group["clip"], group["class"], folds)
    )


def label_conflicts(dups: pd.DataFrame) -> str | None:
    """A message for identical audio under two or more classes, or None."""
    sets = [g for _, g in dups.groupby("set") if g["class"].nunique() > 1]
    if not sets:
        return None
    return (
        f"{len(sets)} set(s) of identical audio carry different labels: "
        + "; ".join(_describe(g, None) for g in sets[:5])
        + (" ..." if len(sets) > 5 else "")
    )


def copies_across_folds(dups: pd.DataFrame) -> str | None:
    """A message for identical audio in two or more folds (one copy trains, one tests) in any
    repeat (the first repeat where it happens is named), or None."""
    repeat = 0
    while fold_column(repeat + 1) in dups.columns:
        repeat += 1
        col = fold_column(repeat)
        sets = [g for _, g in dups.groupby("set") if g[col].nunique() > 1]
        if sets:
            where = "" if repeat == 1 else f" in repeat {repeat}"
            return (
                f"{len(sets)} set(s) of identical audio sit in more than one fold{where} (a copy in "
                f"training and a copy in test leak): "
                + "; ".join(_describe(g, col) for g in sets[:5])
                + (" ..." if len(sets) > 5 else "")
            )
    return None
