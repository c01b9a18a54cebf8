"""`create_dataset(cfg, cache_dir)`: the manifest of a dataset kind, picked by name. The kinds are
registered by the modules imported here: `us8k` and `demo` in `bench.data.us8k` (a `CsvCorpus`
declaration, `bench.data.csv_corpus`), `folder` and `gtzan` in `bench.data.folder_datasets`.

The manifest type and the registry live in the leaf module `bench.data.manifest` (re-exported here),
groups in `bench.data.groups`. Loaders check the metadata and the layout; decoding the audio and its
checks happen once, in the waveform cache. Every structural problem is found in one pass: with a
`problems` list, `create_dataset` appends them and returns the manifest of the rest (`datasets
check`); without one it raises them all as one `DatasetError` (`kfold`).
"""

from __future__ import annotations

from pathlib import Path

from bench.data import folder_datasets, us8k  # noqa: F401  (register `folder`, `gtzan`, `us8k` and `demo`)
from bench.core.config import DatasetConfig
from bench.data.groups import apply_groups
from bench.data.manifest import (
    DATASETS,
    Dataset,
    DatasetError,
    DatasetKind,
    list_datasets,
    problems_error,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "DatasetKind",
    "create_dataset",
    "list_datasets",
    "register_dataset",
]


def create_dataset(cfg: DatasetConfig, cache_dir: str | Path, problems: list[str] | None = None) -> Dataset:
    """The manifest of `cfg`'s dataset, groups applied (--group-regex / --groups-csv, any kind).

    Structural problems (one line each: the file or CSV row, the reason, the fix) are appended to
    `problems` and the entries concerned left out; with `problems=None` they are raised together.
    A problem that leaves nothing to load is raised either way, with those found before it."""
    if cfg.name not in DATASETS:
        raise DatasetError(f"unknown dataset {cfg.name!r}; known: {', '.join(list_datasets())}")
    found: list[str] = []
    try:
        dataset = DATASETS[cfg.name].load(cfg, Path(cache_dir).expanduser(), found)
        dataset = apply_groups(dataset, cfg)
    except DatasetError as e:
        if found:
            raise problems_error(found + [str(e)]) from None
        raise
    if problems is None and found:
        raise problems_error(found)
    if problems is not None:
        problems.extend(found)
    dataset.hash_memo = Path(cache_dir).expanduser() / HASH_MEMO
    return dataset


HASH_MEMO = "file-hashes.tsv"  # in the cache dir: the files' content hashes (bench.data.filehash)
