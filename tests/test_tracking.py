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

from bench.core.config import TrackingConfig
from bench.core.errors import USER_ERRORS
from bench.tracking.tracker import Tracker, TrackingError, retry_races

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
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


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


def test_a_file_store_is_refused_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError) as e:
        Tracker(TrackingConfig(tracking_uri=(tmp_path / "mlruns").as_uri()), "exp")
    line = one_line(e)
    assert "use sqlite:///" in line and "MLFLOW_ALLOW_FILE_STORE=true" in line


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
    from bench.core.config import TrackingConfig
    from bench.tracking.tracker import Tracker
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
    from bench.core.config import TrackingConfig
    from bench.tracking.tracker import Tracker
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
    from bench.core.config import TrackingConfig
    from bench.tracking.tracker import Tracker

    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir(), store.mkdir()
    monkeypatch.chdir(work)
    tracker = Tracker(TrackingConfig(tracking_uri=f"sqlite:///{store / 'mlflow.db'}"), "where")
    run = tracker.start("r")
    (tmp_path / "a.txt").write_text("x")
    tracker.log_files(run, [tmp_path / "a.txt"])
    tracker.end(run)
    assert list((store / "mlruns").rglob("a.txt")) and not (work / "mlruns").exists()


# ---- what a job logs: params, tags, the dataset input, per-fold accuracy, the experiment's view ----

NOT_PARAMS = ("name", "runs_dir", "cache_dir", "tracking.", "train.threads", "dataset.root")


def tracked_kfold(tmp: Path, root: Path, name: str = "tracked", **overrides):
    """A tiny kfold (2 splits, 2 epochs) logged to a fresh SQLite store; its report.html is the
    report's own (asserted: the artifact tests below must not pass without it)."""
    from conftest import fast_config
    from bench.drivers.kfold import run_cv

    cfg = fast_config(
        tmp,
        root,
        name=name,
        **{
            "tracking.mlflow": True,
            "tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "train.epochs": 2,
            "splits": [1, 2],
            "train.threads": 1,
            **overrides,
        },
    )
    result = run_cv(cfg, progress=False)
    assert (result.run_dir / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    return cfg, result


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_us8k_master):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("logged")
    cfg, result = tracked_kfold(tmp, tiny_us8k_master)
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    exp = client.get_experiment_by_name("us8k")
    parent = client.get_run(json_file(result.run_dir / "mlflow.json")["parent"])
    splits = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return cfg, result, client, exp, parent, sorted(splits, key=lambda r: int(r.data.params["split"]))


def json_file(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def test_parent_params_are_the_resolved_result_settings_and_nothing_else(logged):
    cfg, result, _, _, parent, _ = logged
    params = parent.data.params
    assert not [k for k in params if k.startswith(NOT_PARAMS)]
    assert "None" not in params.values()
    # resolved where the run resolves them: the dataset's protocol, its folds, the device, the edge
    assert params["protocol.name"] == "predefined" and params["protocol.folds"] == "10"
    assert params["train.device"] == "cpu" and params["features.f_max"] == "4000.0"
    assert "protocol.seed" not in params  # predefined folds: the seed decides nothing
    assert params["features.n_mels"] == "32" and params["splits"] == "1,2"
    # onecycle: max_lr and anneal decide, lr and the other schedules' settings do not
    assert "train.max_lr" in params and "train.lr" not in params and "train.plateau_factor" not in params
    assert "train.momentum" not in params  # adam
    from bench.core.runfolder import result_view

    kept = {k for k, v in result_view(cfg).items() if v is not None} - {
        "dataset.root",
        "train.lr",
        "train.momentum",
        "train.nesterov",
        "train.plateau_factor",
        "train.plateau_patience",
        "protocol.seed",
    }
    assert kept <= set(params)


def test_split_runs_have_the_parents_params_plus_their_fold(logged):
    _, _, _, _, parent, splits = logged
    assert [r.data.params["split"] for r in splits] == ["1", "2"]
    for run, (test_fold, val_fold) in zip(splits, [(1, 2), (2, 3)]):
        assert run.data.params == {
            **parent.data.params,
            "split": run.data.params["split"],
            "repeat": "1",
            "test_fold": str(test_fold),
            "val_fold": str(val_fold),
        }


def test_standard_tags_on_every_run(logged):
    _, _, _, _, parent, splits = logged
    for run in [parent, *splits]:
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
        assert tags["mlflow.user"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if commit.returncode == 0:
        assert parent.data.tags["mlflow.source.git.commit"] == commit.stdout.strip()
    assert parent.data.tags["dataset_fingerprint"] and parent.data.tags["protocol"]
    assert parent.data.tags["run_folder"] == str(logged[1].run_dir.resolve())


def test_the_dataset_and_fold_plan_are_inputs_with_the_fingerprint_as_digest(logged, tiny_us8k_master):
    import json

    _, result, _, _, parent, splits = logged
    fingerprint = json_file(result.run_dir / "plan.json")["dataset_fingerprint"]
    for run in [parent, *splits]:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"us8k", "us8k-folds"}
        data = inputs["us8k"].dataset
        assert data.digest == fingerprint[:36]
        assert json.loads(data.source)["uri"] == Path(tiny_us8k_master).resolve().as_uri()
        profile = json.loads(data.profile)
        assert profile["clips"] == 90 and profile["n_classes"] == 3 and profile["fingerprint"] == fingerprint
        assert {t.key: t.value for t in inputs["us8k"].tags}["mlflow.data.context"] == "cross-validation"
        assert json.loads(inputs["us8k-folds"].dataset.profile)["folds"] == 10


def test_per_fold_accuracy_on_the_parent_and_report_files_as_artifacts(logged):
    _, result, client, _, parent, splits = logged
    history = client.get_metric_history(parent.info.run_id, "acc_fold")
    per_fold = {row["split"]: row["accuracy"] for row in result.scores["per_fold"]}
    assert sorted((m.step, m.value) for m in history) == sorted(per_fold.items())
    assert [r.data.metrics["test_acc"] for r in splits] == [per_fold[1], per_fold[2]]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report.md", "folds.csv", "config.yaml", "confusion_counts.png"} <= artifacts
    for run in splits:  # the per-epoch metrics, logged asynchronously, are all there once it ended
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]


def test_the_experiment_opens_on_its_runs_table(logged, tmp_path, made_db):
    from bench.tracking.layout import EXPERIMENT_TAGS, ui_hint

    _, result, client, exp, _, _ = logged
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json_file_text(exp.tags["mlflow.sharedViewState.foldbench"])
    assert "metrics.`acc_mean`" in view["selectedColumns"] and "params.`features.n_mels`" in view["selectedColumns"]
    # acc_mean right after MLflow's pinned Run Name and Created, then acc_std and the settings
    assert view["columnOrder"][:5] == [
        "attributes.`Run Name`",
        "runDateAndNestInfo",
        "metrics.`acc_mean`",
        "metrics.`acc_std`",
        "params.`features.n_mels`",
    ]
    assert set(view["selectedColumns"]) <= set(view["columnOrder"]) >= set(view["columnWidths"])
    hint = ui_hint(logged[0].tracking, result.run_dir)
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in hint
    # an experiment made before (without the tags) gets them when a tracker opens it
    db = Path(shutil.copy(made_db, tmp_path))
    from mlflow.tracking import MlflowClient

    old = MlflowClient(tracking_uri=f"sqlite:///{db}")
    old.delete_experiment_tag(old.get_experiment_by_name("exp").experiment_id, "mlflow.experimentKind")
    assert "mlflow.experimentKind" not in old.get_experiment_by_name("exp").tags
    tracker(db)
    assert EXPERIMENT_TAGS.items() <= old.get_experiment_by_name("exp").tags.items()


def test_the_hint_names_the_port_that_mlflow_ui_will_listen_on(tmp_path, monkeypatch):
    """`mlflow ui` listens on --port, else $MLFLOW_PORT, else 5000: the printed command says which,
    and the link is on that port."""
    from bench.tracking.layout import ui_hint

    (tmp_path / "mlflow.json").write_text('{"experiment": "7"}')
    tracking = TrackingConfig(tracking_uri="sqlite:///mlflow.db")
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    hint = ui_hint(tracking, tmp_path)
    assert hint.startswith("mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000, then ")
    assert "http://127.0.0.1:5000/#/experiments/7/runs?" in hint
    monkeypatch.setenv("MLFLOW_PORT", "5077")
    hint = ui_hint(tracking, tmp_path)
    assert "--port 5077, then http://127.0.0.1:5077/#/experiments/7/runs?" in hint
    monkeypatch.setenv("MLFLOW_PORT", "not-a-port")  # mlflow ui refuses it; the hint keeps the default
    assert "--port 5000, then http://127.0.0.1:5000/" in ui_hint(tracking, tmp_path)
    # a tracking server's own address is the link's
    assert ui_hint(TrackingConfig(tracking_uri="http://h:5055"), tmp_path).startswith("http://h:5055/#/experiments/7/")


def json_file_text(text: str) -> dict:
    import json

    return json.loads(text)


def test_run_params_resolve_the_config_without_the_data(tmp_path):
    from conftest import fast_config
    from bench.tracking.layout import run_params

    cfg = fast_config(
        tmp_path,
        **{
            "dataset.name": "demo",
            "protocol.name": "stratified",
            "protocol.folds": 4,
            "train.optimizer": "sgd",
            "train.momentum": 0.9,
            "train.schedule": "plateau",
            "features.f_max": 3000.0,
            "features.mel_norm": "slaney",
        },
    )
    p = run_params(cfg)
    assert p["protocol.name"] == "stratified" and p["protocol.folds"] == "4" and p["protocol.seed"] == "0"
    assert p["train.momentum"] == "0.9" and p["train.lr"] and p["train.plateau_patience"]
    assert "train.max_lr" not in p and "train.anneal" not in p
    assert p["features.f_max"] == "3000.0" and p["features.mel_norm"] == "slaney"
    assert not [k for k in p if k.startswith(NOT_PARAMS)] and "None" not in p.values()
    linear = run_params(merge_cfg(cfg, {"features.frontend": "linear_db"}))
    assert "features.n_mels" not in linear and "features.mel_scale" not in linear
    assert "features.n_fft" in linear


def merge_cfg(cfg, data):
    from bench.core.config import merge

    return merge(cfg, data)


def test_a_failed_async_write_is_a_one_line_tracking_error_at_the_end(tmp_path, made_db, capfd):
    db = Path(shutil.copy(made_db, tmp_path))
    t = tracker(db)
    run = t.start("job")
    t.log_metrics(run, {"val_acc": 0.5}, step=1, asynchronous=True)
    t.end(run)  # waits for it: the metric is there
    assert [m.value for m in t.client.get_metric_history(run, "val_acc")] == [0.5]
    run = t.start("job-2")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE metrics")
    t.log_metrics(run, {"val_acc": 0.5}, step=1, asynchronous=True)  # queued: returns at once
    with pytest.raises(TrackingError) as e:
        t.end(run)
    assert "cannot log metrics" in one_line(e) and "metrics" in str(e.value)
    # MLflow's own logger prints nothing: a store that breaks mid-run must not bury the one line
    # under a traceback per queued write (mlflow.store.db.utils logs each at ERROR)
    assert "Traceback" not in capfd.readouterr().err
