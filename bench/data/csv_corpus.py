"""One declarative loader for corpora whose folds, labels and groups sit in a CSV metadata file
(UrbanSound8K, ESC-50, ...): a `CsvCorpus` names the metadata file, its columns, the number of
predefined folds and where a row's audio sits; `register(name)` makes it a dataset kind.

    US8K = CsvCorpus(
        metadata="metadata/UrbanSound8K.csv",
        file="slice_file_name", label="classID", class_name="class", fold="fold", group="fsID",
        n_folds=10, clip="fold{fold}/{slice_file_name}",
    )
    US8K.register("us8k")

The metadata is checked row by row: the required fields, a fold in 1..n_folds, label <-> class name
one to one, labels numbered 0..n-1, one row per file, every path inside the audio folder. Each bad
row is one problem naming its CSV row (header = row 1, blank lines counted) and every reason, and is
left out; a problem that leaves nothing to load (no metadata file, a missing column, no usable row)
is a `DatasetError` at once. Decoding the audio (a missing or broken file) is the waveform cache's.
"""

from __future__ import annotations

import posixpath
import string
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.config import DatasetConfig
from bench.data.manifest import Dataset, DatasetError, Loader, dataset_root, register_dataset


@dataclass(frozen=True)
class CsvCorpus:
    metadata: str  # the metadata CSV, relative to the dataset root
    file: str  # column: the audio file's name
    label: str  # column: the class id, a whole number 0..n_classes-1
    class_name: str  # column: the class name (one per class id)
    fold: str  # column: the predefined fold, 1..n_folds
    group: str | None  # column: the source recording (or speaker, ...) no two folds may share; None: none known
    n_folds: int
    clip: str  # a row's audio file relative to `audio`, a format string over column names ({fold} an int)
    audio: str = "audio"  # the folder under the root that holds the audio; no path may leave it
    layout: str | None = None  # what `datasets list` shows; by default, from the fields above

    def __post_init__(self):
        if self.file not in self.placeholders() or "" in self.placeholders():
            raise ValueError(f"CsvCorpus clip {self.clip!r}: name columns in braces, {{{self.file}}} among them")

    def columns(self) -> list[str]:
        """The required columns, in the order a missing one is reported."""
        return [c for c in (self.file, self.group, self.fold, self.label, self.class_name) if c is not None]

    def placeholders(self) -> list[str]:
        return list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(self.clip) if f is not None))

    def describe(self) -> str:
        if self.layout:
            return self.layout
        shown = self.clip
        for col in self.placeholders():
            shown = shown.replace("{" + col + "}", f"<{col}>")
        return f"{self.metadata} ({','.join(self.columns())}) and {self.audio}/{shown}"

    def register(self, name: str) -> Loader:
        """Make this corpus the dataset kind `name` (`--dataset name --root ...`), predefined folds."""

        def load(cfg: DatasetConfig, cache_dir: Path, problems: list[str]) -> Dataset:
            return self.read(dataset_root(cfg), name, problems)

        load.__name__ = load.__qualname__ = f"load_{name.replace('-', '_')}"
        return register_dataset(name, protocol="predefined", layout=self.describe(), folds=self.n_folds)(load)

    def read(self, root: Path, name: str, problems: list[str]) -> Dataset:
        """The manifest of the corpus at `root` (resolved); each bad row appended to `problems`."""
        csv = root / self.metadata
        meta = self._read_metadata(csv)
        bad: dict[int, list[str]] = {}  # row -> reasons

        def refuse(row: int, reason: str) -> None:
            bad.setdefault(row, []).append(reason)

        needed = [self.file, self.label, self.class_name, self.fold]
        for col in needed + [c for c in self.placeholders() if c not in needed]:
            for row in meta.index[meta[col].isna()]:
                refuse(row, f"no {col}; fill it in or remove the row")
        class_id = pd.to_numeric(meta[self.label], errors="coerce")
        has_id = (class_id >= 0) & (class_id % 1 == 0)
        for row in meta.index[meta[self.label].notna() & ~has_id]:
            refuse(row, f"{self.label} {meta.at[row, self.label]} is not a whole number 0, 1, 2, ...; fix it")
        fold = pd.to_numeric(meta[self.fold], errors="coerce")
        in_range = fold.isin(range(1, self.n_folds + 1))
        for row in meta.index[meta[self.fold].notna() & ~in_range]:
            refuse(
                row,
                f"{self.fold} {meta.at[row, self.fold]} is not one of the folds 1..{self.n_folds} that the "
                "predefined protocol requires; fix it",
            )
        classes_by_id = self._classes(csv, meta, class_id, has_id, refuse)

        # One row per file, every file inside the audio folder.
        audio = root / self.audio
        clips: dict[int, str] = {}
        paths: dict[int, Path] = {}
        first: dict[Path, int] = {}
        for row in meta.index[meta[self.placeholders()].notna().all(axis=1) & in_range]:
            values = {c: int(fold[row]) if c == self.fold else meta.at[row, c] for c in self.placeholders()}
            clip = self.clip.format(**values)
            path = (audio / clip).resolve()
            if not path.is_relative_to(audio):
                inside = posixpath.join(self.audio, posixpath.dirname(self.clip).format(**values)).rstrip("/")
                refuse(row, f"path {self.audio}/{clip} escapes the dataset root {root}; name a file inside {inside}")
            elif path in first:
                refuse(
                    row,
                    f"{clip} is also row {first[path]}: one file reached from two metadata rows; remove one of them",
                )
            else:
                first[path], paths[row], clips[row] = row, path, clip
        problems += [f"{csv} row {row}: " + "; ".join(why) for row, why in sorted(bad.items())]
        good = meta.index[~meta.index.isin(list(bad))]
        if good.empty:
            raise DatasetError(f"{csv}: no usable row; every row has a problem")
        table = pd.DataFrame(
            {
                "clip": [clips[r] for r in good],
                "path": [str(paths[r]) for r in good],
                "label": class_id[good].astype(int).to_numpy(),
                "class": meta.loc[good, self.class_name].astype(str).to_numpy(),
                "fold": fold[good].astype(int).to_numpy(),
                "group": meta.loc[good, self.group].astype(str).to_numpy() if self.group else None,
            }
        )
        return Dataset(name, root, table, [classes_by_id[i] for i in sorted(classes_by_id)], protocol="predefined")

    def _read_metadata(self, csv: Path) -> pd.DataFrame:
        """The metadata with its index = the CSV row number (header = row 1); blank lines are skipped
        but counted, so every message names the row a person sees in an editor."""
        if not csv.is_file():
            raise DatasetError(f"{csv}: metadata file not found (expected layout: {self.describe()})")
        try:
            meta = pd.read_csv(csv, dtype=str, skip_blank_lines=False)  # as written, for messages
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DatasetError(f"{csv}: cannot read the metadata: {e}") from None
        meta.index = meta.index + 2
        required = list(dict.fromkeys(self.columns() + self.placeholders()))
        missing = [c for c in required if c not in meta.columns]
        if missing:
            raise DatasetError(
                f"{csv}: missing required column(s) {', '.join(missing)}; found {', '.join(map(str, meta.columns))}"
            )
        return meta[meta.notna().any(axis=1)]

    def _classes(self, csv: Path, meta: pd.DataFrame, class_id, has_id, refuse) -> dict[int, str]:
        """{class id: class name}, one to one: a row that disagrees with the most common pairing is
        refused; the ids that remain must be 0..n-1."""
        lab, cls = self.label, self.class_name
        labelled = meta.index[has_id & meta[cls].notna()].tolist()
        ids = [int(class_id[r]) for r in labelled]
        names = [str(meta.at[r, cls]) for r in labelled]
        by_id, by_name = _most_common(ids, names, labelled), _most_common(names, ids, labelled)
        consistent = set()
        for row, i, c in zip(labelled, ids, names):
            why = []
            if by_id[i][0] != c:
                why.append(f"{lab} {i} is {by_id[i][0]!r} in row {by_id[i][2]}{_others(by_id[i][1])}")
            if by_name[c][0] != i:
                why.append(f"{c!r} is {lab} {by_name[c][0]} in row {by_name[c][2]}{_others(by_name[c][1])}")
            if why:
                refuse(
                    row,
                    f"{lab} {i} with {cls} {c!r}, but "
                    + " and ".join(why)
                    + f" (one {cls} per {lab}, one {lab} per {cls}); fix this row",
                )
            else:
                consistent.add(i)
        classes_by_id = {i: by_id[i][0] for i in consistent}
        if sorted(classes_by_id) != list(range(len(classes_by_id))):
            raise DatasetError(
                f"{csv}: {lab} values must be 0..{len(classes_by_id) - 1}, found "
                f"{sorted(classes_by_id)}; number the classes 0, 1, 2, ... without gaps"
            )
        return classes_by_id


def _most_common(keys, values, rows) -> dict:
    """key -> (the value most rows give it (ties: the first seen), how many rows, its first row)."""
    seen: dict = {}
    for k, v, r in zip(keys, values, rows):
        count = seen.setdefault(k, {}).setdefault(v, [0, r])
        count[0] += 1
    return {k: max(((v, n, r) for v, (n, r) in d.items()), key=lambda t: (t[1], -t[2])) for k, d in seen.items()}


def _others(n: int) -> str:
    return f" and {n - 1} other row(s)" if n > 1 else ""
