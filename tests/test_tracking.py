"""MLflow store faults and races: a bad store fails fast in one line, runs left RUNNING by a killed
job are closed and reused, and workers opening one fresh SQLite store together all succeed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.config import TrackingConfig
from bench.errors import USER_ERRORS
from bench.tracking import Tracker, TrackingError, retry_races

REPO = Path(__file__).resolve().parents[1]


def tracker(db: Path, experiment: str = "exp") -> Tracker:
    return Tracker(TrackingConfig(tracking_uri=f"sqlite:///{db}"), experiment)


@pytest.fixture(scope="module")
def made_db(tmp_path_factory) -> Path:
    """An MLflow database with experiment "exp", made once (the schema takes seconds): copy it."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracker(db)
    return db


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    """A real worker process running `code` with the repository importable."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "--no-mlflow" in text
    return text


def test_tracking_error_is_a_user_error():
    assert issubclass(TrackingError, USER_ERRORS)


def test_an_unreachable_server_fails_within_seconds_in_one_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TrackingError) as e:
        Tracker(TrackingConfig(tracking_uri=f"http://127.0.0.1:{port}"), "exp")
    assert time.monotonic() - started < 30  # MLflow's own retries take about 4 minutes
    assert f"http://127.0.0.1:{port} is unreachable (connection refused)" in one_line(e)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the quick-check settings are undone


def test_a_server_that_is_not_mlflow_is_refused_in_one_line():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()
        do_POST = do_GET

        def log_message(self, *args):
            pass
    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError) as e:
            Tracker(TrackingConfig(tracking_uri=f"http://127.0.0.1:{server.server_port}"), "exp")
    finally:
        server.shutdown()
    assert "refused the check" in one_line(e) and "404" in str(e.value)


def test_a_missing_folder_or_a_file_that_is_no_database_is_refused(tmp_path):
    with pytest.raises(TrackingError) as e:
        tracker(tmp_path / "absent" / "mlflow.db")
    assert "does not exist" in one_line(e) and not (tmp_path / "absent").exists()
    junk = tmp_path / "mlflow.db"
    junk.write_text("not a database\n" * 100)
    with pytest.raises(TrackingError) as e:
        tracker(junk)
    assert "is not a SQLite database" in one_line(e)
    assert junk.read_text() == "not a database\n" * 100


@pytest.fixture
def immutable():
    """chattr +i: a read-only file even root cannot write (chmod does not stop root); undone after."""
    marked = []

    def mark(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        marked.append(path)
    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_is_refused_before_anything_is_written(tmp_path, immutable, made_db):
    db = Path(shutil.copy(made_db, tmp_path))
    tracker(db)  # the database and its experiment exist: only a write would fail
    immutable(db)
    with pytest.raises(TrackingError) as e:
        tracker(db)
    assert "is read-only" in one_line(e)


def test_a_store_that_fails_while_being_created_leaves_no_file(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    def disk_full(engine):
        with engine.begin() as con:
            con.exec_driver_sql("CREATE TABLE experiments (x)")  # the file now exists, half made
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(db_utils, "_initialize_tables", disk_full)
    db = tmp_path / "mlflow.db"
    with pytest.raises(TrackingError) as e:
        tracker(db)
    assert "No space left on device" in one_line(e)
    assert sorted(tmp_path.iterdir()) == []


def test_a_store_failure_while_logging_is_a_tracking_error(tmp_path, made_db):
    db = Path(shutil.copy(made_db, tmp_path))
    t = tracker(db)
    run = t.start("job")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE metrics")
    with pytest.raises(TrackingError) as e:
        t.log_metrics(run, {"acc": 0.5})
    assert "cannot log metrics (no such table: metrics)" in one_line(e)


KILLED_JOB = """
    import os, signal, sys
    from bench.config import TrackingConfig
    from bench.tracking import Tracker
    t = Tracker(TrackingConfig(tracking_uri=f"sqlite:///{sys.argv[1]}"), "exp")
    parent = t.start("job")
    done = t.start("split-1", tags={"split": 1}, parent=parent)
    t.end(done)
    split = t.start("split-3", tags={"split": 3}, parent=parent)
    epoch = t.start("inner", parent=split)  # a run two levels down, also left RUNNING
    print(parent, done, split, epoch, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_runs_left_running_by_a_killed_job_are_closed_and_a_split_run_is_reused(tmp_path, made_db):
    db = Path(shutil.copy(made_db, tmp_path))
    proc = python(KILLED_JOB, str(db))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    parent, done, split, inner = out.split()
    t = tracker(db)
    status = lambda run: t.client.get_run(run).info.status  # noqa: E731
    assert [status(r) for r in (parent, done, split, inner)] == ["RUNNING", "FINISHED", "RUNNING", "RUNNING"]

    t.start("job", run_id=parent)  # the resumed job reopens its parent, then closes what was left
    assert t.close_running(parent) == 2
    assert [status(r) for r in (parent, done, split, inner)] == ["RUNNING", "FINISHED", "KILLED", "KILLED"]
    assert t.close_running(parent) == 0

    assert t.child_run(parent, "split-3", {"split": 3}) == split
    assert t.child_run(parent, "split-1", {"split": "1"}) == done
    assert t.child_run(parent, "split-3", {"split": 4}) is None
    assert t.child_run(parent, "split-2", {"split": 2}) is None
    assert t.start("split-3", parent=parent, run_id=t.child_run(parent, "split-3", {"split": 3})) == split
    assert status(split) == "RUNNING" and len(t._children(parent)) == 2  # reused, not duplicated


def test_tracker_off_needs_no_store(tmp_path):
    t = Tracker(TrackingConfig(mlflow=False, tracking_uri=f"sqlite:///{tmp_path}/absent/x.db"), "exp")
    assert t.close_running("x") == 0 and t.child_run("x", "split-1", {}) is None
    assert not (tmp_path / "absent").exists()


# ---- workers opening one fresh store together ----

WORKER = """
    import sys, time, traceback
    from pathlib import Path
    import mlflow.tracking  # imported before the start line, so the workers meet in store creation
    from bench.config import TrackingConfig
    from bench.tracking import Tracker
    folder, me, workers, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    failed = 0
    for r in range(rounds):
        (folder / f"ready-{r}-{me}").touch()  # a barrier: go when every worker is ready
        while len(list(folder.glob(f"ready-{r}-*"))) < workers:
            time.sleep(0.002)
        try:
            t = Tracker(TrackingConfig(tracking_uri=f"sqlite:///{folder / f'mlflow-{r}.db'}"), "race")
            t.end(t.start(f"worker-{me}"))
        except Exception:  # counted; the worker still meets the others at the next barrier
            failed += 1
            traceback.print_exc()
    sys.exit(1 if failed else 0)
"""


def test_workers_opening_one_fresh_sqlite_store_together_all_succeed(tmp_path):
    workers, rounds = 3, 2  # before the lock, every round of three lost at least one worker
    procs = [python(WORKER, str(tmp_path), str(i), str(workers), str(rounds)) for i in range(workers)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, [err[-2000:] for _, err in results]
    from mlflow.tracking import MlflowClient
    for r in range(rounds):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / f'mlflow-{r}.db'}")
        exp = client.get_experiment_by_name("race")
        names = sorted(run.info.run_name for run in client.search_runs([exp.experiment_id]))
        assert names == [f"worker-{i}" for i in range(workers)]


def test_retry_races_retries_only_the_known_races():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"
    assert retry_races(flaky, wait_s=0.001) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise ValueError("a bug")
    calls.clear()
    with pytest.raises(ValueError):
        retry_races(broken, wait_s=0.001)
    assert len(calls) == 1


def test_artifacts_go_beside_the_sqlite_database_not_the_working_folder(tmp_path, monkeypatch):
    from bench.config import TrackingConfig
    from bench.tracking import Tracker
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir(), store.mkdir()
    monkeypatch.chdir(work)
    tracker = Tracker(TrackingConfig(tracking_uri=f"sqlite:///{store / 'mlflow.db'}"), "where")
    run = tracker.start("r")
    (tmp_path / "a.txt").write_text("x")
    tracker.log_files(run, [tmp_path / "a.txt"])
    tracker.end(run)
    assert list((store / "mlruns").rglob("a.txt")) and not (work / "mlruns").exists()
