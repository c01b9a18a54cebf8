"""The cross-validation driver `kfold` runs and every `tune` trial calls, and the split job it loops over.

prepare(cfg) (checked, nothing written) -> `Job` (bench/drivers/job.py: the folder claimed and
locked, plan files, run.json, the MLflow parent run) -> feature bank -> one `SplitJob` per split:
fit_split -> RunFolder.write_split (DONE last, with a digest) -> MLflow child run -> report from
the verified, saved predictions. A resumed run skips the splits whose
outputs verify and trains again, with a message, those that do not.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from protocols import Split

from bench.core.config import RunConfig
from bench.core.provenance import clock
from bench.core.runfolder import RunFolder
from bench.drivers.job import Job, code_version, open_parent_run, report  # noqa: F401 (imported from here too)
from bench.drivers.prepare import Prepared, check_config, prepare
from bench.tracking.layout import dataset_inputs, run_params, split_params
from bench.train.predict import MODEL_FILE, pack_model
from bench.tracking.tracker import Tracker
from bench.train.fit import SplitResult, fit_split


@dataclass
class CVResult:
    run_dir: Path
    val_acc: dict[int, float | None]  # split index -> validation accuracy of the chosen epoch
    scores: dict | None  # the report's scores; None when test folds were not scored (tune)
    quarantine: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    retrained: dict[int, str] = field(default_factory=dict)  # split -> why its saved outputs did not count

    @property
    def val_acc_mean(self) -> float:
        values = [v for v in self.val_acc.values() if v is not None]
        return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class SplitJob:
    """One split of one config: train, choose the epoch on validation, score the test fold or not."""

    split: Split
    cfg: RunConfig
    score_test: bool = True
    notes: dict = field(default_factory=dict)  # saved in split.json (nested CV: the chosen settings)

    @property
    def params(self) -> dict:
        s = self.split
        return {"split": s.index, "repeat": s.repeat, "test_fold": s.test_fold, "val_fold": s.val_fold}

    @property
    def run_name(self) -> str:
        return f"split-{self.split.index}"


def fit_job(
    job: SplitJob,
    bank: torch.Tensor,
    labels: np.ndarray,
    rows: np.ndarray,
    n_classes: int,
    on_epoch=None,
    progress: bool = False,
) -> tuple[SplitResult, float]:
    """Train `job` on the feature bank (`rows`: the plan's positions in it): the fitted split and its
    seconds. Pure computation, no files and no MLflow: it runs in this process or in a Ray task."""
    split, cfg, start = job.split, job.cfg, time.perf_counter()
    result = fit_split(
        bank,
        labels,
        rows[split.train],
        rows[split.val] if len(split.val) else None,
        rows[split.test] if job.score_test else None,
        n_classes,
        cfg,
        seed=train_seed(job),
        on_epoch=on_epoch,
        progress=progress,
    )
    return result, round(time.perf_counter() - start, 2)


def train_seed(job: SplitJob) -> int:
    return job.cfg.train.seed + job.split.index  # split numbers run on across repeats: a seed per repeat


def save_job(
    job: SplitJob, prepared: Prepared, folder: RunFolder, result: SplitResult, seconds: float, input_shape: tuple
) -> dict:
    """A fitted split's outputs written to the run folder (DONE last): split.json's info (returned),
    history, and for a scored split its predictions, confusion counts and model."""
    split, cfg, table, classes = job.split, job.cfg, prepared.plan.table, prepared.dataset.classes
    info = {
        **job.params,
        **job.notes,
        "train_seed": train_seed(job),
        "best_epoch": result.best_epoch,
        "val_acc": result.val_acc,
        "val_correct": result.val_correct,  # val_acc = val_correct / n_val
        "test_acc": None,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "fit_seconds": seconds,
    }
    predictions = confusion = None
    if result.test_probs is not None:
        from reports.confusion import confusion_counts

        test = table.iloc[split.test]
        pred = result.test_probs.argmax(axis=1)
        info["test_acc"] = float((pred == test["label"].to_numpy()).mean())
        predictions = pd.DataFrame(
            {"clip": test["clip"].to_numpy(), "fold": split.test_fold, "label": test["label"].to_numpy(), "pred": pred}
        )
        for c, name in enumerate(classes):
            predictions[f"prob_{name}"] = result.test_probs[:, c].round(6)
        confusion = confusion_counts(predictions)
    history = pd.DataFrame(result.history, columns=["epoch", "train_loss", "val_acc", "lr"])
    # the chosen weights, for scored splits only (a study's thousands of trials keep none)
    model = pack_model(result, cfg, classes, input_shape, info) if job.score_test else None
    folder.write_split(split.index, info, history, predictions, confusion, model=model)
    return info


def run_split(
    job: SplitJob,
    prepared: Prepared,
    folder: RunFolder,
    tracker: Tracker,
    parent_run: str | None,
    progress: bool,
    resume: bool = False,
    fitted: tuple[SplitResult, float] | None = None,
) -> dict:
    """Fit one split, save its outputs (DONE last) and mirror them to the split's MLflow run.
    `resume`: `parent_run` was reopened, so it may hold a killed attempt's run of this split.
    `fitted`: the split already trained elsewhere (a Ray task); its learning curve is logged here."""
    name = job.run_name
    if resume and parent_run:  # a killed attempt's run would mix two learning curves: replaced
        tracker.delete(tracker.child_run(parent_run, name, {"split": job.split.index}))
    params = split_params(run_params(job.cfg, prepared), job.params)  # the job's params and this split's
    with tracker.run(name, params=params, parent=parent_run, tags={"split": job.split.index}) as child:
        tracker.log_inputs(child, lambda: dataset_inputs(prepared, folder.path / "folds.csv"))

        def on_epoch(epoch, train_loss, val_acc):  # queued: a slow store never holds up training
            tracker.log_metrics(child, {"train_loss": train_loss, "val_acc": val_acc}, step=epoch, asynchronous=True)

        bank = prepared.bank(job.cfg, progress)
        if fitted is None:
            fitted = fit_job(
                job, bank, prepared.labels, prepared.plan.rows, len(prepared.dataset.classes), on_epoch, progress
            )
        else:
            for row in fitted[0].history:
                on_epoch(row["epoch"], row["train_loss"], row["val_acc"])
        info = save_job(job, prepared, folder, *fitted, tuple(bank.shape[1:]))
        _log_split(tracker, child, job, folder, info)
    return info


def _log_split(tracker: Tracker, child: str | None, job: SplitJob, folder: RunFolder, info: dict) -> None:
    """A finished split's final figures and files on its MLflow run."""
    tracker.log_metrics(
        child,
        {"test_acc": info["test_acc"], "best_epoch": info["best_epoch"], "best_val_acc": info["val_acc"]},
        step=job.cfg.train.epochs,
    )
    if job.score_test:
        names = ("predictions.csv", "confusion_counts.csv")
        tracker.log_files(child, [folder.split_dir(job.split.index) / n for n in names])
        tracker.log_model(
            child,
            folder.split_dir(job.split.index) / MODEL_FILE,
            job.run_name,
            params={"split": job.split.index, "test_fold": job.split.test_fold, "best_epoch": info["best_epoch"]},
            step=job.cfg.train.epochs,
        )


def _mirror_finished(
    job: SplitJob, prepared: Prepared, folder: RunFolder, tracker: Tracker, parent_run: str | None, info: dict
) -> None:
    """On resume, a split finished on disk whose MLflow run is missing or was killed before it
    was closed (kill -9 right after DONE) gets its figures and files, and ends FINISHED."""
    if not (tracker.enabled and parent_run):
        return
    child = tracker.child_run(parent_run, job.run_name, {"split": job.split.index})
    if tracker.finished(child):
        return
    params = split_params(run_params(job.cfg, prepared), job.params)
    with tracker.run(
        job.run_name, params=params, parent=parent_run, run_id=child, tags={"split": job.split.index}
    ) as run:
        _log_split(tracker, run, job, folder, info)


def run_cv(
    cfg: RunConfig,
    on_split: Callable[[Split, dict], None] | None = None,
    *,
    prepared: Prepared | None = None,
    score_test: bool = True,
    resume: bool = False,
    tracker: Tracker | None = None,
    parent_run: str | None = None,
    progress: bool = True,
    engine: Callable | None = None,
) -> CVResult:
    """Cross-validate `cfg` into `runs_dir/name`; `on_split(split, info)` after each split.

    `prepared` (tune: once per study) must come from a config with the same dataset, audio and
    protocol; `score_test=False` (tune) never predicts a test fold. `parent_run` nests the split runs
    under an MLflow run the caller owns; otherwise this job has its own parent (reopened on resume).
    `engine(jobs, prepared, folder, tracker, parent_run, progress, resume)` yields (job, info) as each
    job's split is saved: `local_jobs` (one after another, here) unless given (`bench.scale.ray_engine`).
    """
    began = clock()  # run.json: the job's start, before its data is loaded
    if prepared is None:
        prepared = prepare(cfg, progress=progress, tracking=tracker is None)
    else:
        check_config(cfg)  # a tune trial's own features, model and training settings
    chosen = prepared.chosen(cfg.splits)
    tracker = tracker or prepared.tracker or Tracker(cfg.tracking, experiment=prepared.dataset.name)
    val_acc: dict[int, float | None] = {}
    retrained: dict[int, str] = {}
    lifecycle = Job(cfg, prepared, tracker, resume=resume, began=began, parent_run=parent_run, progress=progress)
    with lifecycle as job:
        job.start()
        if job.own:
            tracker.set_tags(job.run, {"torch_threads": job.threads.threads})  # not a param: see run.json
        with tqdm(total=len(chosen), desc=f"splits ({cfg.name})", unit="split", disable=not progress) as bar:

            def finished(split: Split, info: dict) -> None:
                val_acc[split.index] = info["val_acc"]
                bar.update()
                if on_split is not None:
                    on_split(split, info)

            todo = _to_train(job, chosen, score_test, finished, retrained)
            for split_job, info in (engine or local_jobs)(
                todo, prepared, job.folder, tracker, job.run, progress, resume
            ):
                finished(split_job.split, info)
        job.note_threads(getattr(engine, "setup", None))  # Ray: the tasks' threads, not this process's
        job.trained()  # training's end, which the report shows
        scores = report(job.folder, tracker, job.run if job.own else None) if score_test else None
    return CVResult(job.folder.path, val_acc, scores, prepared.quarantine, prepared.plan.warnings, retrained)


def _to_train(job: Job, chosen: list[Split], score_test: bool, finished, retrained: dict[int, str]) -> list[SplitJob]:
    """The split jobs still to train. A resumed split whose outputs verify is kept: `finished` hears
    of it, and its MLflow run is completed if a kill left it open; one that does not verify is
    trained again, its reason in `retrained` and on stderr."""
    cfg, todo = job.cfg, []
    reasons = job.reasons([s.index for s in chosen], score_test)
    for split in chosen:
        reason = reasons[split.index]
        if reason is None:
            info = job.folder.read_split_info(split.index)
            _mirror_finished(SplitJob(split, cfg, score_test), job.prepared, job.folder, job.tracker, job.run, info)
            finished(split, info)
            continue
        if reason != "not finished":
            retrained[split.index] = reason
            print(f"split {split.index}: {reason}; training it again", file=sys.stderr)
        todo.append(SplitJob(split, cfg, score_test))
    return todo


def local_jobs(
    jobs: list[SplitJob],
    prepared: Prepared,
    folder: RunFolder,
    tracker: Tracker,
    parent_run: str | None,
    progress: bool,
    resume: bool,
) -> Iterator[tuple[SplitJob, dict]]:
    """The split jobs one after another in this process."""
    for job in jobs:
        yield job, run_split(job, prepared, folder, tracker, parent_run, progress, resume)
