"""`tune`'s own options and the checks that refuse them before anything is written.

`TuneConfig` (what `tune` and `nested` share: trials, study, storage, search space, seeds, pruning,
heartbeat), `check_tune`, `check_validation`, `parse_duration` (--timeout) and `check_study`
(the config and space of a study, checked). The study loop: bench/drivers/tune.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.core.config import ConfigError, RunConfig, merge, plain_name
from bench.drivers.space import check_space, load_space

DEFAULT_SPLITS = [1, 2, 3]  # tune's splits unless --splits: all 10 would train 10 models a trial
WORKER_SEEDS = 1_000_003  # sampler seeds between `--workers` workers: far apart, as trial counts go


@dataclass
class TuneConfig:
    trials: int = 20  # trials in the study in total; a re-run adds trials up to this count
    study: str | None = None  # study name; None: the dataset's name
    storage: str | None = None  # Optuna storage URL; None: SQLite in runs/tune-<study>/study.db
    timeout: float | None = None  # seconds after which this invocation starts no new trial
    space: str | None = None  # YAML file of search-space entries replacing space.DEFAULT_SPACE's
    seed: int = 0  # TPE seed (plus the number of trials already in the study, so none repeat)
    worker: int = 0  # this worker's number among workers started together (`--workers N`: 0..N-1)
    owner: str | None = None  # `--workers N`: their driver's token on the trials they run (`study.abandon`)
    prune_startup: int = 3  # trials that must complete before any trial is pruned
    prune_warmup: int = 0  # splits a trial finishes before it can be pruned
    heartbeat: int = 60  # seconds between a running trial's heartbeats; 3x this without one: its
    # worker is taken for dead, the trial failed (not counted) and retried with the same params


def check_validation(cfg: RunConfig) -> None:
    if cfg.protocol.val != "next":
        raise ConfigError("tune optimises validation accuracy: it needs --val next")


def check_tune(tune: TuneConfig) -> None:
    """Refuse search options Optuna would reject mid-run (after the run folder and MLflow runs exist)
    or that would silently mean something else (a negative index as the warm-up)."""
    if tune.trials < 1:
        raise ConfigError(f"--trials {tune.trials}: at least 1")
    if tune.prune_startup < 0:
        raise ConfigError(f"--prune-startup {tune.prune_startup}: 0 or more trials")
    if tune.prune_warmup < 0:
        raise ConfigError(f"--prune-warmup {tune.prune_warmup}: 0 or more splits")
    if tune.heartbeat < 1:
        raise ConfigError(f"--heartbeat {tune.heartbeat}: 1 or more seconds")
    if not 0 <= tune.seed < 2**31:  # TPE seeds numpy (0 .. 2**32 - 1) with seed + trials so far
        raise ConfigError(f"--sampler-seed {tune.seed}: between 0 and {2**31 - 1}")


def parse_duration(text: str | None) -> float | None:
    """'3h', '90m', '45s' or plain seconds -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"--timeout {text!r}: expected a positive number of seconds, or 90m, 3h, 1d")
    return seconds


def check_study(cfg: RunConfig, tune: TuneConfig) -> tuple[RunConfig, TuneConfig, dict[str, Any]]:
    """The study's config (tune's default splits), its options (the study named) and search space,
    checked: whatever `tune` refuses, refused before anything is written."""
    cfg = merge(cfg, {"splits": cfg.splits or DEFAULT_SPLITS})
    check_tune(tune)
    check_validation(cfg)
    if cfg.protocol.repeats > 1:  # best.yaml would carry them to kfold and nested unasked
        raise ConfigError(
            "tune: protocol.repeats is for kfold; tune on one fold plan, then score "
            "best.yaml with `kfold --config best.yaml --repeats R`"
        )
    space = load_space(tune.space)
    check_space(space, cfg)
    if tune.storage and not tune.storage.startswith("sqlite"):  # a database server that refuses: refused
        open_storage(tune.storage, tune.heartbeat).engine.dispose()  # before the cache or MLflow is written
    return cfg, replace(tune, study=plain_name(tune.study or cfg.dataset.name, "--study")), space


def open_storage(url: str, heartbeat: int):
    """The study's Optuna storage at `url`, or a one-line ConfigError saying why it cannot be opened
    (a malformed URL, a missing driver, a server that refuses), its password redacted."""
    from bench.core.redact import redact
    from bench.drivers.study import rdb_storage

    try:
        return rdb_storage(url, heartbeat)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"--storage {redact(url)}: cannot open the study storage ({type(e).__name__}: "
            f"{redact(first)}); give a reachable database URL, or leave --storage out"
        ) from None


def study_folder(cfg: RunConfig, tune: TuneConfig) -> Path:
    return Path(cfg.runs_dir) / f"tune-{tune.study}"
