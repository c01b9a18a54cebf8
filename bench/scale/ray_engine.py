"""Ray as the execution engine: `kfold --executor ray` (split jobs as Ray tasks), and what
`tune --workers N` (bench/scale/ray_workers.py: Optuna workers as Ray tasks) shares with it.

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
import signal
import socket
import sys
import warnings
from typing import Iterator

import numpy as np

from bench.core.config import ConfigError
from bench.core.errors import FoldbenchError

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
            ray.init(
                address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet
            )  # a new Ray here, even when `ray start` left one running
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
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({e.strerror or e}); start "
            f"the cluster's head with `ray start --head`, or leave --ray-address out "
            f"for a local Ray"
        ) from None


class EngineError(FoldbenchError, RuntimeError):
    """A Ray task that could not be completed (its worker died too often): one line, exit 2."""


def check_fits(ray, cpus: float, gpus: float, flags: str) -> None:
    """Refuse a task that no live node can hold: Ray would keep it pending forever, silently."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise ConfigError(
        f"{flags}: each task asks for {cpus:g} CPU(s)"
        + (f" and {gpus:g} GPU(s)" if gpus else "")
        + f", and the largest Ray node has {largest.get('CPU', 0):g} CPU(s) and "
        f"{largest.get('GPU', 0):g} GPU(s): the tasks would wait forever; ask for less"
    )


def split_job(job, bank: np.ndarray, labels: np.ndarray, rows: np.ndarray, n_classes: int, threads: int):
    """One split job in a Ray worker: the fitted split (weights on the CPU) and its seconds."""
    import torch

    from bench.drivers.kfold import fit_job
    from bench.train.fit import resolve_device

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

    flags = "--split-cpus/--threads and --split-gpus"

    def check(self, cfg, device) -> None:
        """Before anything is written (Ray connected): the least a task asks for fits a node."""
        check_least(self, cfg, device)

    def __call__(self, jobs, prepared, folder, tracker, parent_run, progress, resume):
        if not jobs:
            return
        from bench.drivers.kfold import run_split

        cfg = jobs[0].cfg
        cpus = self.cpus or cfg.train.threads or default_cpus(self.address, len(jobs))
        gpus = gpus_per_task(self.gpus, prepared.device)
        threads = cfg.train.threads or cpus
        self.setup = f"torch threads: {threads} in each Ray task ({cpus} CPU(s) each)"
        with session(self.address) as ray:
            check_fits(ray, cpus, gpus, self.flags)
            task = ray.remote(split_job).options(
                num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False
            )
            banks: dict[str, object] = {}  # one object per feature config, put once
            labels = ray.put(prepared.labels)
            pending = {}
            for job in jobs:
                key = repr((job.cfg.audio, job.cfg.features))
                if key not in banks:
                    banks[key] = ray.put(prepared.bank(job.cfg, progress).detach().cpu().numpy())
                pending[
                    task.remote(job, banks[key], labels, prepared.plan.rows, len(prepared.dataset.classes), threads)
                ] = job
            print(
                f"ray: {len(jobs)} split job(s), {cpus} CPU(s)"
                + (f" and {gpus:g} GPU" if gpus else "")
                + " each, on "
                + resources(ray),
                file=sys.stderr,
            )

            def save(ref):
                job = pending.pop(ref)
                fitted = task_result(ray, ref, f"split {job.split.index}", "kfold --resume continues the run")
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


def check_least(runner, cfg, device) -> None:
    """The least one of `runner`'s tasks (RayEngine, StudyWorkers) asks for fits a live node."""
    with session(runner.address) as ray:
        check_fits(ray, runner.cpus or cfg.train.threads or 1, gpus_per_task(runner.gpus, device), runner.flags)


def gpus_per_task(asked: float | None, device) -> float:
    """GPUs per task: as asked, else one when training on CUDA."""
    return asked if asked is not None else (1.0 if device.type == "cuda" else 0.0)


def default_cpus(address: str | None, tasks: int) -> int:
    """Cores (torch threads) per task unless given: on a local Ray, this machine's cores split
    between the tasks (at least one each); on a cluster, one (its nodes' cores are not known here)."""
    from bench.core.threads import threads_per_worker

    return 1 if address or os.environ.get("RAY_ADDRESS") else threads_per_worker(tasks)


def resources(ray) -> str:
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node(s) with {total.get('CPU', 0):g} CPU(s)" + (
        f" and {total['GPU']:g} GPU(s)" if total.get("GPU") else ""
    )


def task_result(ray, ref, what: str, hint: str):
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
        raise EngineError(
            f"{what}: its Ray worker died {RETRIES + 1} times ({type(e).__name__}); finished work is kept: {hint}"
        ) from None
