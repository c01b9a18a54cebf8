"""The manifest type and the dataset registry: a leaf module (it imports nothing of bench but the
config), so loaders, groups and the rest import it without cycles.

A manifest is a `Dataset`: a table with one row per clip (`clip` id relative to the root, absolute
`path`, int `label`, `class` name, `fold` when the dataset defines folds, `group` when a source
recording, speaker or artist is known), the class names, and the protocol the dataset uses unless
told otherwise.

A loader is registered with `@register_dataset(name, ...)` and called as
`load(cfg, cache_dir, problems)`. It appends each structural problem it finds (an empty class
folder, a link that leaves the root, a metadata row that contradicts another) to `problems`, one
line naming the file or CSV row, the reason and the fix, skips the entry concerned and goes on, so
that one pass finds them all. A problem that leaves nothing to load (no root, no metadata file, a
missing column) is raised as a `DatasetError` at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.core.config import DatasetConfig
from bench.core.errors import FoldbenchError

SHOWN = 10  # problems listed in one error; the rest are counted
# Prefix of content fingerprints; runs made before them carry 16 bare hex digits (file stamps).
FINGERPRINT_FORMAT = "c1-"


class DatasetError(FoldbenchError, ValueError):
    """Metadata or layout that cannot be used; the message names the file and the reason."""


@dataclass
class Dataset:
    name: str
    root: Path
    table: pd.DataFrame  # clip, path, label, class, fold, group
    classes: list[str]
    protocol: str  # the protocol used when none is asked for
    notes: list[str] = field(default_factory=list)  # things skipped or odd, for the report
    _fingerprint: str | None = field(default=None, repr=False, compare=False)
    hash_memo: Path | None = field(default=None, repr=False, compare=False)  # see bench.data.filehash

    def fingerprint(self) -> str:
        """The dataset's identity from its content: each clip's id (its path relative to the root),
        label, class name and metadata fold, and its file's content hash (which covers its size);
        never the root, absolute paths or file times. A copy elsewhere fingerprints the same; one
        changed byte, label or clip changes it. Computed once per manifest; the content hashes are
        remembered in `hash_memo`, so an unchanged dataset is not read again."""
        if self._fingerprint is None:
            from bench.data.filehash import content_hashes

            hashes = content_hashes(self.table["path"].tolist(), self.hash_memo)
            h = hashlib.sha256(FINGERPRINT_FORMAT.encode())
            folds = self.table["fold"] if "fold" in self.table else [None] * len(self.table)
            for clip, label, cls, fold, digest in zip(
                self.table["clip"], self.table["label"], self.table["class"], folds, hashes
            ):
                fold = "" if fold is None or fold != fold else int(fold)  # NaN: no metadata fold
                h.update(f"{clip}\t{label}\t{cls}\t{fold}\t{digest}\n".encode())
            self._fingerprint = FINGERPRINT_FORMAT + h.hexdigest()[:16]
        return self._fingerprint


Loader = Callable[[DatasetConfig, Path, list], Dataset]  # (cfg, cache_dir, problems) -> manifest


@dataclass
class DatasetKind:
    load: Loader
    protocol: str
    layout: str  # what the loader expects on disk, for `datasets list` and --help
    folds: int = 10  # folds of generated protocols (stratified, random) unless --folds says
    needs_root: bool = True  # False: it makes its own data (demo); bench.core.names reads it for the CLI


DATASETS: dict[str, DatasetKind] = {}


def register_dataset(name: str, *, protocol: str, layout: str, folds: int = 10, needs_root: bool = True):
    def add(load: Loader) -> Loader:
        DATASETS[name] = DatasetKind(load, protocol, layout, folds, needs_root)
        return load

    return add


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def problems_error(problems: list[str]) -> DatasetError:
    """One error listing the problems (the first `SHOWN`, then a count)."""
    if len(problems) == 1:
        return DatasetError(problems[0])
    lines = problems[:SHOWN] + ([f"... and {len(problems) - SHOWN} more"] if len(problems) > SHOWN else [])
    return DatasetError(
        f"{len(problems)} problems in the dataset; fix them (`datasets check` lists "
        f"every finding):\n  " + "\n  ".join(lines)
    )


def dataset_root(cfg: DatasetConfig) -> Path:
    if not cfg.root:
        raise DatasetError(f"dataset {cfg.name!r} needs --root, the folder that holds it")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a folder")
    return root
