"""Ray for the commands: `kfold --executor ray` (split jobs as tasks) and `tune`/`nested --workers N`
(Optuna workers as tasks). Ray's flags are refused without Ray asked for, bad values and Ray's
absence before anything is written; the cluster is joined once per command and the tasks' size
checked against it before the first write.
"""

from __future__ import annotations

import argparse
import contextlib

from bench.core.config import ConfigError


def ray_check(args: argparse.Namespace, on: bool, options: tuple[str, ...], switch: str) -> None:
    """Ray's flags given without Ray asked for, or with bad values, refused; Ray's absence too."""
    if not on:
        for dest in options:
            if getattr(args, dest) is not None:
                raise ConfigError(f"--{dest.replace('_', '-')} is for {switch}")
        return
    cpus, gpus = getattr(args, options[1]), getattr(args, options[2])
    if cpus is not None and cpus < 1:
        raise ConfigError(f"--{options[1].replace('_', '-')} {cpus}: at least 1")
    if gpus is not None and not (0 <= gpus <= 1 or float(gpus).is_integer()):
        raise ConfigError(
            f"--{options[2].replace('_', '-')} {gpus}: a share of one GPU (0 to 1) or a whole number of GPUs"
        )
    from bench.scale.ray_engine import require_ray

    require_ray()


def engine(args: argparse.Namespace):
    """`run_cv`'s engine for --executor (None: in this process); Ray's absence is refused here."""
    ray_check(args, args.executor == "ray", ("ray_address", "split_cpus", "split_gpus"), "--executor ray")
    if args.executor != "ray":
        return None
    from bench.scale.ray_engine import RayEngine

    return RayEngine(args.ray_address, args.split_cpus, args.split_gpus)


def study_workers(args: argparse.Namespace):
    """`--workers N` as Ray tasks (None: this process alone); Ray's flags checked, its absence refused."""
    ray_check(args, args.workers is not None, ("ray_address", "worker_cpus", "worker_gpus"), "--workers N")
    if args.workers is None:
        return None
    from bench.scale.ray_workers import StudyWorkers

    return StudyWorkers(args.workers, args.ray_address, args.worker_cpus, args.worker_gpus)


@contextlib.contextmanager
def ray_connected(runner, cfg):
    """Ray connected for the whole command when `runner` (RayEngine, StudyWorkers) is set, and the
    size of its tasks checked against the cluster: a refusal comes before anything is written."""
    if runner is None:
        yield
        return
    from bench.scale.ray_engine import session
    from bench.train.fit import resolve_device

    with session(runner.address):
        runner.check(cfg, resolve_device(cfg.train.device))
        yield
