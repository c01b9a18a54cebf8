"""Atomic writes: a temporary name in the same folder, then `os.replace`; nothing half-written counts.

A leaf module (it imports nothing of the package): the run folder, the cache and the reports use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it over `path` on success, delete it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
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
    finally:
        for item in stage.iterdir():
            item.unlink()
        stage.rmdir()
