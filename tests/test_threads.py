"""The thread chooser (bench/core/threads.py): auto takes the cores that are free, read from a fake
/proc/stat; the affinity mask, an explicit --threads and OMP_NUM_THREADS are respected; workers
split the cores; `speed` and kfold say what they chose. Nothing here is timed."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.core import threads as T
from bench.core.threads import ThreadChoice, choose_threads, free_cpus, read_proc_stat, threads_per_worker

ROOT = Path(__file__).resolve().parent.parent


def fake_stat(*snapshots):
    """A /proc/stat reader returning the given {cpu: (idle, total)} snapshots in turn."""
    it = iter(snapshots)
    return lambda: next(it)


def no_sleep(_):
    pass


def test_read_proc_stat_parses_per_cpu_lines(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 4 0 6 50 2 0 0 0 0 0\ncpu1 6 0 4 50 3 0 0 0 0 0\nintr 12345 1 2\nctxt 99\n"
    )
    assert read_proc_stat(str(stat)) == {0: (52, 62), 1: (53, 63)}


def test_a_busy_core_counts_as_not_free():
    # over the interval cpu0 was idle 100 of 100 ticks, cpu1 0 of 100 (another process's loop)
    read = fake_stat({0: (0, 0), 1: (0, 0)}, {0: (100, 100), 1: (0, 100)})
    assert free_cpus(1.0, read, cpus={0, 1}, sleep=no_sleep, own_time=lambda: 0.0) == pytest.approx(1.0)


def test_own_cpu_time_counts_as_free():
    # both cores fully busy, but half a core of that was this process itself
    own = iter([10.0, 10.5])
    read = fake_stat({0: (0, 0), 1: (0, 0)}, {0: (0, 100), 1: (0, 100)})
    assert free_cpus(1.0, read, cpus={0, 1}, sleep=no_sleep, own_time=lambda: next(own)) == pytest.approx(0.5)


def test_only_the_allowed_cpus_are_read():
    # affinity {1}: cpu0 being idle does not make a core free for this process
    read = fake_stat({0: (0, 0), 1: (0, 0)}, {0: (100, 100), 1: (10, 100)})
    assert free_cpus(1.0, read, cpus={1}, sleep=no_sleep, own_time=lambda: 0.0) == pytest.approx(0.1)


def test_unreadable_stat_is_not_measurable():
    def broken():
        raise OSError("no /proc")

    assert free_cpus(0.0, broken, cpus={0, 1}, sleep=no_sleep) is None


@pytest.mark.parametrize("free, threads", [(2.0, 2), (1.85, 2), (1.6, 1), (1.0, 1), (0.3, 1), (0.0, 1)])
def test_auto_takes_one_thread_per_free_core(free, threads):
    choice = choose_threads(0, free=lambda: free, cpus=2, environ={})
    assert choice == ThreadChoice(threads, "free cores", 2, free)
    assert str(choice) == f"torch threads: {threads} (auto: {free:.1f} of 2 CPUs free)"


def test_auto_never_exceeds_the_allowed_cpus_or_the_limit():
    assert choose_threads(0, free=lambda: 8.0, cpus=4, environ={}).threads == 4
    assert choose_threads(0, free=lambda: 8.0, cpus=8, limit=3, environ={}).threads == 3
    assert choose_threads(0, free=lambda: 8.0, cpus=8, limit=1, environ={}).threads == 1


def test_auto_respects_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    measured = []
    choice = choose_threads(0, free=lambda: measured.append(1) or 5.0, environ={})
    assert choice.threads == 1 and choice.cpus == 1 and not measured  # one CPU: nothing to measure


def test_unmeasurable_load_uses_every_allowed_cpu():
    assert choose_threads(0, free=lambda: None, cpus=4, environ={}) == ThreadChoice(4, "all cores", 4)


def test_explicit_threads_win_over_everything():
    def never():
        raise AssertionError("an explicit count must not measure the load")

    assert choose_threads(3, free=never, cpus=2, environ={"OMP_NUM_THREADS": "1"}) == ThreadChoice(3, "--threads", 2)


def test_omp_num_threads_wins_over_auto():
    def never():
        raise AssertionError("OMP_NUM_THREADS set: nothing to measure")

    choice = choose_threads(0, free=never, cpus=2, environ={"OMP_NUM_THREADS": "1"})
    assert choice.threads == 1 and choice.how == "OMP_NUM_THREADS"
    assert choose_threads(0, free=lambda: 2.0, cpus=2, environ={"OMP_NUM_THREADS": "x"}).how == "free cores"


@pytest.mark.parametrize("workers, cpus, each", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_workers_split_the_cores(workers, cpus, each):
    assert threads_per_worker(workers, cpus) == each
    assert each * workers <= max(cpus, workers)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        threads_per_worker(0, 2)


def test_apply_measures_once_per_process_and_announces_changes(monkeypatch):
    calls = []

    def choose(requested, limit=None):
        calls.append(requested)
        return ThreadChoice(requested or 1, "--threads" if requested else "free cores", 2, 1.0)

    monkeypatch.setattr(T, "choose_threads", choose)
    monkeypatch.setattr(T, "_CHOSEN", None)
    monkeypatch.setattr(T, "_SET", None)
    said = []
    before = torch.get_num_threads()
    try:
        assert T.apply(0, said.append).threads == 1 and torch.get_num_threads() == 1
        T.apply(0, said.append)  # a second tune trial: neither measured nor said again
        assert calls == [0] and said == ["torch threads: 1 (auto: 1.0 of 2 CPUs free)"]
        T.apply(2, said.append)
        assert torch.get_num_threads() == 2 and said[-1] == "torch threads: 2 (--threads / train.threads)"
    finally:
        torch.set_num_threads(before)


def test_the_thread_module_imports_no_torch():
    code = "import sys, bench.core.threads; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_speed_prints_the_thread_setup(tiny_us8k_master, tmp_path, capsys):
    import cli

    args = [
        "speed",
        "--dataset",
        "us8k",
        "--root",
        str(tiny_us8k_master),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--time-box",
        "0.02",
        "--repeats",
        "1",
        "--quiet",
        "--threads",
        "1",
        "--set",
        "audio.sample_rate=8000",
        "--set",
        "audio.duration=1.0",
        "--set",
        "features.n_fft=256",
        "--set",
        "features.hop_length=128",
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "torch threads: 1 (--threads / train.threads)" in printed
    assert f"{torch.get_num_interop_threads()} inter-op" in printed and "OMP_WAIT_POLICY" in printed
