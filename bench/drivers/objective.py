"""The objective of a `tune` trial: one `run_cv` over the chosen splits, validation accuracy only.

`Objective(trial)` runs the config + the trial's suggestions in `<study folder>/trials/<number>/`
(tests never scored), reports the exact running mean of validation accuracy after each split for
Optuna's pruner, and mirrors the trial to an MLflow run under the study's. The study loop that
calls it: bench/drivers/tune.py.
"""

from __future__ import annotations

import shutil
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import optuna

from bench.core.config import RunConfig, dump_yaml, flatten, merge
from bench.core.runfolder import RunFolder
from bench.drivers.kfold import run_cv
from bench.drivers.prepare import Prepared, prepare
from bench.drivers.space import apply_params, suggest
from bench.drivers.study import counts, frozen, holding, priority
from bench.drivers.tune_options import check_validation
from bench.features.bank import FeatureError, check_features
from bench.tracking.layout import run_params
from bench.tracking.tracker import Tracker


def mean_fraction(counts: list[tuple[int, int]]) -> Fraction:
    """The mean of the splits' validation accuracies correct/total, exactly."""
    return sum((Fraction(c, n) for c, n in counts), Fraction(0)) / len(counts)


def record_counts(trial: optuna.Trial, counts: list[tuple[int, int, int]]) -> Fraction:
    """Keep the splits' (split, correct, total) so far and their exact mean as user attrs
    (`val_counts`, `val_acc_mean_num` / `val_acc_mean_den`); returns the mean."""
    mean = mean_fraction([(c, n) for _, c, n in counts])
    trial.set_user_attr("val_counts", [list(x) for x in counts])
    trial.set_user_attr("val_acc_mean_num", mean.numerator)
    trial.set_user_attr("val_acc_mean_den", mean.denominator)
    return mean


# A retry's user attrs copied from the trial it retries, that are the killed trial's, not its own.
RETRY_RESET = (
    "admitted",
    "val_counts",
    "val_acc_mean_num",
    "val_acc_mean_den",
    "mlflow_run",
    "owner",
    "worker",
    "reason",
)


class Objective:
    """`objective(trial)`: mean validation accuracy of `cfg` + the trial's suggestions, one
    `run_cv(score_test=False)` in `<folder>/trials/<number>/`, mirrored to an MLflow run. The mean
    is exact (`mean_fraction` of the clips each split got right); Optuna gets the float nearest it.
    `status(text)`, when set, hears which split a trial is at (the trials bar's postfix)."""

    def __init__(
        self,
        cfg: RunConfig,
        space: dict[str, Any],
        folder: Path,
        study: str,
        tracker: Tracker | None = None,
        study_run: str | None = None,
        progress: bool = False,
        prepared: Prepared | None = None,
    ):
        check_validation(cfg)
        self.cfg, self.space, self.folder, self.study = cfg, space, Path(folder), study
        self.prepared = prepared
        self.tracker = tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)
        self.study_run, self.progress = study_run, progress
        self.status = None
        self.target: int | None = None  # --trials: a trial not needed to reach it is not run
        self.full = False  # a trial was not run: the study had --trials counted trials
        self.poll_s = 5.0  # how often a trial held back by other workers' running trials looks again
        self.note = None  # `note(text)`, when set, prints a line (a wait for other workers' trials)
        self.owner: str | None = None  # `TuneConfig.owner`
        self.worker = 0  # `TuneConfig.worker`

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._call(trial)
        except KeyboardInterrupt:  # wherever it landed: not counted, and retried with these params
            trial.set_user_attr("reason", "interrupted")
            raise

    def _call(self, trial: optuna.Trial) -> float:
        self._claim(trial)
        if self.target is not None:  # before suggesting: a trial not run has no params (TPE ignores it)
            self._wait_for_room(trial)
        cfg = merge(
            apply_params(self.cfg, suggest(trial, self.space)),
            {"name": str(trial.number), "runs_dir": str(self.folder / "trials")},
        )
        flat = flatten(cfg)
        trial.set_user_attr("config", {k: flat[k] for k in self.space})
        tracker = self.tracker.tagged({"study": self.study, "trial": trial.number})
        run = tracker.start(
            f"trial-{trial.number}",
            params=run_params(cfg, self.prepared),
            parent=self.study_run,
            tags={"state": "running", "run_folder": str((Path(cfg.runs_dir) / cfg.name).resolve())},
        )
        if run:  # for whoever finds this trial's worker gone (`RetryStale`): it closes the run KILLED
            trial.set_user_attr("mlflow_run", run)
        resume = self._start_folder(trial, cfg)
        seen: list[tuple[int, int, int]] = []  # (split, correct, total)
        if self.status:
            self.status(f"trial {trial.number}: split 1 of {len(cfg.splits)}")

        def report(split, info) -> None:
            seen.append((split.index, int(info["val_correct"]), int(info["n_val"])))
            mean = float(record_counts(trial, seen))  # the float nearest the exact running mean
            trial.report(mean, split.index)
            if self.status and len(seen) < len(cfg.splits):
                self.status(
                    f"trial {trial.number}: split {len(seen) + 1} of {len(cfg.splits)}, running mean {mean:.3f}"
                )
            tracker.log_metrics(run, {"val_acc_mean": mean}, step=split.index)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after split {split.index}: running mean val_acc "
                    f"{mean:.3f} is below the median of earlier trials"
                )

        try:
            try:
                check_features(cfg.audio, cfg.features)
            except FeatureError as e:
                trial.set_user_attr("excluded", True)
                raise optuna.TrialPruned(f"excluded before training: {e}") from None
            if self.prepared is None:
                self.prepared = prepare(self.cfg, progress=self.progress, tracking=False)
            run_cv(
                cfg,
                report,
                prepared=self.prepared,
                score_test=False,
                tracker=tracker,
                resume=resume,
                parent_run=run,
                progress=self.progress,
            )  # `report` saw every split, in order
            value = float(mean_fraction([(c, n) for _, c, n in seen]))  # the float nearest the mean
            self._finish(trial, tracker, run, "complete", folder=Path(cfg.runs_dir) / cfg.name)
        except optuna.TrialPruned as e:
            self._finish(trial, tracker, run, "pruned", str(e), folder=Path(cfg.runs_dir) / cfg.name)
            raise
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            self._finish(
                trial,
                tracker,
                run,
                "failed",
                "interrupted" if interrupted else f"{type(e).__name__}: {e}",
                "KILLED" if interrupted else "FAILED",
                folder=Path(cfg.runs_dir) / cfg.name,
            )
            raise
        return value

    def _claim(self, trial: optuna.Trial) -> None:
        """A retry (not a FixedTrial) starts without the killed trial's user attrs it copied; a
        trial of `--workers` carries whose driver may have to close it, and which worker ran it."""
        if isinstance(trial, optuna.Trial) and priority(frozen(trial))[0] == 0:
            for key in RETRY_RESET:
                if key in trial.user_attrs:
                    trial.set_user_attr(key, None)
        if self.owner and isinstance(trial, optuna.Trial):
            trial.set_user_attr("owner", self.owner)
            trial.set_user_attr("worker", self.worker)  # which of its workers ran it (`ray_workers.ran_by`)

    def _start_folder(self, trial: optuna.Trial, cfg: RunConfig) -> bool:
        """The trial's run folder, empty (numbers are never reused); for a retry, a copy of the
        folder of the trial it retries, whose verified splits the retry keeps (`run_cv`'s resume): a
        split whose work finished counts. Returns whether `run_cv` resumes it."""
        own = Path(cfg.runs_dir) / cfg.name
        shutil.rmtree(own, ignore_errors=True)
        history = frozen(trial).system_attrs.get("retry_history") if isinstance(trial, optuna.Trial) else None
        before = Path(cfg.runs_dir) / str(history[-1]) if history else None
        if before is None or not (before / "config.yaml").is_file():
            return False
        shutil.copytree(before, own)
        RunFolder(own).write_text("config.yaml", dump_yaml(cfg))  # its own name (settings: the same)
        return True

    def _not_run(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("excluded", True)
        trial.set_user_attr("reason", "not run: " + reason)
        raise optuna.TrialPruned(reason)

    def _wait_for_room(self, trial: optuna.Trial) -> None:
        """Return when the study needs trial `trial.number` to reach --trials; else end it as not
        run (pruned, not counted). A fresh trial gives way to a waiting one (a killed trial's retry,
        which has its params). While the target is reached only counting other workers' running
        trials, it waits: one of them may be a killed worker's, which the heartbeat then fails and
        `RetryStale` queues again, and that retry is what this worker runs next."""
        told = False
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(trial.study)  # a killed worker's trial: failed, retried
            trials = trial.study.get_trials(deepcopy=False)
            done = sum(counts(t) for t in trials)
            me = next(t for t in trials if t.number == trial.number)
            running = holding(trials, me)
            waiting = [
                t.number
                for t in trials  # retries queued by `RetryStale`, not yet taken
                if t.state == optuna.trial.TrialState.WAITING and priority(t)[0] == 0
            ]
            if done >= self.target:
                self.full = True
                self._not_run(trial, f"the study already has its {self.target} trials")
            if waiting and priority(me)[0] == 1 and "fixed_params" not in me.system_attrs:  # fresh
                self._not_run(trial, f"gave way to waiting trial {waiting[0]} (a stopped trial's retry)")
            if done + len(running) < self.target:
                trial.set_user_attr("admitted", True)
                return
            if not told and self.note:
                self.note(
                    f"trial {trial.number} waits: {done} of {self.target} trials counted, "
                    f"trial(s) {', '.join(map(str, running))} still running elsewhere (if their "
                    f"worker was killed, the heartbeat fails them and this worker retries them)"
                )
            told = True
            time.sleep(self.poll_s)

    @staticmethod
    def _finish(
        trial, tracker, run, state: str, reason: str = "", status: str = "FINISHED", folder: Path | None = None
    ) -> None:
        """The trial's state (and reason) on its run; its config.yaml as the run's one artifact, so
        every trial run has the settings it tried at hand in the artifact view."""
        if folder is not None:
            tracker.log_files(run, [folder / "config.yaml"])  # absent when excluded before training
        if reason:
            trial.set_user_attr("reason", reason)
        tracker.set_tags(run, {"state": state, **({"reason": reason[:5000]} if reason else {})})
        tracker.end(run, status)
