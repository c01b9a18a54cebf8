"""Dataset loaders: UrbanSound8K (`us8k`) and its synthetic look-alike (`demo`) here; `folder` and
`gtzan` in `bench.data.folder_datasets`; `create_dataset(cfg, cache_dir)` picks one by name.

The manifest type and the registry live in the leaf module `bench.data.manifest` (re-exported here),
groups in `bench.data.groups`. Loaders check the metadata and the layout; decoding the audio and its
checks happen once, in the waveform cache. Every structural problem is found in one pass: with a
`problems` list, `create_dataset` appends them and returns the manifest of the rest (`datasets
check`); without one it raises them all as one `DatasetError` (`kfold`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from bench.data import folder_datasets  # noqa: F401  (registers `folder` and `gtzan`)
from bench.core.config import DatasetConfig
from bench.data.groups import apply_groups
from bench.data.manifest import (
    DATASETS,
    Dataset,
    DatasetError,
    DatasetKind,
    dataset_root,
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
    "read_us8k",
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
US8K_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
US8K_FOLDS = range(1, 11)  # UrbanSound8K's folds, as the predefined protocol requires them
US8K_LAYOUT = (
    "metadata/UrbanSound8K.csv (slice_file_name,fsID,start,end,salience,fold,classID,class) "
    "and audio/fold1..fold10/<slice_file_name>"
)


def _read_metadata(csv: Path) -> pd.DataFrame:
    """The metadata with its index = the CSV row number (header = row 1); blank lines are skipped
    but counted, so every message names the row a person sees in an editor."""
    if not csv.is_file():
        raise DatasetError(f"{csv}: metadata file not found (expected layout: {US8K_LAYOUT})")
    try:
        meta = pd.read_csv(csv, dtype=str, skip_blank_lines=False)  # as written, for messages
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"{csv}: cannot read the metadata: {e}") from None
    meta.index = meta.index + 2
    missing = [c for c in ("slice_file_name", "fsID", "fold", "classID", "class") if c not in meta.columns]
    if missing:
        raise DatasetError(
            f"{csv}: missing required column(s) {', '.join(missing)}; found {', '.join(map(str, meta.columns))}"
        )
    return meta[meta.notna().any(axis=1)]


def _most_common(keys, values, rows) -> dict:
    """key -> (the value most rows give it (ties: the first seen), how many rows, its first row)."""
    seen: dict = {}
    for k, v, r in zip(keys, values, rows):
        count = seen.setdefault(k, {}).setdefault(v, [0, r])
        count[0] += 1
    return {k: max(((v, n, r) for v, (n, r) in d.items()), key=lambda t: (t[1], -t[2])) for k, d in seen.items()}


def _others(n: int) -> str:
    return f" and {n - 1} other row(s)" if n > 1 else ""


def read_us8k(root: Path, name: str, problems: list[str]) -> Dataset:
    """UrbanSound8K metadata, checked row by row: the required fields, fold in 1..10, classID <->
    class one to one, one row per file, paths inside the root. Each bad row is one problem naming
    the row and every reason, and is left out."""
    csv = root / "metadata" / "UrbanSound8K.csv"
    meta = _read_metadata(csv)
    bad: dict[int, list[str]] = {}  # row -> reasons

    def refuse(row: int, reason: str) -> None:
        bad.setdefault(row, []).append(reason)

    for col in ("slice_file_name", "classID", "class", "fold"):
        for row in meta.index[meta[col].isna()]:
            refuse(row, f"no {col}; fill it in or remove the row")
    class_id = pd.to_numeric(meta["classID"], errors="coerce")
    has_id = (class_id >= 0) & (class_id % 1 == 0)
    for row in meta.index[meta["classID"].notna() & ~has_id]:
        refuse(row, f"classID {meta.at[row, 'classID']} is not a whole number 0, 1, 2, ...; fix it")
    fold = pd.to_numeric(meta["fold"], errors="coerce")
    for row in meta.index[meta["fold"].notna() & ~fold.isin(US8K_FOLDS)]:
        refuse(
            row,
            f"fold {meta.at[row, 'fold']} is not one of the folds 1..10 that the predefined protocol requires; fix it",
        )

    # classID <-> class one to one: a row that disagrees with the most common pairing is refused.
    labelled = meta.index[has_id & meta["class"].notna()].tolist()
    ids = [int(class_id[r]) for r in labelled]
    names = [str(meta.at[r, "class"]) for r in labelled]
    by_id, by_name = _most_common(ids, names, labelled), _most_common(names, ids, labelled)
    consistent = set()
    for row, i, c in zip(labelled, ids, names):
        why = []
        if by_id[i][0] != c:
            why.append(f"classID {i} is {by_id[i][0]!r} in row {by_id[i][2]}{_others(by_id[i][1])}")
        if by_name[c][0] != i:
            why.append(f"{c!r} is classID {by_name[c][0]} in row {by_name[c][2]}{_others(by_name[c][1])}")
        if why:
            refuse(
                row,
                f"classID {i} with class {c!r}, but "
                + " and ".join(why)
                + " (one class per classID, one classID per class); fix this row",
            )
        else:
            consistent.add(i)
    classes_by_id = {i: by_id[i][0] for i in consistent}
    if sorted(classes_by_id) != list(range(len(classes_by_id))):
        raise DatasetError(
            f"{csv}: classID values must be 0..{len(classes_by_id) - 1}, found "
            f"{sorted(classes_by_id)}; number the classes 0, 1, 2, ... without gaps"
        )

    # One row per file, every file inside the root.
    paths: dict[int, Path] = {}
    first: dict[Path, int] = {}
    for row in meta.index[meta["slice_file_name"].notna() & fold.isin(US8K_FOLDS)]:
        clip = f"fold{int(fold[row])}/{meta.at[row, 'slice_file_name']}"
        path = (root / "audio" / clip).resolve()
        if not path.is_relative_to(root / "audio"):
            refuse(
                row, f"path audio/{clip} escapes the dataset root {root}; name a file inside audio/fold{int(fold[row])}"
            )
        elif path in first:
            refuse(
                row, f"{clip} is also row {first[path]}: one file reached from two metadata rows; remove one of them"
            )
        else:
            first[path], paths[row] = row, path
    problems += [f"{csv} row {row}: " + "; ".join(why) for row, why in sorted(bad.items())]
    good = meta[~meta.index.isin(list(bad))]
    if good.empty:
        raise DatasetError(f"{csv}: no usable row; every row has a problem")
    table = pd.DataFrame(
        {
            "clip": [f"fold{int(fold[r])}/{good.at[r, 'slice_file_name']}" for r in good.index],
            "path": [str(paths[r]) for r in good.index],
            "label": class_id[good.index].astype(int).to_numpy(),
            "class": good["class"].astype(str).to_numpy(),
            "fold": fold[good.index].astype(int).to_numpy(),
            "group": good["fsID"].astype(str).to_numpy(),
        }
    )
    return Dataset(name, root, table, [classes_by_id[i] for i in sorted(classes_by_id)], protocol="predefined")


@register_dataset("us8k", protocol="predefined", layout=US8K_LAYOUT)
def load_us8k(cfg: DatasetConfig, cache_dir: Path, problems: list[str]) -> Dataset:
    """UrbanSound8K: 8,732 clips of 10 urban sound classes in 10 predefined folds; group = fsID."""
    return read_us8k(dataset_root(cfg), "us8k", problems)


@register_dataset(
    "demo",
    protocol="predefined",
    layout="generated on first use under <cache_dir>/demo, in the UrbanSound8K layout",
    needs_root=False,
)
def load_demo(cfg: DatasetConfig, cache_dir: Path, problems: list[str]) -> Dataset:
    """A small synthetic UrbanSound8K look-alike (600 clips): runs anywhere, shows real learning."""
    from bench.data.synth import make_demo

    root = Path(cfg.root).expanduser() if cfg.root else cache_dir / "demo"
    if not (root / ".complete").exists():  # about 20 s, once: said, not a silent wait
        print(f"generating the demo dataset (first run only) in {root} ...", file=sys.stderr, flush=True)
    make_demo(root)
    return read_us8k(root.resolve(), "demo", problems)
