"""Loaders for datasets laid out as folders: `folder` (a folder per class) and `gtzan` (GTZAN genres).

Neither layout defines folds, so both use the `stratified` protocol by default. Groups (a speaker,
an artist, a source recording: clips that must stay in one fold) come from `dataset.group_regex`
(a named group `group` searched in each file name), from `dataset.groups_csv` (path,group), or,
for `folder`, from a `groups.csv` at the root. Hidden and non-audio files are skipped and counted
in `Dataset.notes`. A symbolic link that leaves the root or loops, an empty class folder, one
file under two names: each is a problem (see `bench.data.manifest`), the entry is skipped and the walk
goes on. Groups are `bench.data.groups`' job.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pandas as pd
from torchaudio.datasets.gtzan import gtzan_genres

from bench.core.config import DatasetConfig
from bench.data.groups import groups_from_csv
from bench.data.manifest import Dataset, DatasetError, dataset_root, register_dataset

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".au", ".aiff", ".aif")
FOLDER_LAYOUT = (
    "<root>/<class>/**/*.{wav,flac,ogg,au,aiff}: class = first-level folder; optional <root>/groups.csv (path,group)"
)
GTZAN_LAYOUT = (
    "genres/<genre>/<genre>.000NN.{wav,au} (or genres_original/, or the genre folders at the root); the 10 GTZAN genres"
)
GROUPS_CSV = "groups.csv"


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


LOOP = "symbolic link loop; remove the link"


def _target(root: Path, path: Path, problems: list[str]) -> Path | None:
    """`path` with its links resolved; None (and a problem) for a loop or anything outside `root`.
    A broken link is returned as it is (the waveform cache quarantines it as 'file not found')."""
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return path
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        problems.append(f"{path}: {LOOP}")
        return None
    except OSError as e:
        problems.append(
            f"{path}: {LOOP}"
            if e.errno == errno.ELOOP
            else f"{path}: cannot follow: {e.strerror}; fix its permissions or remove it"
        )
        return None
    if not target.is_relative_to(root):
        problems.append(
            f"{path}: symbolic link points outside the dataset root {root} "
            f"(to {target}); copy the file in or point --root higher"
        )
        return None
    return target


class _Skipped:
    """Files that are not clips, by reason, for `Dataset.notes`."""

    def __init__(self):
        self.by_reason: dict[str, list[str]] = {}

    def add(self, reason: str, clip: str) -> None:
        self.by_reason.setdefault(reason, []).append(clip)

    def notes(self) -> list[str]:
        return [
            f"skipped {len(clips)} {reason} (e.g. {', '.join(clips[:3])})" for reason, clips in self.by_reason.items()
        ]


def _walk(root: Path, top: Path, target: Path, skipped: _Skipped, problems: list[str]) -> list[tuple[Path, Path]]:
    """(path, resolved target) of the audio files under `top` (resolved: `target`), following
    directory links once."""
    found, seen, stack = [], {target}, [top]
    while stack:
        folder = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.add("hidden file(s) or folder(s)", _rel(root, path))
                continue
            target = _target(root, path, problems)
            if target is None:
                continue
            if target.is_dir():
                if target in seen:
                    problems.append(f"{path}: symbolic link loop (reaches {target} a second time); remove the link")
                    continue
                seen.add(target)
                stack.append(path)
            elif path.suffix.lower() in AUDIO_EXTENSIONS:
                found.append((path, target))
            else:
                skipped.add("non-audio file(s)", _rel(root, path))
    return found


def _one_file_once(
    root: Path, files: list[tuple[str, Path, Path]], problems: list[str]
) -> list[tuple[str, Path, Path]]:
    """`files` without the second name of one file reached under two (links): it would count
    twice, maybe in two classes; each such pair is a problem."""
    first: dict[tuple[int, int], tuple[str, Path]] = {}
    kept = []
    for cls, path, target in files:
        try:
            st = target.stat()
        except OSError:
            kept.append((cls, path, target))  # missing: quarantined later
            continue
        key = (st.st_dev, st.st_ino)
        if key in first:
            other_cls, other = first[key]
            where = f"under two classes ({other_cls} and {cls})" if other_cls != cls else "twice"
            problems.append(f"{_rel(root, other)} and {_rel(root, path)} are the same file {where}; remove one of them")
            continue
        first[key] = (cls, path)
        kept.append((cls, path, target))
    return kept


def _table(root: Path, classes: list[str], files: list[tuple[str, Path, Path]]) -> pd.DataFrame:
    label = {c: i for i, c in enumerate(classes)}
    return pd.DataFrame(
        {
            "clip": [_rel(root, p) for _, p, _ in files],
            "path": [str(t) for _, _, t in files],
            "label": [label[c] for c, _, _ in files],
            "class": [c for c, _, _ in files],
            "fold": float("nan"),
            "group": None,
        }
    )


@register_dataset("folder", protocol="stratified", layout=FOLDER_LAYOUT, folds=5)
def load_folder(cfg: DatasetConfig, cache_dir: Path, problems: list[str]) -> Dataset:
    """Any folder-per-class dataset: the class is the first-level folder, files may nest below it."""
    root = dataset_root(cfg)
    skipped, classes, files = _Skipped(), [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.add("hidden file(s) or folder(s)", entry.name)
            continue
        target = _target(root, path, problems)
        if target is None:
            continue
        if target.is_dir():
            audio = _walk(root, path, target, skipped, problems)
            if not audio:
                problems.append(
                    f"{path}: class folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)}); add clips or remove it"
                )
                continue
            classes.append(entry.name)
            files += [(entry.name, p, t) for p, t in audio]
        elif entry.name != GROUPS_CSV:
            skipped.add("file(s) outside the class folders", entry.name)
    if not classes:
        raise DatasetError(f"{root}: no class folders (expected layout: {FOLDER_LAYOUT})")
    if len(classes) < 2:
        raise DatasetError(f"{root}: one class folder ({classes[0]}); classification needs two or more")
    files = _one_file_once(root, files, problems)
    dataset = Dataset(
        "folder", root, _table(root, classes, files), classes, protocol="stratified", notes=skipped.notes()
    )
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
def load_gtzan(cfg: DatasetConfig, cache_dir: Path, problems: list[str]) -> Dataset:
    """GTZAN: 1,000 30-second excerpts, 100 per genre; no folds, no artist labels (see gtzan-filtered)."""
    root = dataset_root(cfg)
    base = _gtzan_base(root)
    missing = [g for g in gtzan_genres if not (base / g).is_dir()]
    if missing:
        problems.append(
            f"{base}: genre folder(s) missing: {', '.join(missing)}; put the 10 GTZAN "
            f"genres back (expected layout: {GTZAN_LAYOUT})"
        )
    skipped, files, stems = _Skipped(), [], {}
    for genre in (g for g in gtzan_genres if g not in missing):
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
                target = _target(root, path, problems)
                if target is None:
                    continue
                if stem in stems:
                    problems.append(f"{stems[stem]} and {path}: two files for GTZAN clip {stem}; keep one")
                    continue
                stems[stem] = path
                files.append((genre, path, target))
        if not any(f[0] == genre for f in files):
            problems.append(
                f"{base / genre}: genre folder holds no <genre>.NNNNN.wav|au files; "
                f"add them or use the folder dataset kind"
            )
    if not files:
        raise DatasetError(f"{base}: no GTZAN excerpts found (expected layout: {GTZAN_LAYOUT})")
    files = _one_file_once(root, files, problems)
    return Dataset(
        "gtzan",
        root,
        _table(base, list(gtzan_genres), files),
        list(gtzan_genres),
        protocol="stratified",
        notes=skipped.notes(),
    )
