"""`Job`: one job's lifecycle, shared by every driver (kfold, tune, nested, and suite through kfold).

    with Job(cfg, prepared, tracker, resume=resume, kind="kfold", began=clock()) as job:
        job.start()                      # plan files, threads, run.json's attempt, the MLflow parent run
        reasons = job.reasons(splits)    # resume: why each split is trained again (None: it is kept)
        ...                              # the driver's loop over split jobs, into job.folder, under job.run
        job.trained()                    # run.json: training's end (the report shows it)
    # on exit: run.json's attempt and the MLflow parent run end FINISHED, FAILED (an exception) or
    # KILLED (Ctrl-C, SIGTERM); the folder is released (a new one with nothing finished is removed)

Entering claims the run folder (`RunFolder.claim`: created, or resumed with the same settings, and
locked) and refuses to resume another command's run (`RunFolder.kind` decides what a folder is).
A job given `parent_run` belongs to its caller (a tune trial, nested's non-nested kfold): its splits
go under that run, and it records no run.json and opens no run of its own. A tune study (`kind`
"tune", `folder` given) shares its folder with other workers instead of claiming it (the study's
storage arbitrates between them); its run is the study run, opened by the driver (`adopt`).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from bench.core.config import RunConfig
from bench.core.provenance import Attempt, clock
from bench.core.runfolder import RunFolder, RunFolderError
from bench.drivers.prepare import Prepared
from bench.tracking.layout import dataset_inputs, run_params
from bench.tracking.tracker import Tracker


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe` of the running code (once per process: each job and study asks for it)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ending(exc: BaseException | None) -> str:
    """The status a job ends with: FINISHED, KILLED (Ctrl-C; SIGTERM is raised as one) or FAILED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


class Job:
    """One job over one run folder: see the module's docstring."""

    def __init__(
        self,
        cfg: RunConfig,
        prepared: Prepared | None,
        tracker: Tracker,
        *,
        resume: bool = False,
        kind: str = "kfold",
        began: tuple[str, float] | None = None,
        parent_run: str | None = None,
        progress: bool = True,
        folder: Path | None = None,
    ):
        self.cfg, self.prepared, self.tracker, self.resume, self.kind = cfg, prepared, tracker, resume, kind
        self.began, self.progress, self._shared = began or clock(), progress, folder
        self.own = parent_run is None  # this job's own MLflow run and run.json attempt
        self.run: str | None = parent_run  # the run its splits (or trials) go under
        self.folder: RunFolder | None = None
        self.attempt: Attempt | None = None
        self.threads = None
        self.status = "FINISHED"
        self._trained = False

    # ---- the folder ----

    def __enter__(self) -> "Job":
        self.folder = (
            RunFolder.shared(self._shared) if self._shared is not None else RunFolder.claim(self.cfg, self.resume)
        )
        try:
            self._check_kind()
        except BaseException:
            self.folder.release(failed=True)
            raise
        return self

    def _check_kind(self) -> None:
        """A resumed folder must be this command's run (a nested run killed before its search.json
        looks like a kfold run with no finished split: nested continues it)."""
        found, path = self.folder.kind(), self.folder.path
        if not self.resume or found == self.kind or self.kind == "tune":
            return
        if found == "nested":  # its splits were trained with other settings each
            raise RunFolderError(
                f"--resume {path}: a nested run; continue it with `nested --resume --name {path.name}`"
            )
        if self.kind == "nested" and self.folder.done():
            raise RunFolderError(
                f"--resume {path}: a kfold run, not a nested one; continue it "
                f"with `kfold --resume`, or give nested another --name"
            )

    def start(self, searched=(), records: dict[str, dict] | None = None) -> None:
        """The fold plan's files (a resumed run must see the same plan), `records` (name -> a record
        with its own digest: nested's search.json), the torch threads, and for a job of its own
        run.json's attempt and its MLflow parent run (reopened on resume). `searched`: config keys
        chosen per outer split (nested CV), not params of the job."""
        p = self.prepared
        self.folder.write_plan(p.plan.table, p.plan.repeat_folds, p.plan_record(), p.quarantine)
        for name, record in (records or {}).items():
            self.folder.write_record(name, dict(record))
        from bench.core.threads import apply as set_threads  # 0 (auto): one per free core, measured once

        announce = functools.partial(print, file=sys.stderr) if self.progress else None
        self.threads = set_threads(self.cfg.train.threads, announce)  # recorded: results differ by count
        if self.own:
            self.attempt = Attempt.begin(self.folder.path, self.resume, code_version(), self.began, str(self.threads))
            self.run = open_parent_run(self.cfg, p, self.folder, self.tracker, self.resume, self.kind, searched)

    def adopt(self, run: str | None, key: str = "study") -> None:
        """Own `run` (a tune study's run, opened by its driver): ended with the job's status, and
        kept in mlflow.json under `key` (when there is a run)."""
        self.run = run
        if run:
            self.folder.write_json("mlflow.json", {key: run})

    def reasons(self, splits, score_test: bool = True) -> dict[int, str | None]:
        """Why each of `splits` is trained: 'not finished', or why its saved outputs do not count
        (a resumed run trains it again); None: it verifies and is kept."""
        if not (self.resume and self.folder.done()):  # (nothing finished: no plan to check against)
            return {k: "not finished" for k in splits}
        digest = self.folder.settings_digest()  # once, for every split's check
        return {k: self.folder.problem(k, score_test, digest) for k in splits}

    def note_threads(self, setup: str | None) -> None:
        """The threads the training really ran with (Ray tasks: theirs, not this process's)."""
        if setup and self.attempt:
            self.attempt.note(threads=setup)
            self.tracker.set_tags(self.run, {"torch_threads": setup})

    def trained(self) -> None:
        """run.json: the training ended (what the report shows); a failure after it replaces it."""
        if self.attempt:
            self.attempt.end("FINISHED")
        self._trained = True

    def __exit__(self, exc_type, exc, tb) -> None:
        self.status = ending(exc)
        try:
            if self.attempt and not (self._trained and self.status == "FINISHED"):
                self.attempt.end(self.status)
        finally:
            try:
                if self.own:
                    self.tracker.end(self.run, self.status)
            finally:
                self.folder.release(failed=exc_type is not None)


def open_parent_run(
    cfg: RunConfig,
    prepared: Prepared,
    folder: RunFolder,
    tracker: Tracker,
    resume: bool,
    kind: str = "kfold",
    searched=(),
) -> str | None:
    """This job's MLflow run, reopened on resume, with the runs a killed job left RUNNING closed.
    `searched`: config keys chosen per outer split (nested CV), not params of the job."""
    old = folder.read_json("mlflow.json").get("parent") if resume else None
    plan = prepared.plan
    params = run_params(cfg, prepared, leave_out=searched)
    run = tracker.start(
        cfg.name,
        params=params,
        run_id=old,
        tags={
            "kind": kind,
            "dataset": prepared.dataset.name,
            "dataset_fingerprint": prepared.fingerprint,
            "protocol": repr(plan.protocol),
            "leaky": plan.leaky,
            "code_version": code_version(),
            "run_folder": str(folder.path.resolve()),
            "quarantined": len(prepared.quarantine),
        },
    )
    if run:
        if old == run:
            tracker.close_running(run)
        else:
            tracker.log_inputs(run, lambda: dataset_inputs(prepared, folder.path / "folds.csv"))
        folder.write_json("mlflow.json", {"parent": run, "experiment": tracker.experiment_id})
    return run


def report(folder: RunFolder, tracker: Tracker, parent_run: str | None) -> dict:
    """report.md and scores.json from the verified predictions, mirrored to `parent_run`."""
    from reports import build_report

    scores = build_report(folder.path)
    tracker.log_metrics(
        parent_run,
        {
            k: scores.get(k)
            for k in ("acc_mean", "acc_std", "macro_f1_mean", "acc_ci95_low", "acc_ci95_high", "acc_repeat_std")
        },
    )  # the last: repeats only
    # per-split accuracy as one metric over steps: a line per run in MLflow's charts, split on x
    tracker.log_series(parent_run, "acc_fold", {row["split"]: row["accuracy"] for row in scores["per_fold"]})
    tracker.log_files(
        parent_run,
        sorted(
            p
            for p in folder.path.iterdir()
            if p.is_file()
            and p.suffix in (".md", ".html", ".png", ".csv", ".json", ".yaml")
            and p.name != "mlflow.json"
        ),
    )
    return scores
