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
import sys
import warnings
from typing import Iterator

import numpy as np

from .config import ConfigError

INSTALL = "pip install -c constraints.txt -e '.[ray]'"
RETRIES = 3  # a split's task is started again this often when its worker process dies


def require_ray() -> None:
    """One clear line when Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None


@contextlib.contextmanager
def session(address: str | None = None, cpus: int | None = None) -> Iterator[object]:
    """Ray, connected: to `address` (or RAY_ADDRESS) when given, else a local Ray on loopback with
    `cpus` (default: the cores here), shut down at the end. An already connected Ray is used as is."""
    require_ray()
    import ray
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = dict(logging_level=logging.ERROR, log_to_driver=True)  # not its token notice
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ConfigError(f"cannot start or join {where}: {str(e).strip().splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _fit_task(job, bank: np.ndarray, labels: np.ndarray, rows: np.ndarray, n_classes: int, threads: int):
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

    def __call__(self, jobs, prepared, folder, tracker, parent_run, progress, resume):
        if not jobs:
            return
        from .cv import run_split
        cfg = jobs[0].cfg
        cpus = self.cpus or cfg.train.threads or 1
        gpus = self.gpus if self.gpus is not None else (1.0 if prepared.device.type == "cuda" else 0.0)
        with session(self.address) as ray:
            task = ray.remote(_fit_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES,
                                                 retry_exceptions=False)
            banks: dict[str, object] = {}  # one object per feature config, put once
            labels = ray.put(prepared.labels)
            pending = {}
            for job in jobs:
                key = repr((job.cfg.audio, job.cfg.features))
                if key not in banks:
                    banks[key] = ray.put(prepared.bank(job.cfg, progress).detach().cpu().numpy())
                pending[task.remote(job, banks[key], labels, prepared.plan.rows,
                                    len(prepared.dataset.classes), cfg.train.threads or cpus)] = job
            print(f"ray: {len(jobs)} split job(s), {cpus} CPU(s)" + (f" and {gpus:g} GPU" if gpus else "")
                  + " each, on " + _resources(ray), file=sys.stderr)
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    job = pending.pop(done[0])
                    fitted = _result(ray, done[0], job)
                    yield job, run_split(job, prepared, folder, tracker, parent_run, False, resume,
                                         fitted=fitted)
            finally:
                for ref in pending:  # a failed split or Ctrl-C: the others stop too
                    ray.cancel(ref, force=True)


def _resources(ray) -> str:
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return (f"{nodes} node(s) with {total.get('CPU', 0):g} CPU(s)"
            + (f" and {total['GPU']:g} GPU(s)" if total.get("GPU") else ""))


def _result(ray, ref, job):
    """A task's value; the error it raised as itself (a NaN loss is the same TrainingError as in
    this process); a worker that died more than RETRIES times as one line naming the split."""
    from ray import exceptions as rex
    try:
        return ray.get(ref)
    except rex.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError) as e:
        raise RuntimeError(f"split {job.split.index}: its Ray worker died {RETRIES + 1} times "
                           f"({type(e).__name__}); finished splits are kept: --resume continues") from None
