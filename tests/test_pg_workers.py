"""Several `cli.py tune` workers sharing one study (issue 14): on a fresh PostgreSQL database (its
schema created by the workers at once) and on one SQLite file, two workers started together behind a
barrier both exit 0 and leave exactly --trials counted trials, with unique numbers.

PostgreSQL: FOLDBENCH_TEST_PG names a database of a role that may create databases (.ci/run starts
one on loopback: postgresql://foldbench:foldbench@127.0.0.1:5432/foldbench); each test creates its
own database beside it and drops it after. Skipped without it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from bench.tune import counts, storage_url
from tests.test_tune import SPACE, TINY, write_space

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300  # seconds; a bound for waits on a shared 2-core machine, not a timing assertion
TRIALS = 6
PG = os.environ.get("FOLDBENCH_TEST_PG")

WRAPPER = r"""
import os, sys, time
from pathlib import Path
import cli, bench.tune, bench.cv  # noqa: F401  (everything heavy imported before the barrier)
barrier = os.environ["FB_BARRIER"]
Path(f"{barrier}.ready.{os.getpid()}").touch()
while not os.path.exists(barrier):
    time.sleep(0.002)
sys.exit(cli.main(sys.argv[1:]))
"""


def _pg_reason() -> str | None:
    """Why the PostgreSQL tests cannot run, or None."""
    if not PG:
        return "FOLDBENCH_TEST_PG is unset (.ci/run starts PostgreSQL and sets it)"
    try:
        import sqlalchemy as sa
        with sa.create_engine(storage_url(PG)).connect() as con:
            con.execute(sa.text("SELECT 1"))
    except Exception as e:
        return f"PostgreSQL at FOLDBENCH_TEST_PG cannot be reached: {type(e).__name__}: " \
               f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


@pytest.fixture
def pg_database():
    """The URL of a fresh, uniquely named PostgreSQL database, dropped after the test."""
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    import sqlalchemy as sa
    name = f"foldbench_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(storage_url(PG), isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def worker_args(tmp: Path, root: Path, storage: str) -> list[str]:
    args = ["tune", "--dataset", "us8k", "--root", str(root), "--runs-dir", str(tmp / "runs"),
            "--cache-dir", str(tmp / "cache"), "--space", write_space(tmp / "space.yaml", SPACE),
            "--splits", "1", "--trials", str(TRIALS), "--study", "shared", "--storage", storage,
            "--threads", "1", "--quiet", "--no-mlflow"]
    for key, value in {**TINY, "train.epochs": 1}.items():
        if key != "tracking.mlflow":
            args += ["--set", f"{key}={value}"]
    return args


def run_workers(tmp: Path, root: Path, storage: str, n: int = 2) -> list[tuple[int, str, str]]:
    """`n` tune workers started together (a barrier file opened once all wait at it)."""
    barrier = tmp / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRAPPER, *worker_args(tmp, root, storage)], cwd=REPO,
                              env={**os.environ, "FB_BARRIER": str(barrier)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    try:
        end = time.monotonic() + DEADLINE
        while not all(Path(f"{barrier}.ready.{p.pid}").exists() for p in procs):
            for p in procs:
                if p.poll() is not None:
                    out, err = p.communicate()
                    pytest.fail(f"worker exited ({p.returncode}) before the barrier:\n{out}\n{err[-3000:]}")
            assert time.monotonic() < end, "timed out waiting for the workers at the barrier"
            time.sleep(0.02)
        barrier.touch()
        outputs = [p.communicate(timeout=DEADLINE) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)


def check_shared_study(results, storage: str) -> None:
    for rc, out, err in results:
        assert rc == 0, f"a worker failed ({rc}):\n{out}\n{err[-3000:]}"
    study = optuna.load_study(study_name="shared", storage=storage_url(storage))
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    counted = [t for t in trials if counts(t)]
    assert len(counted) == TRIALS, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in trials]
    # each worker's own count and the study's total; the own counts add up to the total
    lines = [next(line for line in out.splitlines() if "trial(s) added by this run" in line)
             for _, out, _ in results]
    assert all(f"{TRIALS} of {TRIALS} in the study" in line for line in lines), lines
    assert sum(int(line.split(": ")[1].split()[0]) for line in lines) == TRIALS, lines


def test_two_workers_on_a_fresh_postgresql_database_stop_at_exactly_trials(tiny_us8k_master, tmp_path,
                                                                           pg_database):
    check_shared_study(run_workers(tmp_path, tiny_us8k_master, pg_database), pg_database)


def test_two_workers_on_one_sqlite_file_stop_at_exactly_trials(tiny_us8k_master, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    check_shared_study(run_workers(tmp_path, tiny_us8k_master, storage), storage)
