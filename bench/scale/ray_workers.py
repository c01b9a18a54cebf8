"""`tune --workers N` and `nested --workers N`: N Optuna workers as Ray tasks on one study's storage.

The driver checks the settings, prepares the data (the cache built once) and opens the study (its
schema and settings), then starts the workers; each runs `tune.search` on the storage over data it
prepares on its node (the dataset path and cache there), with its own sampler seed, and they stop
together at exactly --trials counted trials (bench/drivers/study.py). The driver writes the study's outputs
at the end. Stopped from outside (Ctrl-C, SIGTERM), it records its workers' running trials as
interrupted and closes their MLflow runs at once.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import replace
from pathlib import Path

from bench.core.config import ConfigError
from bench.scale.ray_engine import (
    RETRIES,
    check_fits,
    check_least,
    default_cpus,
    gpus_per_task,
    resources,
    session,
    task_result,
)


def study_worker(cfg, tune, space, folder, inner_fold, parent_run, trial_lines: bool, threads: int) -> int:
    """One Optuna worker: `tune.search`, the loop `tune` runs, on the shared study until it holds
    --trials counted trials, over the data prepared here (the dataset path and cache on this node;
    nested CV: the inner splits of outer fold `inner_fold`); the counted trials it ran."""
    import torch

    from bench.drivers.prepare import prepare
    from bench.tracking.tracker import Tracker
    from bench.drivers.tune import search

    torch.set_num_threads(threads)
    prepared = prepare(cfg, progress=False, tracking=False)
    if inner_fold is not None:
        from bench.drivers.nested import inner_prepared

        prepared = inner_prepared(prepared, inner_fold, cfg.protocol.val)
    tracker = Tracker(cfg.tracking, experiment=cfg.dataset.name)
    return search(
        cfg,
        tune,
        space,
        prepared,
        folder,
        tracker=tracker,
        parent_run=parent_run,
        progress=False,
        trial_lines=trial_lines,
    ).added


class StudyWorkers:
    """N Optuna workers as Ray tasks on one study's storage, each asking for `cpus` cores (its torch
    threads) and `gpus` of a GPU. They stop together at exactly --trials counted trials
    (`study.holding`). A worker whose process dies is started again by Ray; the trial it was running
    is marked failed by Optuna's heartbeat and retried by a worker (`study.RetryStale`)."""

    def __init__(self, workers: int, address: str | None = None, cpus: int | None = None, gpus: float | None = None):
        if workers < 1:
            raise ConfigError(f"--workers {workers}: at least 1")
        self.workers, self.address, self.cpus, self.gpus = workers, address, cpus, gpus

    flags = "--worker-cpus/--threads and --worker-gpus"

    def check(self, cfg, device) -> None:
        """Before anything is written (Ray connected): the least a worker asks for fits a node."""
        check_least(self, cfg, device)

    def search(
        self,
        cfg,
        tune,
        space,
        folder,
        device,
        *,
        parent_run: str | None = None,
        inner_fold: int | None = None,
        trial_lines: bool = False,
        sole: bool = False,
    ):
        """`tune.search` of `cfg` in `folder` by the workers; the study's outputs (trials.csv,
        best.yaml, plots, report.md) written here at the end. The study is opened here first: its
        schema and settings exist before any worker starts. `sole`: no one else runs the study
        (`tune.search`): a trial found running was interrupted."""
        from bench.drivers.tune import StudyResult, counted, open_study, optuna_quiet, write_outputs

        cfg, tune = absolute(cfg, tune)  # a Ray worker starts in a folder of Ray's own
        folder = Path(folder).expanduser().resolve()
        cpus = self.cpus or cfg.train.threads or default_cpus(self.address, self.workers)
        with session(self.address) as ray:
            _check_shared_storage(ray, cfg, tune)
            gpus = gpus_per_task(self.gpus, device)
            check_fits(ray, cpus, gpus, self.flags)
            _open_first(cfg, tune, space, folder, sole)
            task = ray.remote(study_worker).options(
                num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False
            )
            print(
                f"ray: {self.workers} Optuna worker(s), {cpus} CPU(s)"
                + (f" and {gpus:g} GPU" if gpus else "")
                + f" each, on {resources(ray)}; study {tune.study}, {tune.trials} trials",
                file=sys.stderr,
            )
            tune = replace(tune, owner=uuid.uuid4().hex)  # on their trials: whose to close if stopped
            refs = [
                task.remote(cfg, replace(tune, worker=i), space, folder, inner_fold, parent_run, trial_lines, cpus)
                for i in range(self.workers)
            ]  # each its own sampler seed
            try:
                for i, ref in enumerate(refs):
                    task_result(ray, ref, f"Optuna worker {i + 1}", "the same command continues the study")
            except BaseException:
                _stop(ray, refs)
                _abandoned(cfg, tune, space, folder)
                raise

        with optuna_quiet():
            study = open_study(cfg, tune, space, folder)
            write_outputs(study, folder, cfg, plots=True)
        added = ran_by(study, tune.owner, self.workers)
        print(f"ray: the workers ran {' + '.join(map(str, added))} counted trial(s)", file=sys.stderr)
        return StudyResult(study, folder, sum(added), counted(study))


def _check_shared_storage(ray, cfg, tune) -> None:
    """On a Ray cluster of several nodes, no SQLite file for the study or MLflow: one machine's."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    local = [
        what
        for what, url in (
            ("--storage", tune.storage or "sqlite:"),
            ("--tracking-uri", cfg.tracking.mlflow and cfg.tracking.tracking_uri),
        )
        if url and str(url).startswith("sqlite:")
    ]
    if nodes > 1 and local:
        raise ConfigError(
            f"{' and '.join(local)}: a SQLite file is one machine's, and this Ray "
            f"cluster has {nodes} nodes: give a server every node reaches "
            f"(--storage postgresql://..., --tracking-uri http://<mlflow server>)"
        )


def _open_first(cfg, tune, space, folder: Path, sole: bool) -> None:
    """The study opened (its schema and settings) before any worker starts; `sole`: a trial found
    running was interrupted. A failed start leaves no study folder behind, as `tune` alone."""
    from bench.drivers.study import abandon
    from bench.tracking.tracker import Tracker
    from bench.drivers.tune import open_study, optuna_quiet

    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with optuna_quiet():
            study = open_study(cfg, tune, space, folder)
            if sole:
                abandon(study, None, Tracker(cfg.tracking, experiment=cfg.dataset.name))
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def ran_by(study, owner: str, workers: int) -> list[int]:
    """The counted trials in `study` that each of `owner`'s workers ran, from the study itself:
    a worker Ray started again after a kill returns only what its last start ran, and the trial
    it was killed in is counted by whichever worker ran its retry."""
    from bench.drivers.study import counts

    ran = [0] * workers
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("owner") == owner and counts(t) and t.user_attrs.get("worker") in range(workers):
            ran[t.user_attrs["worker"]] += 1
    return ran


def _stop(ray, refs) -> None:
    """The workers still running (Ctrl-C, another worker failed), killed."""
    for ref in refs:
        ray.cancel(ref, force=True)


def _abandoned(cfg, tune, space, folder) -> None:
    """After the workers were stopped: the trials they were running failed as interrupted (not
    counted) and their MLflow runs and the study run closed KILLED, now rather than after the
    heartbeat's grace (a `tune` alone does the same for its trial on Ctrl-C)."""
    from bench.drivers.study import abandon
    from bench.tracking.tracker import Tracker
    from bench.drivers.tune import open_study, optuna_quiet, study_run_key

    with optuna_quiet():
        study = open_study(cfg, tune, space, folder)
    tracker = Tracker(cfg.tracking, experiment=cfg.dataset.name)
    stopped = abandon(study, tune.owner, tracker)
    if tracker.enabled:
        tracker.end(study.user_attrs.get(study_run_key(tracker)), "KILLED")
    if stopped:
        print(f"trial(s) {', '.join(map(str, stopped))}: interrupted with their workers (not counted)", file=sys.stderr)


def absolute(cfg, tune):
    """`cfg` and `tune` with their paths absolute, as the driver means them."""
    from bench.core.config import merge
    from bench.tracking.store import sqlite_path

    def sqlite(url):  # a relative SQLite file (MLflow's default sqlite:///mlflow.db) made absolute
        path = sqlite_path(url) if url else None
        if path is None or path.is_absolute():
            return url
        query = url.partition("?")[2]
        return f"sqlite:///{path.resolve()}" + (f"?{query}" if query else "")

    paths = {
        "runs_dir": str(Path(cfg.runs_dir).expanduser().resolve()),
        "tracking.tracking_uri": sqlite(cfg.tracking.tracking_uri),
    }
    for key, value in (
        ("cache_dir", cfg.cache_dir),
        ("dataset.root", cfg.dataset.root),
        ("dataset.groups_csv", cfg.dataset.groups_csv),
    ):
        if value:
            paths[key] = str(Path(value).expanduser().resolve())
    return merge(cfg, paths), replace(
        tune, storage=sqlite(tune.storage), space=tune.space and str(Path(tune.space).expanduser().resolve())
    )


def tune_workers(cfg, tune, workers: StudyWorkers, progress: bool = True):
    """`tune --workers N`: the study checked and the data prepared here (every refusal before a
    worker starts; the cache built once), then `workers.search`, one line per finished trial."""
    from bench.drivers.prepare import prepare
    from bench.drivers.tune import check_study, study_folder

    cfg, tune, space = check_study(cfg, tune)
    device = prepare(cfg, progress=progress).device
    with session(workers.address):
        return workers.search(cfg, tune, space, study_folder(cfg, tune), device, trial_lines=True)
