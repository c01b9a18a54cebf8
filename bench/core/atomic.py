"""Atomic writes: a temporary name in the same folder, then `os.replace`; nothing half-written counts.

A leaf module (it imports nothing of the package): the run folder, the cache and the reports use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a DataFrame is written, never built here: pandas stays out of the CLI's start
    import pandas as pd


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; the user's quota is used up


class DiskFull(OSError):
    """A write failed because the disk (or quota) is full: `folder` is where it was writing. The
    file was not replaced (its temporary copy is deleted), so everything written before is intact."""

    def __init__(self, folder: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or os.strerror(cause.errno), str(folder))
        self.folder = folder


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it over `path` on success, delete it on error.
    A full disk is raised as `DiskFull` naming the folder (the write's own error rarely names it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL and not isinstance(e, DiskFull):
            raise DiskFull(path.parent, e) from e
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_csv(path, df: pd.DataFrame, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


@contextlib.contextmanager
def staged(folder):
    """Yield an empty staging folder inside `folder`; when the block succeeds, move each file made
    in it over its namesake in `folder`. On error nothing in `folder` is replaced: a set of files
    that belong together (a report) is published only once all of them are computed."""
    folder = Path(folder)
    stage = folder / f".staged.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            if item.is_file():
                os.replace(item, folder / item.name)
    except OSError as e:
        if e.errno in DISK_FULL:  # named by the folder the files were for, not the staging one
            raise DiskFull(folder, e) from e
        raise
    finally:
        for item in stage.iterdir():
            item.unlink()
        stage.rmdir()
