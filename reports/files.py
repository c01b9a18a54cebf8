"""Readers of a run folder for the reports, and the atomic writers they use outside one (compare).

The layout is described once, in bench/core/runfolder.py (`RunFolder`, its one writer, which also
verifies it: split folders are read by the plan's split list only, plan.json as far as DONE markers
vouch for it). Report files are written through `RunFolder.publishing` (reports/render.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml


from bench.core.atomic import atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text  # noqa: F401
from bench.core.runfolder import RunFolder


# ---- readers: split folders only through RunFolder, by the plan's split list ----


def done_splits(run_dir) -> list[int]:
    return RunFolder(run_dir).done()


def _read_mapping(path: Path, parse) -> dict:
    """A JSON or YAML mapping, or {} when the file is absent or holds something else."""
    if not path.exists():
        return {}
    data = parse(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def read_plan(run_dir) -> dict:
    """plan.json as far as the finished splits' DONE markers vouch for it (call after
    `RunFolder.verified`, as every report does), or {} when the run has none."""
    folder = RunFolder(run_dir)
    return folder.vouched_plan(folder.done())


def asked_splits(run_dir) -> list[int]:
    """The splits the run was asked for (`RunFolder.asked`)."""
    return RunFolder(run_dir).asked()


def expected_splits(run_dir) -> list[int]:
    """The splits asked for (`asked_splits`), plus any finished one."""
    return sorted(set(done_splits(run_dir)) | set(asked_splits(run_dir)))


def missing_splits(run_dir) -> list[int]:
    done = set(done_splits(run_dir))
    return [k for k in expected_splits(run_dir) if k not in done]


def split_file(run_dir, k: int, name: str) -> Path:
    return RunFolder(run_dir).split_dir(k) / name


def read_split_json(run_dir, k: int) -> dict:
    return RunFolder(run_dir).read_split_info(k)


def read_history(run_dir, k: int) -> pd.DataFrame:
    return pd.read_csv(split_file(run_dir, k, "history.csv"))


def read_quarantine(run_dir) -> pd.DataFrame | None:
    """Quarantined files as DataFrame[clip, reason]; empty when the file is absent or empty; None when
    the finished splits' DONE markers do not vouch for it (written before they covered it)."""
    folder = RunFolder(run_dir)
    if not folder.sealed_whole(folder.done()):
        return None
    path = Path(run_dir) / "quarantine.csv"
    empty = pd.DataFrame({"clip": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    if not path.exists() or path.stat().st_size == 0:
        return empty
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return df if len(df) else empty


def read_config(run_dir) -> dict:
    return _read_mapping(Path(run_dir) / "config.yaml", yaml.safe_load)


def run_name(run_dir) -> str:
    """The run's name: its folder's (config.yaml's `name` is what the folder was claimed as)."""
    return Path(run_dir).resolve().name


def dataset_name(run_dir) -> str | None:
    ds = read_config(run_dir).get("dataset")
    if isinstance(ds, dict):
        ds = ds.get("name")
    return str(ds) if ds else None
