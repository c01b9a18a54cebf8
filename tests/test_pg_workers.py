"""Several `cli.py tune` workers sharing one study (issue 14), real processes started together
behind a barrier: on a fresh PostgreSQL database (its schema created by the workers at once) with
MLflow on a real `mlflow server` (PostgreSQL backend store), two and four workers all exit 0 and
leave exactly --trials counted trials with unique numbers, one MLflow study run and one trial run
per trial under it, nothing left RUNNING; on one SQLite study file with a fresh SQLite mlflow.db
the same. A worker killed with SIGKILL mid-trial (held inside its first split's training by a
test-only hook) does not stop the other, whose heartbeat check fails the killed trial (not counted)
and runs its retry with the same params.

PostgreSQL: FOLDBENCH_TEST_PG names a database of a role that may create databases (.ci/run starts
one on loopback: postgresql://foldbench:foldbench@127.0.0.1:5432/foldbench); each test creates its
own databases beside it and drops them after. Skipped without it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from bench.drivers.study import counts, storage_url
from tests.test_tune import SPACE, TINY, write_space

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300  # seconds; a bound for waits on a shared 2-core machine, not a timing assertion
TRIALS = 6
PG = os.environ.get("FOLDBENCH_TEST_PG")

WRAPPER = r"""
import os, sys, time
from pathlib import Path
import cli, bench.drivers.tune, bench.drivers.kfold  # noqa: F401  (everything heavy imported before the barrier)
if os.environ.get("FB_HOLD"):  # test-only: block (alive) inside the first split's training, to be killed
    real_fit = bench.drivers.kfold.fit_split
    def fit(*a, **kw):
        Path(os.environ["FB_HOLD"]).write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    bench.drivers.kfold.fit_split = fit
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
        return (
            f"PostgreSQL at FOLDBENCH_TEST_PG cannot be reached: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        )
    return None


def _create_database() -> tuple[str, str]:
    """(name, URL) of a fresh, uniquely named PostgreSQL database beside FOLDBENCH_TEST_PG's."""
    import sqlalchemy as sa

    name = f"foldbench_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(storage_url(PG), isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, sa.engine.make_url(PG).set(database=name).render_as_string(hide_password=False)


def _drop_database(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(storage_url(PG), isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_database():
    """The URL of a fresh, uniquely named PostgreSQL database, dropped after the test."""
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    name, url = _create_database()
    try:
        yield url
    finally:
        _drop_database(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback with a fresh PostgreSQL backend store (its schema created
    by the server) and a local artifact folder; its URL. Started once for this module (tests use
    their own experiments), stopped with its whole process group after. MLflow's job runner (a
    dozen huey processes, for GenAI jobs) is off: it doubles the start time on 2 cores."""
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    name, url = _create_database()
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(folder / "server.log", "w")
    started = time.monotonic()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            storage_url(url),
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + DEADLINE
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None:
                pytest.fail(
                    f"mlflow server exited ({server.returncode}):\n{(folder / 'server.log').read_text()[-3000:]}"
                )
            assert time.monotonic() < end, "timed out waiting for the mlflow server's /health"
            time.sleep(0.2)
        print(f"\nmlflow server answered /health after {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield uri
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()
        _drop_database(name)


def worker_args(tmp: Path, root: Path, storage: str, tracking: str | None = None, *extra: str) -> list[str]:
    args = [
        "tune",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp / "runs"),
        "--cache-dir",
        str(tmp / "cache"),
        "--space",
        write_space(tmp / "space.yaml", SPACE),
        "--splits",
        "1",
        "--trials",
        str(TRIALS),
        "--study",
        "shared",
        "--storage",
        storage,
        "--threads",
        "1",
        "--quiet",
        *extra,
    ]
    args += ["--tracking-uri", tracking, "--experiment", tmp.name] if tracking else ["--no-mlflow"]
    for key, value in {**TINY, "train.epochs": 1}.items():
        if key != "tracking.mlflow":
            args += ["--set", f"{key}={value}"]
    return args


def start_workers(tmp: Path, args: list[str], n: int = 2, envs: list[dict] | None = None) -> list:
    """`n` tune workers released together (a barrier file made once all wait at it)."""
    barrier = tmp / "go"
    envs = envs or [{}] * n
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *args],
            cwd=REPO,
            env={**os.environ, "FB_BARRIER": str(barrier), **env},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for env in envs
    ]
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
    except BaseException:
        stop(procs)
        raise
    return procs


def finish(procs) -> list[tuple[int, str, str]]:
    try:
        outputs = [p.communicate(timeout=DEADLINE) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outputs)]
    finally:
        stop(procs)


def stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=60)


def run_workers(tmp: Path, root: Path, storage: str, n: int = 2, tracking: str | None = None):
    return finish(start_workers(tmp, worker_args(tmp, root, storage, tracking), n))


def check_shared_study(results, storage: str) -> list[optuna.trial.FrozenTrial]:
    for rc, out, err in results:
        assert rc == 0, f"a worker failed ({rc}):\n{out}\n{err[-3000:]}"
    study = optuna.load_study(study_name="shared", storage=storage_url(storage))
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    unfinished = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING
    assert not [t for t in trials if t.state in unfinished]
    counted = [t for t in trials if counts(t)]
    assert len(counted) == TRIALS, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in trials]
    # each worker's own count and the study's total; the own counts add up to the total
    lines = [next(line for line in out.splitlines() if "trial(s) added by this run" in line) for _, out, _ in results]
    assert all(f"{TRIALS} of {TRIALS} in the study" in line for line in lines), lines
    assert sum(int(line.split(": ")[1].split()[0]) for line in lines) == TRIALS, lines
    return trials


def check_mlflow(tracking: str, experiment: str, trials: list[optuna.trial.FrozenTrial]) -> dict:
    """One live study run; exactly one trial run under it per trial that ran (not the trials not
    run because the study was full); nothing left RUNNING, deleted runs included. Returns
    trial number -> its run."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(experiment)
    every = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=10000)
    assert not [r.info.run_name for r in every if r.info.status == "RUNNING"]
    live = [r for r in every if r.info.lifecycle_stage == "active"]
    studies = [r for r in live if r.data.tags.get("kind") == "study"]
    assert len(studies) == 1, [r.info.run_id for r in studies]
    under = [r for r in live if r.data.tags.get("mlflow.parentRunId") == studies[0].info.run_id]
    numbers = [int(r.data.tags["trial"]) for r in under]
    ran = [t.number for t in trials if not str(t.user_attrs.get("reason", "")).startswith("not run")]
    assert sorted(numbers) == sorted(ran), (sorted(numbers), sorted(ran))
    return {int(r.data.tags["trial"]): r for r in under}


@pytest.mark.parametrize("n", [2, 4])
def test_workers_on_a_fresh_postgresql_database_stop_at_exactly_trials_one_mlflow_run_each(
    n, tiny_us8k_master, tmp_path, pg_database, mlflow_server
):
    results = run_workers(tmp_path, tiny_us8k_master, pg_database, n, tracking=mlflow_server)
    trials = check_shared_study(results, pg_database)
    trial_runs = check_mlflow(mlflow_server, tmp_path.name, trials)
    assert {r.info.status for r in trial_runs.values()} == {"FINISHED"}


def test_workers_on_one_sqlite_file_and_a_fresh_mlflow_db_stop_at_exactly_trials(tiny_us8k_master, tmp_path):
    storage, tracking = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = run_workers(tmp_path, tiny_us8k_master, storage, 3, tracking=tracking)
    check_mlflow(tracking, tmp_path.name, check_shared_study(results, storage))


def test_a_worker_killed_mid_trial_does_not_stop_the_other_and_its_trial_is_retried(
    tiny_us8k_master, tmp_path, pg_database, mlflow_server
):
    held = tmp_path / "held"
    args = worker_args(tmp_path, tiny_us8k_master, pg_database, mlflow_server, "--heartbeat", "2")
    killed, other = procs = start_workers(tmp_path, args, 2, envs=[{"FB_HOLD": str(held)}, {}])
    try:
        end = time.monotonic() + DEADLINE
        while not held.exists():  # inside its first trial's training: the trial RUNNING, its MLflow run open
            assert killed.poll() is None and other.poll() is None, finish(procs)
            assert time.monotonic() < end, "timed out waiting for the held worker"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        ((rc, out, err),) = finish([other])
    finally:
        stop(procs)
    assert rc == 0, f"the other worker failed ({rc}):\n{out}\n{err[-3000:]}"
    study = optuna.load_study(study_name="shared", storage=storage_url(pg_database))
    trials = study.get_trials(deepcopy=False)
    stale = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(stale) == 1 and not counts(stale[0]) and "reason" not in stale[0].user_attrs
    dead = stale[0]
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    retries = [t for t in trials if retry.retried_trial_number(t) == dead.number]
    assert len(retries) == 1 and retries[0].number > dead.number
    assert retries[0].params == dead.params and counts(retries[0])
    assert f"trial {dead.number} failed: its worker stopped" in out
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    assert sum(counts(t) for t in trials) == TRIALS
    assert f"{TRIALS} of {TRIALS} in the study" in out
    trial_runs = check_mlflow(mlflow_server, tmp_path.name, trials)
    assert trial_runs[dead.number].info.status == "KILLED"
    assert trial_runs[retries[0].number].info.status == "FINISHED"
    report = (tmp_path / "runs" / "tune-shared" / "report.md").read_text()
    assert "1 stopped with their worker" in report
