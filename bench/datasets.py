"""Dataset loaders: each turns a folder on disk into a manifest.

A manifest is a `Dataset`: a table with one row per clip (`clip` id relative to the root, absolute
`path`, int `label`, `class` name, `fold` when the dataset defines folds, `group` when a source
recording, speaker or artist is known), the class names, and the protocol the dataset uses unless
told otherwise. Loaders check the metadata (columns, paths inside the root); decoding the audio
and its checks happen once, in the waveform cache.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .config import DatasetConfig


class DatasetError(ValueError):
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

    def fingerprint(self) -> str:
        """Changes when a clip, its label or its file (size, modification time) changes; computed
        once per manifest (it stats every file)."""
        if self._fingerprint is None:
            self._fingerprint = self._stat_files()
        return self._fingerprint

    def _stat_files(self) -> str:
        h = hashlib.sha1()
        for clip, path, label in zip(self.table["clip"], self.table["path"], self.table["label"]):
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{clip}\t{label}\t{stamp}\n".encode())
        return h.hexdigest()[:16]


@dataclass
class DatasetKind:
    load: Callable[[DatasetConfig, Path], Dataset]
    protocol: str
    layout: str  # what the loader expects on disk, for `datasets list` and --help
    folds: int = 10  # folds of generated protocols (stratified, random) unless --folds says


DATASETS: dict[str, DatasetKind] = {}


def register_dataset(name: str, *, protocol: str, layout: str, folds: int = 10):
    def add(load):
        DATASETS[name] = DatasetKind(load, protocol, layout, folds)
        return load
    return add


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def create_dataset(cfg: DatasetConfig, cache_dir: str | Path) -> Dataset:
    if cfg.name not in DATASETS:
        raise DatasetError(f"unknown dataset {cfg.name!r}; known: {', '.join(list_datasets())}")
    dataset = DATASETS[cfg.name].load(cfg, Path(cache_dir).expanduser())
    return apply_groups(dataset, cfg)  # --group-regex / --groups-csv, for any kind


def _root(cfg: DatasetConfig) -> Path:
    if not cfg.root:
        raise DatasetError(f"dataset {cfg.name!r} needs --root, the folder that holds it")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a folder")
    return root


def inside(root: Path, path: Path, what: str) -> Path:
    """`path` resolved, refusing anything that leaves `root` (`../`, absolute paths, symlinks)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise DatasetError(f"{what}: path {path} escapes the dataset root {root}")
    return resolved


US8K_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
US8K_LAYOUT = ("metadata/UrbanSound8K.csv (slice_file_name,fsID,start,end,salience,fold,classID,class) "
               "and audio/fold1..fold10/<slice_file_name>")


def read_us8k(root: Path, name: str) -> Dataset:
    csv = root / "metadata" / "UrbanSound8K.csv"
    if not csv.is_file():
        raise DatasetError(f"{csv}: metadata file not found (expected layout: {US8K_LAYOUT})")
    try:
        meta = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"{csv}: cannot read the metadata: {e}") from None
    needed = ["slice_file_name", "fsID", "fold", "classID", "class"]
    missing = [c for c in needed if c not in meta.columns]
    if missing:
        raise DatasetError(f"{csv}: missing required column(s) {', '.join(missing)}; "
                           f"found {', '.join(map(str, meta.columns))}")
    for col in ("slice_file_name", "classID", "class"):
        empty = meta[col].isna()
        if empty.any():
            raise DatasetError(f"{csv}: row {int(empty.idxmax()) + 2} has no {col}")
    # Folds are checked by the protocol (missing or out of range is its error to give).
    fold = pd.to_numeric(meta["fold"], errors="coerce")
    clips = [f"fold{'?' if pd.isna(f) else int(f)}/{name_}" for f, name_ in zip(fold, meta["slice_file_name"])]
    paths = [str(inside(root / "audio", root / "audio" / c, f"{csv} row {i + 2}"))
             for i, c in enumerate(clips)]
    classes_by_id = meta.groupby("classID")["class"].first().sort_index()
    if list(classes_by_id.index) != list(range(len(classes_by_id))):
        raise DatasetError(f"{csv}: classID values must be 0..{len(classes_by_id) - 1}, "
                           f"found {sorted(classes_by_id.index.tolist())}")
    table = pd.DataFrame({"clip": clips, "path": paths, "label": meta["classID"].astype(int),
                          "class": meta["class"].astype(str), "fold": fold,
                          "group": meta["fsID"].astype(str)})
    return Dataset(name, root, table, list(classes_by_id.astype(str)), protocol="predefined")


@register_dataset("us8k", protocol="predefined", layout=US8K_LAYOUT)
def load_us8k(cfg: DatasetConfig, cache_dir: Path) -> Dataset:
    """UrbanSound8K: 8,732 clips of 10 urban sound classes in 10 predefined folds; group = fsID."""
    return read_us8k(_root(cfg), "us8k")


@register_dataset("demo", protocol="predefined",
                  layout="generated on first use under <cache_dir>/demo, in the UrbanSound8K layout")
def load_demo(cfg: DatasetConfig, cache_dir: Path) -> Dataset:
    """A small synthetic UrbanSound8K look-alike (600 clips): runs anywhere, shows real learning."""
    from .synth import make_demo
    root = Path(cfg.root).expanduser() if cfg.root else cache_dir / "demo"
    make_demo(root)
    return read_us8k(root.resolve(), "demo")


from .folder_datasets import apply_groups  # noqa: E402  (registers `folder` and `gtzan`)
