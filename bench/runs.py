"""The run folder: `runs/<name>/` with config.yaml, folds.csv, per-split outputs and done markers.

Every file is written atomically (`reports.files`: a temporary name, then `os.replace`), and a
split counts as finished only once its `DONE` marker exists, written after everything else.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from reports.files import atomic_write_csv, atomic_write_text

from .config import RunConfig, dump_yaml, flatten, load_yaml

# Sections that decide the results: a resumed run must match them exactly.
RESULT_KEYS = ("dataset", "protocol", "audio", "features", "augment", "model", "train", "splits")
NOT_RESULT_KEYS = ("train.device", "train.threads")


class RunFolderError(ValueError):
    """A run folder that cannot be started or resumed as asked."""


def default_name(cfg: RunConfig) -> str:
    return f"{cfg.dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run(runs_dir: str | Path, dataset: str) -> str | None:
    """The newest run folder of this dataset (what `--resume` without `--name` continues)."""
    found = []
    for cfg_file in Path(runs_dir).glob("*/config.yaml"):
        try:
            if (yaml.safe_load(cfg_file.read_text()) or {}).get("dataset", {}).get("name") == dataset:
                found.append((cfg_file.stat().st_mtime, cfg_file.parent.name))
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return max(found)[1] if found else None


def result_view(cfg: RunConfig) -> dict:
    """The flattened settings that decide results (what a resumed run or study must match)."""
    return {k: v for k, v in flatten(cfg).items()
            if k.split(".")[0] in RESULT_KEYS and k not in NOT_RESULT_KEYS}


def claim(cfg: RunConfig, resume: bool) -> Path:
    """Create the run folder (or check a resumed one matches) and write config.yaml."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    saved = run_dir / "config.yaml"
    if saved.exists():
        if not resume:
            raise RunFolderError(f"{run_dir} already holds a run: pass --resume to continue it, "
                                 f"or --name to start another")
        old, new = result_view(load_yaml(saved)), result_view(cfg)
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]
        if diff:
            raise RunFolderError(f"--resume {run_dir}: the settings differ from the saved "
                                 f"config.yaml, so finished splits would not be comparable:\n  "
                                 + "\n  ".join(diff))
    elif resume:
        raise RunFolderError(f"--resume: no run at {run_dir}")
    atomic_write_text(saved, dump_yaml(cfg))
    return run_dir


def check_same_data(run_dir: Path, table: pd.DataFrame, folds: np.ndarray, fingerprint: str) -> None:
    """A resumed run must see the clips, labels, folds and audio files its finished splits saw."""
    old_plan = read_json(run_dir / "plan.json")
    if old_plan.get("dataset_fingerprint") not in (None, fingerprint):
        raise RunFolderError(f"--resume {run_dir}: the dataset changed since this run started (a file, "
                             f"a label or the clip list differs); start a new run")
    path = run_dir / "folds.csv"
    if path.exists():
        old = pd.read_csv(path, dtype={"clip": str})
        for col, new in (("clip", table["clip"]), ("label", table["label"]), ("fold", folds)):
            if old[col].tolist() != list(new):
                raise RunFolderError(f"--resume {path}: the fold plan's {col} column changed since "
                                     f"this run started; start a new run")


def write_folds(run_dir: Path, table: pd.DataFrame, folds: np.ndarray) -> None:
    """folds.csv, before any training."""
    plan = table[["clip", "path", "label", "class"]].assign(fold=folds, group=table.get("group"))
    atomic_write_csv(run_dir / "folds.csv", plan)


def split_dir(run_dir: Path, index: int) -> Path:
    return run_dir / "splits" / str(index)


def is_done(run_dir: Path, index: int) -> bool:
    return (split_dir(run_dir, index) / "DONE").exists()


def write_split(run_dir: Path, index: int, info: dict, history: list[dict],
                predictions: pd.DataFrame | None) -> None:
    folder = split_dir(run_dir, index)
    if predictions is not None:
        atomic_write_csv(folder / "predictions.csv", predictions)
    atomic_write_csv(folder / "history.csv",
                     pd.DataFrame(history, columns=["epoch", "train_loss", "val_acc", "lr"]))
    atomic_write_text(folder / "split.json", json.dumps(info, indent=1))
    atomic_write_text(folder / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
