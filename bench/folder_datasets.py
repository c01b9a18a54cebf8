"""Loaders for datasets laid out as folders: `folder` (a folder per class) and `gtzan` (GTZAN genres).

Neither layout defines folds, so both use the `stratified` protocol by default. Groups (a speaker,
an artist, a source recording: clips that must stay in one fold) come from `dataset.group_regex`
(a named group `group` searched in each file name), from `dataset.groups_csv` (path,group), or,
for `folder`, from a `groups.csv` at the root. Hidden and non-audio files are skipped and counted
in `Dataset.notes`; a symbolic link that leaves the root or loops is an error.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pandas as pd
from torchaudio.datasets.gtzan import gtzan_genres

from .config import DatasetConfig
from .datasets import Dataset, DatasetError, _root, register_dataset

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".au", ".aiff", ".aif")
FOLDER_LAYOUT = ("<root>/<class>/**/*.{wav,flac,ogg,au,aiff}: class = first-level folder; "
                 "optional <root>/groups.csv (path,group)")
GTZAN_LAYOUT = ("genres/<genre>/<genre>.000NN.{wav,au} (or genres_original/, or the genre folders "
                "at the root); the 10 GTZAN genres")
GROUPS_CSV = "groups.csv"


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _target(root: Path, path: Path) -> Path:
    """`path` with its links resolved, refusing loops and anything outside `root`; a broken link
    is returned as it is (the waveform cache quarantines it as 'file not found')."""
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return path
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        raise DatasetError(f"{path}: symbolic link loop") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DatasetError(f"{path}: symbolic link loop") from None
        raise DatasetError(f"{path}: cannot follow: {e.strerror}") from None
    if not target.is_relative_to(root):
        raise DatasetError(f"{path}: symbolic link points outside the dataset root {root} "
                           f"(to {target}); copy the file in or point --root higher")
    return target


class _Skipped:
    """Files that are not clips, by reason, for `Dataset.notes`."""

    def __init__(self):
        self.by_reason: dict[str, list[str]] = {}

    def add(self, reason: str, clip: str) -> None:
        self.by_reason.setdefault(reason, []).append(clip)

    def notes(self) -> list[str]:
        return [f"skipped {len(clips)} {reason} (e.g. {', '.join(clips[:3])})"
                for reason, clips in self.by_reason.items()]


def _walk(root: Path, top: Path, skipped: _Skipped) -> list[tuple[Path, Path]]:
    """(path, resolved target) of the audio files under `top`, following directory links once."""
    found, seen, stack = [], {_target(root, top)}, [top]
    while stack:
        folder = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.add("hidden file(s) or folder(s)", _rel(root, path))
                continue
            target = _target(root, path)
            if target.is_dir():
                if target in seen:
                    raise DatasetError(f"{path}: symbolic link loop (reaches {target} a second time)")
                seen.add(target)
                stack.append(path)
            elif path.suffix.lower() in AUDIO_EXTENSIONS:
                found.append((path, target))
            else:
                skipped.add("non-audio file(s)", _rel(root, path))
    return found


def _one_file_once(root: Path, files: list[tuple[str, Path, Path]]) -> None:
    """Refuse one file reached under two names (links): it would count twice, maybe in two classes."""
    first: dict[tuple[int, int], tuple[str, Path]] = {}
    for cls, path, target in files:
        try:
            st = target.stat()
        except OSError:
            continue  # missing: quarantined later
        key = (st.st_dev, st.st_ino)
        if key in first:
            other_cls, other = first[key]
            where = f"under two classes ({other_cls} and {cls})" if other_cls != cls else "twice"
            raise DatasetError(f"{_rel(root, other)} and {_rel(root, path)} are the same file {where}; "
                               f"remove one of them")
        first[key] = (cls, path)


def _table(root: Path, classes: list[str], files: list[tuple[str, Path, Path]]) -> pd.DataFrame:
    label = {c: i for i, c in enumerate(classes)}
    return pd.DataFrame({
        "clip": [_rel(root, p) for _, p, _ in files],
        "path": [str(t) for _, _, t in files],
        "label": [label[c] for c, _, _ in files],
        "class": [c for c, _, _ in files],
        "fold": float("nan"),
        "group": None,
    })


@register_dataset("folder", protocol="stratified", layout=FOLDER_LAYOUT, folds=5)
def load_folder(cfg: DatasetConfig, cache_dir: Path) -> Dataset:
    """Any folder-per-class dataset: the class is the first-level folder, files may nest below it."""
    root = _root(cfg)
    skipped, classes, files = _Skipped(), [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.add("hidden file(s) or folder(s)", entry.name)
        elif _target(root, path).is_dir():
            audio = _walk(root, path, skipped)
            if not audio:
                raise DatasetError(f"{path}: class folder holds no audio files "
                                   f"({', '.join(AUDIO_EXTENSIONS)}); add clips or remove it")
            classes.append(entry.name)
            files += [(entry.name, p, t) for p, t in audio]
        elif entry.name != GROUPS_CSV:
            skipped.add("file(s) outside the class folders", entry.name)
    if not classes:
        raise DatasetError(f"{root}: no class folders (expected layout: {FOLDER_LAYOUT})")
    if len(classes) < 2:
        raise DatasetError(f"{root}: one class folder ({classes[0]}); classification needs two or more")
    _one_file_once(root, files)
    dataset = Dataset("folder", root, _table(root, classes, files), classes, protocol="stratified",
                      notes=skipped.notes())
    if (root / GROUPS_CSV).is_file() and not (cfg.group_regex or cfg.groups_csv):
        dataset.table["group"] = groups_from_csv(dataset, root / GROUPS_CSV)
        dataset.notes.append(f"groups from {root / GROUPS_CSV}")
    return dataset


def _gtzan_base(root: Path) -> Path:
    for base in (root / "genres", root / "genres_original", root):
        if any((base / g).is_dir() for g in gtzan_genres):
            return base
    raise DatasetError(f"{root}: no GTZAN genre folders (expected layout: {GTZAN_LAYOUT})")


@register_dataset("gtzan", protocol="stratified", layout=GTZAN_LAYOUT, folds=10)
def load_gtzan(cfg: DatasetConfig, cache_dir: Path) -> Dataset:
    """GTZAN: 1,000 30-second excerpts, 100 per genre; no folds, no artist labels (see gtzan-filtered)."""
    root = _root(cfg)
    base = _gtzan_base(root)
    missing = [g for g in gtzan_genres if not (base / g).is_dir()]
    if missing:
        raise DatasetError(f"{base}: genre folder(s) missing: {', '.join(missing)} "
                           f"(expected layout: {GTZAN_LAYOUT})")
    skipped, files, stems = _Skipped(), [], {}
    for genre in gtzan_genres:
        name = re.compile(rf"{genre}\.\d{{5}}\.(wav|au)", re.IGNORECASE)
        for entry in sorted(os.scandir(base / genre), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.add("hidden file(s) or folder(s)", _rel(root, path))
            elif not name.fullmatch(entry.name):
                kind = "audio" if path.suffix.lower() in AUDIO_EXTENSIONS else "non-audio"
                skipped.add(f"{kind} file(s) not named <genre>.NNNNN.wav|au", _rel(root, path))
            else:
                stem = entry.name.rsplit(".", 1)[0].lower()
                if stem in stems:
                    raise DatasetError(f"{stems[stem]} and {path}: two files for GTZAN clip {stem}; "
                                       f"keep one")
                stems[stem] = path
                files.append((genre, path, _target(root, path)))
        if not any(f[0] == genre for f in files):
            raise DatasetError(f"{base / genre}: genre folder holds no <genre>.NNNNN.wav|au files")
    _one_file_once(root, files)
    return Dataset("gtzan", root, _table(base, list(gtzan_genres), files), list(gtzan_genres),
                   protocol="stratified", notes=skipped.notes())


# ---- groups from the config: --group-regex or --groups-csv, for any dataset kind ----

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
    return (f"{what} {len(clips)} of {n} clip(s), e.g. {', '.join(clips[:5])}: every clip needs a "
            f"group, or a clip of an unknown source could sit in training and test")


def groups_from_regex(dataset: Dataset, pattern: str) -> list[str]:
    """The named group `group` of `pattern`, searched in each clip's file name."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DatasetError(f"--group-regex {pattern!r}: not a valid regular expression: {e}") from None
    if "group" not in rx.groupindex:
        raise DatasetError(f"--group-regex {pattern!r}: needs a named group 'group', "
                           f"e.g. '^(?P<group>[a-z]+)_'")
    clips = dataset.table["clip"].tolist()
    groups = []
    for clip in clips:
        m = rx.search(clip.rsplit("/", 1)[-1])
        groups.append(m.group("group") if m and m.group("group") else None)
    missed = [c for c, g in zip(clips, groups) if g is None]
    if len(missed) == len(clips):
        raise DatasetError(f"--group-regex {pattern!r} matches none of the {len(clips)} file names "
                           f"(e.g. {', '.join(c.rsplit('/', 1)[-1] for c in clips[:3])}); "
                           f"it is searched in the file name, not the folder path")
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
