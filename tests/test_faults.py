"""Faults end in one line and a documented exit status (docs/faults.md), issue 19 items 5 and 8:
a full disk (exit 3, the folder named, finished splits kept), Ctrl-C in every command (exit 130,
no traceback), and a storage or tracking URL's password in no message, file or MLflow record."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import cli
from bench.drivers import kfold as cv_mod
from bench.core.redact import redact
from bench.drivers.study import storage_url
from conftest import FAST

REPO = Path(__file__).resolve().parents[1]
SECRET = "Pa55wordThatMustNotShow"
PG = os.environ.get("FOLDBENCH_TEST_PG")  # .ci/run starts PostgreSQL and sets it
# (helpers of their own: `tests.test_*` imports find baycomp's stray top-level `tests` package when installed)


def fast_flags(tmp_path: Path, root: Path) -> list[str]:
    flags = [
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--threads",
        "1",
    ]
    for key, value in FAST.items():
        if key != "tracking.mlflow":
            flags += ["--set", f"{key}={value}"]
    return flags


def tune_args(tmp_path: Path, root: Path, *, mlflow: bool = False) -> list[str]:
    """One tiny trial on splits 1,2 of a two-value space."""
    space = tmp_path / "space.yaml"
    space.write_text("features.n_mels: [16, 32]\naugment.freq_masks: {low: 0, high: 1}\n")
    args = [
        "tune",
        *fast_flags(tmp_path, root),
        "--space",
        str(space),
        "--splits",
        "1,2",
        "--trials",
        "1",
        "--epochs",
        "1",
    ]
    if mlflow:
        return args + ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "tiny"]
    return args + ["--no-mlflow"]


@pytest.fixture
def pg_database():
    """The URL of a fresh PostgreSQL database beside FOLDBENCH_TEST_PG's, dropped after the test."""
    import uuid

    import sqlalchemy as sa

    if not PG:
        pytest.skip("FOLDBENCH_TEST_PG is unset (.ci/run starts PostgreSQL and sets it)")
    name = f"foldbench_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(storage_url(PG), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as con:
            con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        pytest.skip(f"PostgreSQL at FOLDBENCH_TEST_PG cannot be reached: {type(e).__name__}")
    try:
        yield sa.engine.make_url(PG).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# ---- 5. disk full while writing a split ----


def test_a_full_disk_is_one_line_exit_3_naming_the_folder_and_resume_finishes(
    tiny_us8k_master, tmp_path, monkeypatch, capfd
):
    """The write of split 2's predictions fails with ENOSPC (the real atomic-write path, only the
    bytes' landing patched): exit 3, one line naming split 2's folder, split 1 kept; --resume
    trains splits 2 and 3 only."""
    flags = [
        "kfold",
        *fast_flags(tmp_path, tiny_us8k_master),
        "--name",
        "full",
        "--no-mlflow",
        "--splits",
        "1,2,3",
        "--epochs",
        "1",
    ]
    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self, path=None, *a, **kw):
        if path is not None and Path(path).parent.match("splits/2"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk fails
        return real_to_csv(self, path, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    assert cli.main(flags) == 3
    line = one_line(capfd.readouterr().err)
    run = tmp_path / "runs" / "full"
    assert str((run / "splits" / "2").resolve()) in line
    assert "No space left on device" in line and "finished splits are kept" in line and "--resume" in line
    assert sorted(p.parent.name for p in run.glob("splits/*/DONE")) == ["1"]
    assert not list(run.rglob("*.tmp"))

    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)
    trained = []
    real_fit = cv_mod.fit_split
    monkeypatch.setattr(cv_mod, "fit_split", lambda *a, **kw: trained.append(1) or real_fit(*a, **kw))
    assert cli.main([*flags, "--resume"]) == 0
    assert len(trained) == 2
    assert sorted(p.parent.name for p in run.glob("splits/*/DONE")) == ["1", "2", "3"]


# ---- Ctrl-C in every command ----


def _stop(*a, **kw):
    raise KeyboardInterrupt


TRAINING = ("kfold", "tune", "nested", "suite")  # interrupted inside a split's training
ELSEWHERE = {  # command line -> the function it runs, interrupted
    "compare": (["compare", "runs/a", "runs/b", "--no-mlflow"], "reports.compare.compare_runs"),
    "report": (["report", "runs/a"], "reports.render.rebuild"),
    "predict": (["predict", "--run", "runs/a", "x.wav"], "bench.train.predict.predict_files"),
    "datasets check": (["datasets", "check", "--dataset", "demo"], "bench.drivers.check.check_dataset"),
    "speed": (["speed", "--dataset", "demo"], "bench.drivers.speed.run_speed"),
}
SAID = {
    "kfold": "finished splits are kept; continue with --resume",
    "nested": "finished outer splits and trials are kept; continue with --resume",
    "suite": "finished entries and splits are kept; continue with --resume",
    "tune": "finished trials are kept; run the same command to continue the study",
}


def training_args(command: str, tmp_path: Path, root: Path) -> list[str]:
    if command == "tune":
        return tune_args(tmp_path, root)
    args = [command, *fast_flags(tmp_path, root), "--no-mlflow", "--epochs", "1", "--splits", "1"]
    if command == "nested":
        return [*args, "--trials", "1", "--inner-splits", "1", "--no-non-nested"]
    return [*args, "--presets", "seed"] if command == "suite" else args


@pytest.mark.parametrize("command", [*TRAINING, *ELSEWHERE])
def test_ctrl_c_in_every_command_is_one_line_and_exit_130(command, tiny_us8k_master, tmp_path, monkeypatch, capfd):
    """Ctrl-C (KeyboardInterrupt) deep inside each command: exit 130 and one line that says what is
    kept and how to go on, fitting the command (nothing to --resume for report, compare, ...)."""
    if command in TRAINING:
        args = training_args(command, tmp_path, tiny_us8k_master)
        monkeypatch.setattr(cv_mod, "fit_split", _stop)
    else:
        args, target = ELSEWHERE[command]
        monkeypatch.setattr(target, _stop)
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 130
    err = capfd.readouterr().err
    if command == "tune":  # Optuna's own "Trial 0 failed ... KeyboardInterrupt()" line: bench/drivers/tune.py's
        err = "\n".join(line for line in err.splitlines() if "KeyboardInterrupt()" not in line)
    assert one_line(err) == "interrupted: " + SAID.get(command, "no file is half-written; run the command again")


IMPORT_HOOK = r"""
import importlib.abc, os, signal, sys
class CtrlC(importlib.abc.MetaPathFinder):  # Ctrl-C pressed while torch is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
sys.argv = ["cli.py", *sys.argv[1:]]
import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_while_a_command_starts_is_one_line(tmp_path):
    """A real SIGINT in the first seconds (the heavy imports): exit 130, no traceback."""
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_HOOK,
            "kfold",
            "--dataset",
            "demo",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--no-mlflow",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 130, p.stderr[-3000:]
    assert one_line(p.stderr) == "interrupted: finished splits are kept; continue with --resume"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- 8. credentials in URLs ----


def test_redact_hides_url_passwords_and_password_values():
    assert redact(f"postgresql://ann:{SECRET}@db:5432/optuna") == "postgresql://ann:***@db:5432/optuna"
    assert redact(f"x http://u:{SECRET}@h:5000/ y@z") == "x http://u:***@h:5000/ y@z"
    assert redact(f"host=db password={SECRET} user=ann") == "host=db password=*** user=ann"
    assert redact("sqlite:///runs/mlflow.db a@b") == "sqlite:///runs/mlflow.db a@b"


@pytest.mark.parametrize(
    "flag,url",
    [
        ("--storage", f"postgresql://foldbench:{SECRET}@127.0.0.1:9/foldbench"),  # nothing listens on port 9
        ("--tracking-uri", f"http://foldbench:{SECRET}@127.0.0.1:9/"),
        ("--tracking-uri", f"postgresql://foldbench:{SECRET}@127.0.0.1:9/mlflow"),
    ],
)
def test_a_refused_url_is_shown_without_its_password(flag, url, tiny_us8k_master, tmp_path, capfd):
    args = [a for a in tune_args(tmp_path, tiny_us8k_master) if a != "--no-mlflow"] + [flag, url]
    assert cli.main(args) == 2
    captured = capfd.readouterr()
    line = one_line(captured.err)
    assert SECRET not in captured.err + captured.out and ":***@127.0.0.1:9" in line


def test_postgres_refused_login_and_a_finished_run_keep_the_password_out(
    pg_database, tiny_us8k_master, tmp_path, capfd
):
    """A real refused login (a wrong password in --storage), then a kfold run whose MLflow store is
    PostgreSQL with the password in --tracking-uri: the password is in no output, run.json,
    config.yaml, MLflow tag or param; --resume asks for the URI again (config.yaml keeps no password)."""
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    url = sa.engine.make_url(pg_database)
    args = tune_args(tmp_path, tiny_us8k_master)
    assert cli.main([*args, "--storage", url.set(password=SECRET).render_as_string(hide_password=False)]) == 2
    captured = capfd.readouterr()
    assert "password authentication failed" in one_line(captured.err)
    assert SECRET not in captured.err + captured.out

    uri = url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    kfold = [
        "kfold",
        *fast_flags(tmp_path, tiny_us8k_master),
        "--name",
        "pg",
        "--splits",
        "1",
        "--epochs",
        "1",
        "--experiment",
        "tiny",
    ]
    assert cli.main([*kfold, "--tracking-uri", uri]) == 0
    captured = capfd.readouterr()
    leak = f"{url.username}:{url.password}@"  # the role's real password, as the URL holds it
    assert leak not in captured.err + captured.out
    run = tmp_path / "runs" / "pg"
    for name in ("run.json", "config.yaml"):
        assert ":***@" in (run / name).read_text()
    assert not [p for p in run.rglob("*") if p.is_file() and leak.encode() in p.read_bytes()]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 2  # the job and its split
    for r in runs:
        assert leak not in json.dumps({**r.data.tags, **r.data.params})
    assert cli.main([*kfold, "--resume"]) == 2
    assert "give --tracking-uri with the password again" in one_line(capfd.readouterr().err)


def test_an_unknown_flag_is_echoed_without_its_password(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["nested", "--dataset", "demo", "--storage", f"postgresql://u:{SECRET}@127.0.0.1:9/db"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --storage postgresql://u:***@127.0.0.1:9/db" in err
    assert SECRET not in err
