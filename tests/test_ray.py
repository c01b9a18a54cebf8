"""`kfold --executor ray` (issue 14): split jobs as Ray tasks on a local Ray (loopback, 2 CPUs) give the
per-fold scores and predictions of the in-process run of the same config and seed; a Ray worker
killed with SIGKILL mid-split is retried and the run still matches; a resumed run trains only the
splits without verified outputs; without Ray, one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import cli
from bench.drivers.kfold import run_cv
from bench.core.runfolder import RunFolder
from tests.conftest import FAST, fast_config
from tests.test_pg_workers import pg_database  # noqa: F401  (a fresh PostgreSQL database, a fixture)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when ray is imported: as bench.scale.ray_engine sets it
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -c constraints.txt -e '.[ray]'")

DEADLINE = 240  # seconds; a bound for waits on a shared 2-core machine, not a timing assertion


def kfold_args(tmp_path: Path, root: Path, name: str, epochs: int, *extra: str) -> list[str]:
    args = [
        "kfold",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--name",
        name,
        "--epochs",
        str(epochs),
        "--threads",
        "1",
        "--quiet",
    ]
    for key, value in FAST.items():
        if key not in ("tracking.mlflow", "train.epochs"):
            args += ["--set", f"{key}={value}"]
    return [*args, *extra]


def reference(tmp_path: Path, root: Path, epochs: int) -> Path:
    """The in-process run of the same config and seed."""
    cfg = fast_config(tmp_path, root, name="in-process", **{"train.epochs": epochs, "train.threads": 1})
    return run_cv(cfg, progress=False).run_dir


def assert_same_run(run: Path, ref: Path) -> None:
    """Every split verified, and the same predictions, chosen epochs and per-fold scores."""
    assert RunFolder(run).done() == list(range(1, 11))
    assert [k for k in range(1, 11) if RunFolder(run).problem(k) is not None] == []
    for k in range(1, 11):
        pd.testing.assert_frame_equal(
            pd.read_csv(run / f"splits/{k}/predictions.csv"), pd.read_csv(ref / f"splits/{k}/predictions.csv")
        )
        a, b = (json.loads((r / f"splits/{k}/split.json").read_text()) for r in (run, ref))
        a.pop("fit_seconds"), b.pop("fit_seconds")
        assert a == b
        pd.testing.assert_frame_equal(
            pd.read_csv(run / f"splits/{k}/history.csv"), pd.read_csv(ref / f"splits/{k}/history.csv")
        )
    scores, ref_scores = (json.loads((r / "scores.json").read_text()) for r in (run, ref))
    assert scores["per_fold"] == ref_scores["per_fold"]
    assert scores["acc_mean"] == ref_scores["acc_mean"]


# Runs first, with no Ray running: foldbench starts a local Ray on loopback itself and shuts it down.
def test_ray_kfold_equals_the_in_process_run_and_mirrors_to_mlflow(tiny_us8k_master, tmp_path, capsys):
    ref = reference(tmp_path, tiny_us8k_master, epochs=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli.main(
        kfold_args(
            tmp_path,
            tiny_us8k_master,
            "ray",
            3,
            "--executor",
            "ray",
            "--split-cpus",
            "1",
            "--tracking-uri",
            uri,
            "--experiment",
            "ray",
        )
    )
    assert code == 0, capsys.readouterr().err
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert "ray: 10 split job(s), 1 CPU(s) each" in capsys.readouterr().err
    assert_same_run(tmp_path / "runs/ray", ref)
    (attempt,) = json.loads((tmp_path / "runs/ray/run.json").read_text())["attempts"]
    assert attempt["threads"] == "torch threads: 1 in each Ray task (1 CPU(s) each)"  # what trained

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ray")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("kind") == "kfold"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and sorted(int(r.data.tags["split"]) for r in children) == list(range(1, 11))
    assert {r.info.status for r in runs} == {"FINISHED"}
    curve = client.get_metric_history(children[0].info.run_id, "val_acc")
    assert [m.step for m in curve] == [1, 2, 3]  # the learning curve the task recorded, logged here


def test_ray_keeps_the_signal_handlers_foldbench_set(monkeypatch):
    """Ray installs its own SIGTERM handler when it starts; the CLI's (SIGTERM ends a run as Ctrl-C
    does: run.json, MLflow runs closed) must stay."""
    import signal

    from bench.scale.ray_engine import session

    def mine(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(signal, "SIGTERM", signal.SIGTERM)
    before = signal.signal(signal.SIGTERM, mine)
    try:
        with session(cpus=1):
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (loopback, 2 CPUs) for the rest of this module; foldbench uses it as it is."""
    import logging

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.ERROR
    )
    yield
    ray.shutdown()


def task_workers() -> dict[int, float]:
    """pid -> when first seen, of the Ray worker processes running a split job now."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::split_job"):
                    found[int(proc.name)] = time.monotonic()
            except OSError:
                pass
    return found


def test_a_ray_worker_killed_mid_split_is_retried_and_the_run_still_matches(
    tiny_us8k_master, tmp_path, local_ray, capsys
):
    epochs = 60  # long enough that a split is still training when its worker is killed
    ref = reference(tmp_path, tiny_us8k_master, epochs)
    killed: list[int] = []

    def kill_one() -> None:  # the first worker seen training for a second, killed with SIGKILL
        seen: dict[int, float] = {}
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and not killed:
            now = task_workers()
            for pid in now:
                seen.setdefault(pid, now[pid])
            for pid in [p for p in now if time.monotonic() - seen[p] > 1.0]:
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::split_job"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
                except OSError:
                    pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    code = cli.main(kfold_args(tmp_path, tiny_us8k_master, "killed", epochs, "--executor", "ray"))
    killer.join(timeout=5)
    assert code == 0, capsys.readouterr().err
    assert killed, "no split job was seen running long enough to be killed"
    assert_same_run(tmp_path / "runs/killed", ref)


def test_resume_on_ray_trains_only_the_splits_without_verified_outputs(tiny_us8k_master, tmp_path, local_ray, capsys):
    ref = reference(tmp_path, tiny_us8k_master, epochs=3)
    args = kfold_args(tmp_path, tiny_us8k_master, "resumed", 3, "--no-mlflow")
    assert cli.main(args) == 0  # in process
    run = tmp_path / "runs/resumed"
    for k in (3, 5, 7):  # killed before their DONE was written
        (run / f"splits/{k}/DONE").unlink()
    before = {k: (run / f"splits/{k}/DONE").stat().st_ino for k in (1, 2, 4, 6, 8, 9, 10)}
    capsys.readouterr()
    assert (
        cli.main(
            [
                "kfold",
                "--resume",
                "--name",
                "resumed",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--executor",
                "ray",
                "--quiet",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert "ray: 3 split job(s)" in capsys.readouterr().err
    assert {k: (run / f"splits/{k}/DONE").stat().st_ino for k in before} == before  # never trained again
    assert_same_run(run, ref)


def test_an_error_raised_in_a_task_reaches_the_driver_as_itself(local_ray):
    """A task's TrainingError (a NaN loss) is the same user error as in process (one line, exit 2)."""
    from bench.scale.ray_engine import task_result
    from bench.train.fit import TrainingError

    def fails():  # a local function: shipped to the worker by value
        from bench.train.fit import TrainingError

        raise TrainingError("split 4: training loss became nan at epoch 2")

    ref = ray.remote(fails).options(max_retries=0).remote()
    with pytest.raises(TrainingError, match="training loss became nan") as err:
        task_result(ray, ref, "split 4", "kfold --resume continues the run")
    assert type(err.value) is TrainingError


def test_a_bug_in_a_task_keeps_the_workers_traceback(local_ray):
    """Any other error is raised as itself too, chained to Ray's error, whose text holds the
    worker's traceback (where the bug is): the driver's own frames alone would not say."""
    from bench.scale.ray_engine import task_result

    def buggy_helper_in_the_worker():
        return {}["missing"]

    def task():
        return buggy_helper_in_the_worker()

    ref = ray.remote(task).options(max_retries=0).remote()
    with pytest.raises(KeyError) as err:
        task_result(ray, ref, "split 1", "kfold --resume continues the run")
    assert "buggy_helper_in_the_worker" in str(err.value.__cause__)


def test_executor_ray_without_ray_is_one_line_and_writes_nothing(tiny_us8k_master, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert cli.main(kfold_args(tmp_path, tiny_us8k_master, "no-ray", 1, "--no-mlflow", "--executor", "ray")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0] and "[ray]" in err[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", [["--split-cpus", "2"], ["--ray-address", "127.0.0.1:6379"], ["--split-gpus", "0.5"]])
def test_ray_options_without_executor_ray_are_refused(tiny_us8k_master, tmp_path, flag, capsys):
    assert cli.main(kfold_args(tmp_path, tiny_us8k_master, "x", 1, "--no-mlflow", *flag)) == 2
    assert "--executor ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ---- tune --workers N -----------------------------------------------------------------------------


def tune_args(tmp_path: Path, root: Path, storage: str | None, trials: int, *extra: str) -> list[str]:
    from tests.test_tune import SPACE, TINY, write_space

    args = [
        "tune",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--space",
        write_space(tmp_path / "space.yaml", SPACE),
        "--splits",
        "1",
        "--trials",
        str(trials),
        "--study",
        "shared",
        "--threads",
        "1",
        "--quiet",
        "--no-mlflow",
        *(["--storage", storage] if storage else []),
        *extra,
    ]
    for key, value in {**TINY, "train.epochs": 1}.items():
        if key != "tracking.mlflow":
            args += ["--set", f"{key}={value}"]
    return args


def assert_exact_study(tmp_path: Path, storage: str | None, trials: int) -> None:
    import optuna

    from bench.drivers.study import counts, storage_url

    url = storage_url(storage) if storage else f"sqlite:///{tmp_path / 'runs/tune-shared/study.db'}"
    study = optuna.load_study(study_name="shared", storage=url)
    all_trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    assert sum(counts(t) for t in all_trials) == trials
    tried = [t.params for t in all_trials if t.params]
    assert all(a != b for i, a in enumerate(tried) for b in tried[i + 1 :]), tried  # own sampler seeds
    assert not [t for t in all_trials if t.state == optuna.trial.TrialState.RUNNING]
    assert (tmp_path / "runs/tune-shared/trials.csv").exists() and (tmp_path / "runs/tune-shared/best.yaml").exists()


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_tune_workers_on_ray_reach_exactly_the_target(tiny_us8k_master, tmp_path, local_ray, capsys, where, request):
    storage = request.getfixturevalue("pg_database") if where == "postgresql" else None
    code = cli.main(tune_args(tmp_path, tiny_us8k_master, storage, 5, "--workers", "2"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ray: 2 Optuna worker(s), 1 CPU(s) each" in err
    assert "5 of 5 in the study" in out
    assert_exact_study(tmp_path, storage, 5)


def test_tune_workers_refused_before_anything_is_written(tiny_us8k_master, tmp_path, capsys):
    assert cli.main(tune_args(tmp_path, tiny_us8k_master, None, 3, "--worker-cpus", "2")) == 2
    assert "--workers N" in capsys.readouterr().err
    assert cli.main(tune_args(tmp_path, tiny_us8k_master, None, 3, "--workers", "0")) == 2
    assert "--workers 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_nested_with_ray_workers_runs_every_study_to_exactly_its_trials(tiny_us8k_master, tmp_path, local_ray, capsys):
    """nested --workers 2: each outer split's inner study (and the non-nested one) by two Optuna
    workers on Ray, exactly --trials each; no inner trial validated or tested on its outer fold."""
    import optuna

    from bench.drivers.study import counts
    from tests.test_nested import nested_args

    code = cli.main(nested_args(tmp_path, tiny_us8k_master, "--trials", "3", "--workers", "2"))
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs/n1"
    summary = json.loads((run / "nested.json").read_text())
    assert [r["split"] for r in summary["outer"]] == [1, 2] and summary["non_nested"]["n_splits"] == 2
    for folder, outer_fold in ((run / "inner/1", 1), (run / "inner/2", 2), (run / "non-nested", None)):
        (name,) = optuna.get_all_study_names(f"sqlite:///{folder / 'study.db'}")
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}").trials
        assert sum(counts(t) for t in trials) == 3
        infos = list(folder.glob("trials/*/splits/*/split.json"))
        assert len(infos) >= 3  # every counted trial trained at least one inner split
        for info in infos:
            split = json.loads(info.read_text())
            assert outer_fold not in (split["test_fold"], split["val_fold"])
    assert "ray: 2 Optuna worker(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--executor", "ray", "--split-cpus", "3"], "the tasks would wait forever"),
        (["--executor", "ray", "--split-gpus", "1"], "the tasks would wait forever"),
        (["--executor", "ray", "--split-gpus", "1.5"], "a share of one GPU"),
    ],
)
def test_ray_tasks_no_node_can_hold_are_refused_before_anything_is_written(
    tiny_us8k_master, tmp_path, local_ray, capsys, flags, says
):
    assert cli.main(kfold_args(tmp_path, tiny_us8k_master, "big", 1, "--no-mlflow", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and err[-1].startswith("error: "), err
    assert not (tmp_path / "runs").exists()


def test_a_ray_address_where_nothing_listens_is_one_line(tiny_us8k_master, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = kfold_args(
        tmp_path,
        tiny_us8k_master,
        "nowhere",
        1,
        "--no-mlflow",
        "--executor",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
    )
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing answers there" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_tune_workers_with_a_storage_that_refuses_leave_no_study_folder(tiny_us8k_master, tmp_path, local_ray, capsys):
    args = tune_args(tmp_path, tiny_us8k_master, "postgresql://nobody:x@127.0.0.1:1/db", 2, "--workers", "2")
    assert cli.main(args) == 2
    assert "--storage" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tune-shared").exists()


def test_tune_workers_stopped_with_sigterm_record_their_trials_interrupted(tiny_us8k_master, tmp_path):
    """SIGTERM (or Ctrl-C) to `tune --workers 2`: the trials the workers were running are failed as
    interrupted at once (not counted, not left RUNNING for the heartbeat), their MLflow runs and the
    study run KILLED; the same command then continues the study to exactly --trials."""
    import subprocess

    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from bench.drivers.study import counts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        a
        for a in tune_args(tmp_path, tiny_us8k_master, None, 4, "--workers", "2", "--set", "train.epochs=200")
        if a != "--no-mlflow"
    ] + ["--tracking-uri", uri]
    db = tmp_path / "runs/tune-shared/study.db"
    p = subprocess.Popen(
        [sys.executable, "cli.py", *args],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + DEADLINE
        while True:  # until both workers are inside a trial (one may finish it before the signal lands)
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < end, "the workers never started their trials"
            if db.exists():
                with contextlib.suppress(Exception):
                    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}")
                    if (
                        sum(
                            t.state == optuna.trial.TrialState.RUNNING and "mlflow_run" in t.user_attrs
                            for t in study.get_trials(deepcopy=False)
                        )
                        == 2
                    ):
                        break
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=DEADLINE)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-2000:]
    assert "interrupted with their workers (not counted)" in err
    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    stopped = [t for t in trials if t.user_attrs.get("reason") == "interrupted"]
    assert stopped and all(t.state == optuna.trial.TrialState.FAIL and not counts(t) for t in stopped), [
        (t.number, t.state.name, t.user_attrs.get("reason"), t.user_attrs.get("owner")) for t in trials
    ]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("us8k").experiment_id], run_view_type=ViewType.ALL)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs if r.info.run_name == "tune-shared"} == {"KILLED"}

    continued = subprocess.run(
        [sys.executable, "cli.py", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert continued.returncode == 0, continued.stderr[-2000:]
    assert "4 of 4 in the study" in continued.stdout
