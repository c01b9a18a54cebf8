"""Ray as the execution engine: `kfold --executor ray` (split jobs as Ray tasks) and `tune --workers N`
(Optuna workers as Ray tasks on one shared study storage).

The driver stays the one owner of the run folder. It prepares the data (manifest, cache, fold plan:
all checked), computes each feature bank once, and puts it in Ray's object store once; a task gets
the bank (zero-copy on the same node, shipped by Ray to other nodes: no shared file system and no
dataset on the workers), trains one split with `cv.fit_job` and returns the fitted split (the chosen
weights, history, test probabilities). The driver writes it through `cv.run_split` (DONE last) and
mirrors it to MLflow, as each task finishes. A task whose worker process dies is retried by Ray
(`max_retries`) and trains its split again from scratch; a split whose outputs were written is
never trained again, also after the driver is killed (`--resume`).

Ray is an optional extra (`pip install -c constraints.txt -e '.[ray]'`). Without an address Ray
starts here on loopback with the cores (and GPUs) it finds; `--ray-address` (or RAY_ADDRESS) joins a
cluster started with `ray start`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import ConfigError

INSTALL = "pip install -c constraints.txt -e '.[ray]'"
RETRIES = 3  # a split's task is started again this often when its worker process dies


def require_ray():
    """Ray, imported; one clear line when it is not installed."""
    # every worker's lines shown as printed: Ray would fold similar ones ("[repeated 4x across cluster]")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not sys.stdout.isatty():  # no colour codes in a log file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray and --workers need Ray, which is not installed: {INSTALL}") from None
    return ray


@contextlib.contextmanager
def session(address: str | None = None, cpus: int | None = None) -> Iterator[object]:
    """Ray, connected: to `address` (or RAY_ADDRESS) when given, else a local Ray on loopback with
    `cpus` (default: the cores here), shut down at the end. An already connected Ray is used as is."""
    ray = require_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _answers(address)
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(logging_level=logging.ERROR, log_to_driver=True)  # not its token notice
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     **quiet)  # a new Ray here, even when `ray start` left one running
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ConfigError(f"cannot start or join {where}: {str(e).strip().splitlines()[0]}") from None
    finally:  # Ray installs its own: SIGTERM must still end a run the way Ctrl-C does (cli.py)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


def _answers(address: str) -> None:
    """Refuse, in one line, an address where nothing listens (ray.init would retry for minutes)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if address == "auto" or not port.isdigit():
        return  # "auto" (a `ray start` on this machine), or a form Ray itself rejects at once
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); start "
                          f"the cluster's head with `ray start --head`, or leave --ray-address out "
                          f"for a local Ray") from None


class EngineError(RuntimeError):
    """A Ray task that could not be completed (its worker died too often): one line, exit 2."""


def check_fits(ray, cpus: float, gpus: float, flags: str) -> None:
    """Refuse a task that no live node can hold: Ray would keep it pending forever, silently."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise ConfigError(f"{flags}: each task asks for {cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")
                      + f", and the largest Ray node has {largest.get('CPU', 0):g} CPU(s) and "
                      f"{largest.get('GPU', 0):g} GPU(s): the tasks would wait forever; ask for less")


def split_job(job, bank: np.ndarray, labels: np.ndarray, rows: np.ndarray, n_classes: int, threads: int):
    """One split job in a Ray worker: the fitted split (weights on the CPU) and its seconds."""
    import torch

    from .cv import fit_job
    from .train import resolve_device
    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # the object store's array is read-only: the bank is only read
        warnings.simplefilter("ignore", UserWarning)
        features = torch.from_numpy(bank)
    features = features.to(resolve_device(job.cfg.train.device))  # a GPU when Ray gave this task one
    result, seconds = fit_job(job, features, labels, rows, n_classes)
    result.state = {k: v.detach().cpu() for k, v in result.state.items()}
    result.mean, result.std = result.mean.detach().cpu(), result.std.detach().cpu()
    return result, seconds


class RayEngine:
    """`run_cv`'s engine (`cv.local_jobs`'s signature): the split jobs as Ray tasks, each asking for
    `cpus` cores and `gpus` of a GPU (a share such as 0.25 lets four small splits share one)."""

    def __init__(self, address: str | None = None, cpus: int | None = None, gpus: float | None = None):
        self.address, self.cpus, self.gpus = address, cpus, gpus
        self.setup: str | None = None  # the tasks' threads, once they are started (run.json)

    def check(self, cfg, device) -> None:
        """Before anything is written (Ray connected): the least a task asks for fits a node."""
        with session(self.address) as ray:
            check_fits(ray, self.cpus or cfg.train.threads or 1, _gpus(self.gpus, device),
                       "--split-cpus/--threads and --split-gpus")

    def __call__(self, jobs, prepared, folder, tracker, parent_run, progress, resume):
        if not jobs:
            return
        from .cv import run_split
        cfg = jobs[0].cfg
        cpus = self.cpus or cfg.train.threads or default_cpus(self.address, len(jobs))
        gpus = _gpus(self.gpus, prepared.device)
        threads = cfg.train.threads or cpus
        self.setup = f"torch threads: {threads} in each Ray task ({cpus} CPU(s) each)"
        with session(self.address) as ray:
            check_fits(ray, cpus, gpus, "--split-cpus/--threads and --split-gpus")
            task = ray.remote(split_job).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES,
                                                 retry_exceptions=False)
            banks: dict[str, object] = {}  # one object per feature config, put once
            labels = ray.put(prepared.labels)
            pending = {}
            for job in jobs:
                key = repr((job.cfg.audio, job.cfg.features))
                if key not in banks:
                    banks[key] = ray.put(prepared.bank(job.cfg, progress).detach().cpu().numpy())
                pending[task.remote(job, banks[key], labels, prepared.plan.rows,
                                    len(prepared.dataset.classes), threads)] = job
            print(f"ray: {len(jobs)} split job(s), {cpus} CPU(s)" + (f" and {gpus:g} GPU" if gpus else "")
                  + " each, on " + _resources(ray), file=sys.stderr)

            def save(ref):
                job = pending.pop(ref)
                fitted = _result(ray, ref, f"split {job.split.index}", "kfold --resume continues the run")
                return job, run_split(job, prepared, folder, tracker, parent_run, False, resume, fitted=fitted)

            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    yield save(done[0])
            except BaseException:  # a failed split, Ctrl-C: the splits already trained are kept
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in ready:
                    with contextlib.suppress(Exception):
                        save(ref)
                raise
            finally:
                for ref in pending:  # the others stop
                    ray.cancel(ref, force=True)


def _gpus(asked: float | None, device) -> float:
    """GPUs per task: as asked, else one when training on CUDA."""
    return asked if asked is not None else (1.0 if device.type == "cuda" else 0.0)


def default_cpus(address: str | None, tasks: int) -> int:
    """Cores (torch threads) per task unless given: on a local Ray, this machine's cores split
    between the tasks (at least one each); on a cluster, one (its nodes' cores are not known here)."""
    from .threads import threads_per_worker
    return 1 if address or os.environ.get("RAY_ADDRESS") else threads_per_worker(tasks)


def _resources(ray) -> str:
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return (f"{nodes} node(s) with {total.get('CPU', 0):g} CPU(s)"
            + (f" and {total['GPU']:g} GPU(s)" if total.get("GPU") else ""))


def _result(ray, ref, what: str, hint: str):
    """A task's value; the error it raised as itself (a NaN loss is the same TrainingError as in
    this process); a worker that died more than RETRIES times as one line naming `what` it ran."""
    from ray import exceptions as rex
    try:
        return ray.get(ref)
    except rex.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):  # chained: the worker's traceback stays in the report
            raise cause from e
        raise
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.OutOfMemoryError) as e:
        raise EngineError(f"{what}: its Ray worker died {RETRIES + 1} times ({type(e).__name__}); "
                          f"finished work is kept: {hint}") from None


# ---- tune --workers N, nested --workers N ----------------------------------------------------

def study_worker(cfg, tune, space, folder, inner_fold, parent_run, trial_lines: bool, threads: int) -> int:
    """One Optuna worker: `tune.search`, the loop `tune` runs, on the shared study until it holds
    --trials counted trials, over the data prepared here (the dataset path and cache on this node;
    nested CV: the inner splits of outer fold `inner_fold`); the counted trials it ran."""
    import torch

    from .prepare import prepare
    from .tracking import Tracker
    from .tune import search
    torch.set_num_threads(threads)
    prepared = prepare(cfg, progress=False, tracking=False)
    if inner_fold is not None:
        from .nested import inner_prepared
        prepared = inner_prepared(prepared, inner_fold, cfg.protocol.val)
    tracker = Tracker(cfg.tracking, experiment=cfg.dataset.name)
    return search(cfg, tune, space, prepared, folder, tracker=tracker, parent_run=parent_run,
                  progress=False, trial_lines=trial_lines).added


class StudyWorkers:
    """N Optuna workers as Ray tasks on one study's storage, each asking for `cpus` cores (its torch
    threads) and `gpus` of a GPU. They stop together at exactly --trials counted trials
    (`tune.ahead_of`). A worker whose process dies is started again by Ray; the trial it was running
    is marked failed by Optuna's heartbeat and retried by a worker (`RetryFailedTrialCallback`)."""

    def __init__(self, workers: int, address: str | None = None, cpus: int | None = None,
                 gpus: float | None = None):
        if workers < 1:
            raise ConfigError(f"--workers {workers}: at least 1")
        self.workers, self.address, self.cpus, self.gpus = workers, address, cpus, gpus

    def check(self, cfg, device) -> None:
        """Before anything is written (Ray connected): the least a worker asks for fits a node."""
        with session(self.address) as ray:
            check_fits(ray, self.cpus or cfg.train.threads or 1, _gpus(self.gpus, device),
                       "--worker-cpus/--threads and --worker-gpus")

    def search(self, cfg, tune, space, folder, device, *, parent_run: str | None = None,
               inner_fold: int | None = None, trial_lines: bool = False):
        """`tune.search` of `cfg` in `folder` by the workers; the study's outputs (trials.csv,
        best.yaml, plots, report.md) written here at the end. The study is opened here first: its
        schema and settings exist before any worker starts."""
        from .tune import StudyResult, counted, open_study, optuna_quiet, write_outputs
        cfg, tune = absolute(cfg, tune)  # a Ray worker starts in a folder of Ray's own
        folder = Path(folder).expanduser().resolve()
        cpus = self.cpus or cfg.train.threads or default_cpus(self.address, self.workers)
        with session(self.address) as ray:
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            local = [what for what, url in (("--storage", tune.storage or "sqlite:"),
                                            ("--tracking-uri", cfg.tracking.mlflow and cfg.tracking.tracking_uri))
                     if url and str(url).startswith("sqlite:")]
            if nodes > 1 and local:
                raise ConfigError(f"{' and '.join(local)}: a SQLite file is one machine's, and this Ray "
                                  f"cluster has {nodes} nodes: give a server every node reaches "
                                  f"(--storage postgresql://..., --tracking-uri http://<mlflow server>)")
            gpus = _gpus(self.gpus, device)
            check_fits(ray, cpus, gpus, "--worker-cpus/--threads and --worker-gpus")
            created = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with optuna_quiet():
                    open_study(cfg, tune, space, folder)
            except BaseException:
                if created:  # a failed start leaves no study folder behind, as `tune` alone
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            task = ray.remote(study_worker).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES,
                                                    retry_exceptions=False)
            print(f"ray: {self.workers} Optuna worker(s), {cpus} CPU(s)" + (f" and {gpus:g} GPU" if gpus else "")
                  + f" each, on {_resources(ray)}; study {tune.study}, {tune.trials} trials", file=sys.stderr)
            tune = replace(tune, owner=uuid.uuid4().hex)  # on their trials: whose to close if stopped
            refs = [task.remote(cfg, replace(tune, worker=i), space, folder, inner_fold, parent_run,
                                trial_lines, cpus) for i in range(self.workers)]  # each its own sampler seed
            try:
                added = [_result(ray, ref, f"Optuna worker {i + 1}", "the same command continues the study")
                         for i, ref in enumerate(refs)]
            except BaseException:
                _stop(ray, refs)
                _abandoned(cfg, tune, space, folder)
                raise

        print(f"ray: the workers ran {' + '.join(map(str, added))} counted trial(s)", file=sys.stderr)
        with optuna_quiet():
            study = open_study(cfg, tune, space, folder)
            write_outputs(study, folder, cfg, plots=True)
        return StudyResult(study, folder, sum(added), counted(study))


def _stop(ray, refs) -> None:
    """The workers still running (Ctrl-C, another worker failed), killed."""
    for ref in refs:
        ray.cancel(ref, force=True)


def _abandoned(cfg, tune, space, folder) -> None:
    """After the workers were stopped: the trials they were running failed as interrupted (not
    counted) and their MLflow runs and the study run closed KILLED, now rather than after the
    heartbeat's grace (a `tune` alone does the same for its trial on Ctrl-C)."""
    from .study import abandon
    from .tracking import Tracker
    from .tune import open_study, optuna_quiet, study_run_key
    with optuna_quiet():
        study = open_study(cfg, tune, space, folder)
    tracker = Tracker(cfg.tracking, experiment=cfg.dataset.name)
    stopped = abandon(study, tune.owner, tracker)
    if tracker.enabled:
        tracker.end(study.user_attrs.get(study_run_key(tracker)), "KILLED")
    if stopped:
        print(f"trial(s) {', '.join(map(str, stopped))}: interrupted with their workers (not counted)",
              file=sys.stderr)


def absolute(cfg, tune):
    """`cfg` and `tune` with their paths absolute, as the driver means them."""
    from .config import merge

    def sqlite(url):
        if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
        return url
    paths = {"runs_dir": str(Path(cfg.runs_dir).expanduser().resolve()),
             "tracking.tracking_uri": sqlite(cfg.tracking.tracking_uri)}
    for key, value in (("cache_dir", cfg.cache_dir), ("dataset.root", cfg.dataset.root),
                       ("dataset.groups_csv", cfg.dataset.groups_csv)):
        if value:
            paths[key] = str(Path(value).expanduser().resolve())
    return merge(cfg, paths), replace(tune, storage=sqlite(tune.storage),
                                      space=tune.space and str(Path(tune.space).expanduser().resolve()))


def tune_workers(cfg, tune, workers: StudyWorkers, progress: bool = True):
    """`tune --workers N`: the study checked and the data prepared here (every refusal before a
    worker starts; the cache built once), then `workers.search`, one line per finished trial."""
    from .prepare import prepare
    from .tune import check_study, study_folder
    cfg, tune, space = check_study(cfg, tune)
    device = prepare(cfg, progress=progress).device
    with session(workers.address):
        return workers.search(cfg, tune, space, study_folder(cfg, tune), device, trial_lines=True)
