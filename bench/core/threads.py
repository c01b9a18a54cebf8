"""How many torch CPU threads a process uses: `train.threads: 0` (auto) takes the cores that are
actually free, once per process, before training starts. A leaf module: no torch at import.

Why: torch's default is one OpenMP thread per core, and its threads spin at every barrier waiting
for each other. When another process holds one of the cores, a step waits for a thread that is not
running, and the demo training fell from ~1,600 clips/s to ~30 on this 2-core machine (README,
"Busy CPU"). OpenMP's passive wait policy softens that (~200-540 clips/s) but costs a third of the
speed on an idle machine; one thread per free core keeps ~1,600 in both cases.

  choose_threads(requested)   -> ThreadChoice   what `apply` sets; `str()` is the one-line report
  apply(requested)            -> ThreadChoice   sets torch's intra-op threads (kfold, tune, speed)
  threads_per_worker(workers) -> int            W concurrent workers (Ray tasks) split the cores
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

SAMPLE_S = 0.3  # how long the CPUs' idle time is sampled
FULL = 0.8  # a core counts as free when at least this much of it was idle (0.8 of 1)


def allowed_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, cgroups' cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def read_proc_stat(path: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """{cpu: (idle, total)} in clock ticks since boot, per CPU (idle counts iowait too)."""
    out = {}
    with open(path) as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return out


def free_cpus(
    interval: float = SAMPLE_S,
    read: Callable[[], dict] = read_proc_stat,
    cpus: set[int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    own_time: Callable[[], float] = lambda: sum(os.times()[:2]),
) -> float | None:
    """How many of the allowed CPUs were idle over `interval` seconds (0.0 to their number); this
    process's own CPU time counts as free. None where it cannot be measured (no /proc/stat)."""
    try:
        cpus = cpus if cpus is not None else os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = None
    try:
        before, own = read(), own_time()
        sleep(interval)
        after, own = read(), own_time() - own
    except (OSError, ValueError, IndexError):
        return None
    cpus = [cpu for cpu in (cpus if cpus is not None else after) if cpu in before and cpu in after]
    idle = sum(after[cpu][0] - before[cpu][0] for cpu in cpus)
    ticks = sum(after[cpu][1] - before[cpu][1] for cpu in cpus)
    if ticks <= 0:
        return None
    return min(float(len(cpus)), len(cpus) * idle / ticks + max(0.0, own) / interval)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # torch intra-op threads
    how: str  # "--threads", "OMP_NUM_THREADS", "free cores", "all cores", "one CPU", "torch's setting"
    cpus: int  # CPUs this process may use
    free: float | None = None  # free CPUs measured (auto only)

    def __str__(self) -> str:
        if self.how == "free cores":
            why = f"auto: {self.free:.1f} of {self.cpus} CPUs free"
        elif self.how == "all cores":
            why = f"auto: {self.cpus} CPUs, free cores not measurable"
        elif self.how in ("one CPU", "torch's setting"):
            why = f"auto: {self.how}"
        elif self.how == "OMP_NUM_THREADS":
            why = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        else:
            why = "--threads / train.threads"
        return f"torch threads: {self.threads} ({why})"


def choose_threads(
    requested: int = 0,
    *,
    free: Callable[[], float | None] = free_cpus,
    cpus: int | None = None,
    limit: int | None = None,
    environ=os.environ,
) -> ThreadChoice:
    """`requested` > 0 (--threads, train.threads) wins; then OMP_NUM_THREADS (set by the user or by
    Ray for its tasks); otherwise one thread per allowed CPU that is free now (at least one, at
    most `limit`: `apply` passes torch's current setting, so auto never raises a count lowered
    in-process, as the tests' one-thread fixture does)."""
    cpus = cpus or allowed_cpus()
    if requested > 0:
        return ThreadChoice(requested, "--threads", cpus)
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS", cpus)
    most = min(cpus, limit or cpus)
    if most <= 1:
        return ThreadChoice(1, "one CPU" if cpus == 1 else "torch's setting", cpus)
    measured = free()
    if measured is None:
        return ThreadChoice(most, "all cores", cpus)
    return ThreadChoice(max(1, min(most, int(measured + 1 - FULL))), "free cores", cpus, measured)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Torch threads for each of `workers` processes sharing this machine's allowed CPUs (or
    `cpus`): an even split, at least one. Ray: call it in each task with the number of tasks that
    run at once on the node, then `torch.set_num_threads(...)`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, (cpus or allowed_cpus()) // workers)


_CHOSEN: ThreadChoice | None = None  # auto's choice, measured once per process
_SET: ThreadChoice | None = None  # the last choice set


def apply(requested: int = 0, announce: Callable[[str], None] | None = None) -> ThreadChoice:
    """Choose (auto: measured once per process, then kept) and set torch's intra-op threads;
    `announce` gets the one-line report when the setting changes (not at every tune trial).
    torch's inter-op pool is left at its default: training runs no inter-op work."""
    global _CHOSEN, _SET
    import torch

    if requested > 0:
        choice = choose_threads(requested)
    else:
        _CHOSEN = _CHOSEN or choose_threads(0, limit=torch.get_num_threads())
        choice = _CHOSEN
    torch.set_num_threads(choice.threads)
    if announce is not None and choice != _SET:
        announce(str(choice))
    _SET = choice
    return choice
