"""The job lifecycle every driver shares (bench/drivers/job.py): the run folder claimed and released,
run.json's attempt and the MLflow parent run ended with the job's status, resume decided, and a
folder of another command refused; and `RunFolder.kind`, the one place that says what a folder is."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import fast_config
from bench.core.provenance import read_run_json
from bench.core.runfolder import RunFolder, RunFolderError, latest_run
from bench.drivers import job as job_module
from bench.drivers.job import Job, ending


class FakeTracker:
    """What the lifecycle asks of a tracker, recorded."""

    enabled, experiment_id = True, "0"

    def __init__(self):
        self.ended: dict[str, str] = {}
        self.tags: dict[str, dict] = {}

    def end(self, run, status="FINISHED"):
        if run:
            self.ended[run] = status

    def set_tags(self, run, tags):
        self.tags.setdefault(run, {}).update(tags)


def stub_prepared() -> SimpleNamespace:
    """The plan a job writes before anything else: 4 clips in 2 folds, nothing quarantined."""
    table = pd.DataFrame(
        {"clip": ["a", "b", "c", "d"], "path": list("abcd"), "label": [0, 1, 0, 1], "class": list("xyxy")}
    )
    folds = np.array([1, 1, 2, 2])
    plan = SimpleNamespace(table=table, repeat_folds=[folds])
    record = {"protocol": "stub", "splits": [{"split": 1}, {"split": 2}]}
    return SimpleNamespace(plan=plan, plan_record=lambda: record, quarantine=pd.DataFrame({"clip": [], "reason": []}))


@pytest.fixture
def parent_runs(monkeypatch):
    """open_parent_run replaced: run ids run-1, run-2, ... (mlflow.json written as the real one does)."""
    opened = []

    def fake_open(cfg, prepared, folder, tracker, resume, kind="kfold", searched=()):
        opened.append(kind)
        run = f"run-{len(opened)}"
        folder.write_json("mlflow.json", {"parent": run, "experiment": tracker.experiment_id})
        return run

    monkeypatch.setattr(job_module, "open_parent_run", fake_open)
    return opened


def attempts(run_dir) -> list[str]:
    return [a["status"] for a in read_run_json(run_dir)["attempts"]]


def test_ending_status():
    assert ending(None) == "FINISHED"
    assert ending(KeyboardInterrupt()) == "KILLED"
    assert ending(RuntimeError("x")) == "FAILED"


def test_a_finished_job_ends_its_run_and_attempt_finished(tmp_path, parent_runs):
    cfg, tracker = fast_config(tmp_path, name="ok"), FakeTracker()
    with Job(cfg, stub_prepared(), tracker, progress=False) as job:
        job.start()
        assert job.run == "run-1" and attempts(job.folder.path) == ["running"]
        job.trained()
    assert tracker.ended == {"run-1": "FINISHED"}
    assert attempts(job.folder.path) == ["finished"]
    assert json.loads((job.folder.path / "mlflow.json").read_text())["parent"] == "run-1"
    assert job.folder._lock_fd is None  # released


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_an_exception_ends_the_run_and_attempt_with_its_status(tmp_path, parent_runs, error, status):
    cfg, tracker = fast_config(tmp_path, name="bad"), FakeTracker()
    with pytest.raises(type(error)):
        with Job(cfg, stub_prepared(), tracker, progress=False) as job:
            job.start()
            job.folder.keep()  # (a new folder with nothing finished would be removed on failure)
            raise error
    assert tracker.ended == {"run-1": status}
    assert attempts(job.folder.path) == [status.lower()]


def test_a_failure_after_training_replaces_the_finished_attempt(tmp_path, parent_runs):
    """kfold records training's end before the report; a report that fails then marks it failed."""
    cfg, tracker = fast_config(tmp_path, name="report-fails"), FakeTracker()
    with pytest.raises(OSError):
        with Job(cfg, stub_prepared(), tracker, progress=False) as job:
            job.start()
            job.folder.keep()
            job.trained()
            raise OSError("disk full while writing the report")
    assert tracker.ended == {"run-1": "FAILED"} and attempts(job.folder.path) == ["failed"]


def test_a_new_folder_with_nothing_finished_is_removed_after_a_failure(tmp_path, parent_runs):
    cfg = fast_config(tmp_path, name="gone")
    with pytest.raises(RuntimeError):
        with Job(cfg, stub_prepared(), FakeTracker(), progress=False) as job:
            job.start()
            raise RuntimeError("boom")
    assert not job.folder.path.exists()


def test_a_resumed_job_appends_an_attempt_and_reopens_its_parent(tmp_path, parent_runs):
    cfg, tracker = fast_config(tmp_path, name="again"), FakeTracker()
    with pytest.raises(KeyboardInterrupt):
        with Job(cfg, stub_prepared(), tracker, progress=False) as job:
            job.start()
            job.folder.keep()
            raise KeyboardInterrupt
    with Job(cfg, stub_prepared(), tracker, resume=True, progress=False) as job:
        job.start()
        assert job.reasons([1, 2]) == {1: "not finished", 2: "not finished"}
        job.trained()
    assert attempts(job.folder.path) == ["killed", "finished"]
    assert tracker.ended == {"run-1": "KILLED", "run-2": "FINISHED"}


def test_a_job_under_a_callers_run_records_nothing_of_its_own(tmp_path, parent_runs):
    """A tune trial or nested's non-nested kfold: no run.json, no parent run, the caller's run kept open."""
    cfg, tracker = fast_config(tmp_path, name="trial"), FakeTracker()
    with pytest.raises(RuntimeError):
        with Job(cfg, stub_prepared(), tracker, parent_run="caller", progress=False) as job:
            job.start()
            assert job.run == "caller"
            job.folder.keep()
            raise RuntimeError("boom")
    assert tracker.ended == {} and parent_runs == []
    assert not (job.folder.path / "run.json").exists()


def test_resume_refuses_the_other_commands_run(tmp_path, parent_runs):
    cfg = fast_config(tmp_path, name="n1")
    with Job(cfg, stub_prepared(), FakeTracker(), kind="nested", progress=False) as job:
        job.start(records={"search.json": {"trials": 2}})
        job.folder.keep()
    assert RunFolder(job.folder.path).kind() == "nested"
    with pytest.raises(RunFolderError, match="a nested run; continue it with `nested --resume --name n1`"):
        with Job(cfg, stub_prepared(), FakeTracker(), resume=True, progress=False):
            pass
    assert (job.folder.path / "search.json").exists()  # nothing of the refused resume touched it


def test_kind_is_decided_in_one_place(tmp_path):
    runs = tmp_path / "runs"
    for name, files in {
        "k": ["config.yaml"],
        "n": ["config.yaml", "search.json"],
        "n-early": ["config.yaml", "inner/"],
        "t": ["study.db"],
        "t-server": ["trials/"],
    }.items():
        for f in files:
            path = runs / name / f
            if f.endswith("/"):
                path.mkdir(parents=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("dataset: {name: us8k}\n")
    kinds = {p.name: RunFolder(p).kind() for p in runs.iterdir()}
    assert kinds == {"k": "kfold", "n": "nested", "n-early": "nested", "t": "tune", "t-server": "tune"}
    assert latest_run(runs, "us8k") == "k" and latest_run(runs, "us8k", nested=True) in ("n", "n-early")


def test_records_carry_their_own_digest(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_record("search.json", {"trials": 3})
    assert folder.read_record("search.json") == ({"trials": 3}, "ok")
    saved = json.loads((tmp_path / "search.json").read_text())
    (tmp_path / "search.json").write_text(json.dumps({**saved, "trials": 4}))
    assert folder.read_record("search.json") == ({}, "unverified")
    (tmp_path / "search.json").write_text(json.dumps({"trials": 4}))  # as an older foldbench wrote it
    assert folder.read_record("search.json") == ({"trials": 4}, "undigested")
    assert folder.read_record("absent.json") == ({}, "missing")


def test_kfold_interrupted_ends_its_mlflow_parent_killed_and_run_json_killed(tmp_path, tiny_us8k_master):
    """The real thing: run_cv interrupted after its first split, with an MLflow store."""
    from mlflow.tracking import MlflowClient

    from bench.drivers.kfold import run_cv

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = fast_config(
        tmp_path,
        tiny_us8k_master,
        name="interrupted",
        **{"tracking.mlflow": True, "tracking.tracking_uri": uri, "train.epochs": 1, "splits": [1, 2]},
    )

    def stop(split, info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, stop, progress=False)
    run_dir = tmp_path / "runs" / "interrupted"
    parent = json.loads((run_dir / "mlflow.json").read_text())["parent"]
    assert MlflowClient(tracking_uri=uri).get_run(parent).info.status == "KILLED"
    assert attempts(run_dir) == ["killed"]
    assert RunFolder(run_dir).done() == [1]  # the finished split is kept for --resume
