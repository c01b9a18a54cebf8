"""Real `cli.py kfold` processes killed with SIGKILL and racing for one run folder (issue 8).

Every process runs WRAPPER: it imports foldbench, optionally waits at a start barrier, then calls
`cli.main`. Two test-only hooks make the kill points exact instead of timing-dependent: a process can be
held (blocked, alive) inside split K's training after its first epoch (`epoch:K`, the split's MLflow run
is open) or right after split K's DONE is written (`done:K`). The test kills the held process with
SIGKILL. Every call to `fit_split` is appended to a per-process log, so the tests count which splits
each process trained. The wrapper changes nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.drivers.kfold import run_cv
from bench.core.runfolder import RunFolder
from tests.conftest import FAST, fast_config

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 240  # seconds; generous bound for any wait on a shared 2-core machine, never a timing assertion
EPOCHS = 2

WRAPPER = r"""
import os, sys, time
from pathlib import Path
import cli, bench.drivers.kfold as cv, bench.core.errors  # noqa: F401  (everything heavy imported before the barrier)
from bench.core.runfolder import RunFolder
env = os.environ
hold_at = env.get("FB_HOLD", "")


def note(text):
    if env.get("FB_LOG"):
        with open(env["FB_LOG"], "a") as f:
            f.write(f"{os.getpid()} {text}\n")


def hold(what):
    Path(env["FB_HOLD_MARK"] + str(os.getpid())).write_text(what)
    while not (env.get("FB_RELEASE") and os.path.exists(env["FB_RELEASE"])):
        time.sleep(0.01)


real_fit = cv.fit_split


def fit(*a, **kw):
    k = kw["seed"] - a[6].train.seed
    note(f"train {k}")
    inner = kw.get("on_epoch")

    def on_epoch(epoch, *metrics):
        if inner is not None:
            inner(epoch, *metrics)
        if hold_at == f"epoch:{k}":
            hold(f"split {k} epoch {epoch}")
    kw["on_epoch"] = on_epoch
    return real_fit(*a, **kw)


cv.fit_split = fit
real_seal = RunFolder.seal


def seal(self, index):
    real_seal(self, index)
    if hold_at == f"done:{index}":
        hold(f"after DONE {index}")


RunFolder.seal = seal
if env.get("FB_BARRIER"):
    Path(env["FB_BARRIER"] + ".ready." + str(os.getpid())).touch()
    while not os.path.exists(env["FB_BARRIER"]):
        time.sleep(0.002)
sys.exit(cli.main(sys.argv[1:]))
"""


# ---- helpers ----


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One waveform cache for every process of this module (built once, by the reference run)."""
    return tmp_path_factory.mktemp("kill-cache")


@pytest.fixture(scope="module")
def reference(tiny_us8k_master, shared_cache, tmp_path_factory) -> dict:
    """scores.json of an uninterrupted run of the config every process here uses."""
    import torch

    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("reference")
    cfg = fast_config(
        tmp,
        tiny_us8k_master,
        name="reference",
        **{"train.epochs": EPOCHS, "train.threads": 1, "cache_dir": str(shared_cache)},
    )
    try:
        result = run_cv(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"scores": result.scores, "run": result.run_dir}


@pytest.fixture
def procs():
    """Processes started by a test; any still alive at its end is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=60)
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()


def kfold_args(tmp_path, root, cache, name, *extra, tracking: str | None = None) -> list[str]:
    args = [
        "kfold",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(cache),
        "--name",
        name,
        "--epochs",
        str(EPOCHS),
        "--threads",
        "1",
        "--quiet",
    ]
    for key, value in FAST.items():
        if key not in ("tracking.mlflow", "train.epochs"):
            args += ["--set", f"{key}={value}"]
    args += ["--tracking-uri", tracking, "--experiment", "kill"] if tracking else ["--no-mlflow"]
    return [*args, *extra]


def start(procs, tmp_path, args, tag, **env) -> subprocess.Popen:
    """Start WRAPPER with `args`; FB_LOG is tmp_path/<tag>.log, hold marks are tmp_path/held-<pid>."""
    full_env = {**os.environ, "FB_LOG": str(tmp_path / f"{tag}.log"), "FB_HOLD_MARK": str(tmp_path / "held-"), **env}
    p = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    return p


def wait_until(condition, procs_alive=(), what="") -> None:
    """Poll `condition` until it holds; fail at once if a process that must stay alive exits."""
    end = time.monotonic() + DEADLINE
    while not condition():
        for p in procs_alive:
            if p.poll() is not None:
                out, err = p.communicate()
                pytest.fail(f"process exited ({p.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def held(tmp_path) -> list[Path]:
    return sorted(tmp_path.glob("held-*"))


def kill_held(tmp_path, p: subprocess.Popen) -> None:
    """Wait until `p` is held at its hook, then SIGKILL it."""
    wait_until(lambda: (tmp_path / f"held-{p.pid}").exists(), [p], "the hold point")
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=DEADLINE)
    assert p.returncode == -signal.SIGKILL
    (tmp_path / f"held-{p.pid}").unlink()  # only live processes' marks count in `held`


def finish(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=DEADLINE)
    return p.returncode, out, err


def trained(tmp_path, tag) -> dict[int, list[int]]:
    """pid -> the splits it called fit_split for, in order."""
    log = tmp_path / f"{tag}.log"
    found: dict[int, list[int]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        pid, word, k = line.split()
        assert word == "train"
        found.setdefault(int(pid), []).append(int(k))
    return found


def done_markers(run: Path) -> dict[int, tuple[int, int, str]]:
    """split -> (inode, mtime_ns, content) of its DONE; an atomic rewrite always makes a new inode."""
    found = {}
    for done in (run / "splits").glob("*/DONE"):
        st = done.stat()
        found[int(done.parent.name)] = (st.st_ino, st.st_mtime_ns, done.read_text())
    return found


def assert_complete_and_equal(run: Path, reference: dict) -> None:
    """10 verified splits, scores.json built from their predictions, per-fold scores = the reference."""
    folder = RunFolder(run)
    assert folder.done() == list(range(1, 11))
    assert [k for k in range(1, 11) if folder.problem(k) is not None] == []
    scores = json.loads((run / "scores.json").read_text())
    for row in scores["per_fold"]:
        pred = pd.read_csv(run / "splits" / str(row["split"]) / "predictions.csv")
        assert row["accuracy"] == pytest.approx((pred["label"] == pred["pred"]).mean(), abs=1e-12)
        ref = pd.read_csv(reference["run"] / "splits" / str(row["split"]) / "predictions.csv")
        pd.testing.assert_frame_equal(pred, ref)
    assert scores["per_fold"] == reference["scores"]["per_fold"]
    assert scores["acc_mean"] == reference["scores"]["acc_mean"]


# ---- kill -9 ----


def test_kill_during_a_split_resumes_to_the_uninterrupted_scores(
    tiny_us8k_master, shared_cache, reference, tmp_path, procs
):
    args = kfold_args(tmp_path, tiny_us8k_master, shared_cache, "k")
    run = tmp_path / "runs" / "k"
    first = start(procs, tmp_path, args, "first", FB_HOLD="epoch:2")
    kill_held(tmp_path, first)  # inside split 2's training, split 1 finished
    assert trained(tmp_path, "first") == {first.pid: [1, 2]}
    before = done_markers(run)
    assert sorted(before) == [1]
    assert not (run / "splits" / "2" / "DONE").exists() and not (run / "scores.json").exists()

    code, out, err = finish(start(procs, tmp_path, [*args, "--resume"], "resume"))
    assert code == 0, err[-3000:]
    assert "over 10 folds" in out and "Traceback" not in err
    assert list(trained(tmp_path, "resume").values()) == [list(range(2, 11))]  # once each, split 1 not
    after = done_markers(run)
    assert after[1] == before[1]  # split 1's DONE untouched
    assert_complete_and_equal(run, reference)


def test_kill_right_after_a_done_skips_that_split_on_resume(tiny_us8k_master, shared_cache, reference, tmp_path, procs):
    args = kfold_args(tmp_path, tiny_us8k_master, shared_cache, "d")
    run = tmp_path / "runs" / "d"
    first = start(procs, tmp_path, args, "first", FB_HOLD="done:3")
    kill_held(tmp_path, first)  # killed the moment split 3's DONE exists
    assert trained(tmp_path, "first") == {first.pid: [1, 2, 3]}
    before = done_markers(run)
    assert sorted(before) == [1, 2, 3] and RunFolder(run).problem(3) is None

    code, out, err = finish(start(procs, tmp_path, [*args, "--resume"], "resume"))
    assert code == 0, err[-3000:]
    assert list(trained(tmp_path, "resume").values()) == [list(range(4, 11))]
    after = done_markers(run)
    assert {k: after[k] for k in (1, 2, 3)} == before  # the finished splits were skipped, DONE unchanged
    assert "training it again" not in err
    assert_complete_and_equal(run, reference)


# ---- races ----


def release_barrier(tmp_path, barrier: Path, ps: list[subprocess.Popen]) -> None:
    """Open the start barrier once every process waits at it."""
    wait_until(lambda: all(Path(f"{barrier}.ready.{p.pid}").exists() for p in ps), ps, "the barrier")
    barrier.touch()


def only_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_two_kfold_with_one_name_started_together(tiny_us8k_master, shared_cache, reference, tmp_path, procs):
    for round_ in range(4):
        name, barrier = f"race{round_}", tmp_path / f"go{round_}"
        args = kfold_args(tmp_path, tiny_us8k_master, shared_cache, name)
        pair = [start(procs, tmp_path, args, f"r{round_}", FB_BARRIER=str(barrier)) for _ in range(2)]
        release_barrier(tmp_path, barrier, pair)
        results = {p.pid: finish(p) for p in pair}
        codes = sorted(code for code, _, _ in results.values())
        assert codes == [0, 2], [err[-2000:] for _, _, err in results.values()]
        (winner,) = [pid for pid, r in results.items() if r[0] == 0]
        (loser,) = [r for r in results.values() if r[0] == 2]
        line = only_error_line(loser[2])
        assert line.startswith("error: ") and str(tmp_path / "runs" / name) in line
        assert "already holds a run" in line or "in use by another foldbench process" in line, line
        assert trained(tmp_path, f"r{round_}") == {winner: list(range(1, 11))}  # only the winner trained
        run = tmp_path / "runs" / name
        assert yaml.safe_load((run / "config.yaml").read_text())["name"] == name
        assert_complete_and_equal(run, reference)


def test_two_resumes_of_one_killed_run_at_once(tiny_us8k_master, shared_cache, reference, tmp_path, procs):
    args = kfold_args(tmp_path, tiny_us8k_master, shared_cache, "two")
    run = tmp_path / "runs" / "two"
    kill_held(tmp_path, start(procs, tmp_path, args, "first", FB_HOLD="epoch:2"))
    assert sorted(done_markers(run)) == [1]

    # Both resumes are held in split 5's training (if they get that far) until one of them exits, so
    # the loser meets a live winner, however the two are scheduled.
    barrier, release = tmp_path / "go", tmp_path / "release"
    pair = [
        start(
            procs,
            tmp_path,
            [*args, "--resume"],
            "resume",
            FB_BARRIER=str(barrier),
            FB_HOLD="epoch:5",
            FB_RELEASE=str(release),
        )
        for _ in range(2)
    ]
    release_barrier(tmp_path, barrier, pair)
    wait_until(lambda: any(p.poll() is not None for p in pair) or len(held(tmp_path)) == 2, what="one resume to exit")
    assert len(held(tmp_path)) < 2, "both resumes are training the remaining splits"
    (loser,) = [p for p in pair if p.poll() is not None]
    (winner,) = [p for p in pair if p is not loser]
    code, _, err = finish(loser)
    assert code == 2
    line = only_error_line(err)
    assert line == (
        f"error: {run} is in use by another foldbench process; wait for it to finish or pick another --name"
    )
    release.touch()
    code, out, err = finish(winner)
    assert code == 0, err[-3000:]
    assert trained(tmp_path, "resume") == {winner.pid: list(range(2, 11))}
    assert_complete_and_equal(run, reference)


# ---- MLflow ----


def test_mlflow_after_kills_has_no_running_run_and_one_child_per_split(
    tiny_us8k_master, shared_cache, reference, tmp_path, procs
):
    """Killed during split 2 (its run is replaced when the split is retrained), then a resume killed right
    after split 4's DONE (skipped later, so only the cleanup on resume can close its run); a last resume finishes."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = kfold_args(tmp_path, tiny_us8k_master, shared_cache, "ml", tracking=uri)
    run = tmp_path / "runs" / "ml"
    client = MlflowClient(uri)

    def runs():
        found = client.search_runs([client.get_experiment_by_name("kill").experiment_id], max_results=1000)
        return found, [r for r in found if "mlflow.parentRunId" not in r.data.tags]

    def running():
        return sorted(r.data.tags.get("split", "parent") for r in runs()[0] if r.info.status == "RUNNING")

    def split_runs(k):
        return [r.info.run_id for r in runs()[0] if r.data.tags.get("split") == str(k)]

    kill_held(tmp_path, start(procs, tmp_path, args, "first", FB_HOLD="epoch:2"))
    assert running() == ["2", "parent"]  # what the killed job left open
    split2 = split_runs(2)
    kill_held(tmp_path, start(procs, tmp_path, [*args, "--resume"], "second", FB_HOLD="done:4"))
    assert list(trained(tmp_path, "second").values()) == [[2, 3, 4]]
    assert running() == ["4", "parent"] and sorted(done_markers(run)) == [1, 2, 3, 4]
    assert len(split_runs(2)) == 1 and split_runs(2) != split2  # the killed attempt's run replaced
    split2 = split_runs(2)

    code, _, err = finish(start(procs, tmp_path, [*args, "--resume"], "last"))
    assert code == 0, err[-3000:]
    assert list(trained(tmp_path, "last").values()) == [list(range(5, 11))]
    found, parents = runs()
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert running() == []
    assert len(found) == 11 and len(parents) == 1 and len(children) == 10
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["split"]) for r in children) == list(range(1, 11))
    assert split_runs(2) == split2
    history = client.get_metric_history(split2[0], "val_acc")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # one attempt's curve
    assert all(r.info.status == "FINISHED" for r in children)  # 4 was closed, then mirrored from disk
    split4 = next(r for r in children if r.data.tags["split"] == "4")
    assert split4.data.metrics["test_acc"] == json.loads((run / "splits" / "4" / "split.json").read_text())["test_acc"]
    assert all("test_acc" in r.data.metrics for r in children)
    assert_complete_and_equal(run, reference)


def test_sigterm_ends_a_run_like_ctrl_c(tiny_us8k_master, shared_cache, tmp_path, procs):
    """`kill` (SIGTERM, what schedulers send) is an interruption: exit 130, finished splits kept,
    no MLflow run left RUNNING; --resume then finishes to the uninterrupted scores."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = kfold_args(tmp_path, tiny_us8k_master, shared_cache, "term", tracking=uri)
    p = start(procs, tmp_path, args, "first", FB_HOLD="epoch:3")
    wait_until(lambda: (tmp_path / f"held-{p.pid}").exists(), [p], "the hold point")
    p.send_signal(signal.SIGTERM)
    code, _, err = finish(p)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert sorted(done_markers(tmp_path / "runs" / "term")) == [1, 2]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("kill").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    code, _, err = finish(start(procs, tmp_path, [*args, "--resume"], "resume"))
    assert code == 0, err[-3000:]
