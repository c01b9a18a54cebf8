"""Groups: clips that must stay in one fold (a speaker, an artist, a source recording).

They come from the config, for any dataset kind: `dataset.group_regex` (a named group `group`
searched in each file name) or `dataset.groups_csv` (columns path,group); `folder` datasets also
read a `groups.csv` at their root. Every clip needs a group once groups are given, or a clip of an
unknown source could sit in training and test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.core.config import DatasetConfig
from bench.data.manifest import Dataset, DatasetError


def apply_groups(dataset: Dataset, cfg: DatasetConfig) -> Dataset:
    """Replace the dataset's groups with those the config asks for (if any)."""
    if cfg.group_regex and cfg.groups_csv:
        raise DatasetError("give --group-regex or --groups-csv, not both")
    if cfg.group_regex:
        dataset.table["group"] = groups_from_regex(dataset, cfg.group_regex)
        dataset.notes.append(f"groups from --group-regex {cfg.group_regex!r}")
    elif cfg.groups_csv:
        path = Path(cfg.groups_csv).expanduser()
        dataset.table["group"] = groups_from_csv(dataset, path if path.is_absolute() else dataset.root / path)
        dataset.notes.append(f"groups from {cfg.groups_csv}")
    return dataset


def _misses(what: str, clips: list[str], n: int) -> str:
    return (
        f"{what} {len(clips)} of {n} clip(s), e.g. {', '.join(clips[:5])}: every clip needs a "
        f"group, or a clip of an unknown source could sit in training and test"
    )


def groups_from_regex(dataset: Dataset, pattern: str) -> list[str]:
    """The named group `group` of `pattern`, searched in each clip's file name."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DatasetError(f"--group-regex {pattern!r}: not a valid regular expression: {e}") from None
    if "group" not in rx.groupindex:
        raise DatasetError(f"--group-regex {pattern!r}: needs a named group 'group', e.g. '^(?P<group>[a-z]+)_'")
    clips = dataset.table["clip"].tolist()
    groups = []
    for clip in clips:
        m = rx.search(clip.rsplit("/", 1)[-1])
        groups.append(m.group("group") if m and m.group("group") else None)
    missed = [c for c, g in zip(clips, groups) if g is None]
    if len(missed) == len(clips):
        raise DatasetError(
            f"--group-regex {pattern!r} matches none of the {len(clips)} file names "
            f"(e.g. {', '.join(c.rsplit('/', 1)[-1] for c in clips[:3])}); "
            f"it is searched in the file name, not the folder path"
        )
    if missed:
        raise DatasetError(f"--group-regex {pattern!r}: " + _misses("no match in", missed, len(clips)))
    return groups


def groups_from_csv(dataset: Dataset, path: Path) -> list[str]:
    """Groups from a CSV with columns path,group; path relative to the dataset root (or the clip id)."""
    if not path.is_file():
        raise DatasetError(f"{path}: groups file not found")
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the groups: {e}") from None
    if not {"path", "group"} <= set(rows.columns):
        raise DatasetError(f"{path}: needs columns path,group; found {', '.join(rows.columns)}")
    lookup: dict[str, str] = {}
    for i, (p, g) in enumerate(zip(rows["path"], rows["group"]), start=2):
        key = Path(p.strip()).as_posix().removeprefix("./")
        if not key or not g.strip():
            raise DatasetError(f"{path}: row {i} has no {'path' if not key else 'group'}")
        if lookup.get(key, g.strip()) != g.strip():
            raise DatasetError(f"{path}: {key} has two groups ({lookup[key]} and {g.strip()})")
        lookup[key] = g.strip()
    root = dataset.root
    groups = []
    for clip, file in zip(dataset.table["clip"], dataset.table["path"]):
        try:
            rel = Path(file).relative_to(root).as_posix()
        except ValueError:
            rel = clip
        groups.append(lookup.get(clip, lookup.get(rel)))
    missed = [c for c, g in zip(dataset.table["clip"], groups) if g is None]
    if missed:
        raise DatasetError(f"{path}: " + _misses("no row for", missed, len(groups)))
    return groups
