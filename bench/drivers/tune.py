"""`tune`: an Optuna study over the Mel front end and SpecAugment masking, each trial one `run_cv`.

search space (bench/drivers/space.py: defaults, overridable from YAML) -> objective(trial) = mean validation accuracy
of `run_cv(config + suggestions, score_test=False)` over the chosen splits, computed exactly from
the clips each split got right (a Fraction; Optuna gets the float nearest it, so equal fractions are
equal values); after each split the running mean is reported the same way with the split index as
step, and MedianPruner may stop the trial ->
study (SQLite in runs/tune-<study>/ unless --storage; TPE, seeded; a re-run continues up to
--trials in total) -> runs/tune-<study>/, a study folder (its layout: bench/core/runfolder.py), inside
a `Job` (bench/drivers/job.py) whose run is the study's. The trial: bench/drivers/objective.py; the
options: bench/drivers/tune_options.py. MLflow: a study run, a run per trial under it, the trial's
split runs under that.
Test folds are never scored here: the objective only ever sees validation accuracy. The best trial
has the highest exact value; ties go to the earlier trial (the lower number). `tune` prints one line
per finished trial and a trials bar; Optuna's own INFO log is silenced while it runs. Workers
sharing a study (bench/drivers/study.py: what counts, who may run, storage, retries) stop at exactly --trials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from bench.core import runfolder as runs
from bench.core.config import ConfigError, RunConfig, dump_yaml, merge
from bench.drivers.job import Job, code_version
from bench.drivers.objective import Objective, mean_fraction, record_counts  # noqa: F401 (imported from here)
from bench.drivers.prepare import Prepared, prepare
from bench.drivers.space import apply_params, check_space, load_space  # noqa: F401 (imported from here)
from bench.drivers.study import (
    FINISHED,
    METRIC,
    PlaceSeeded,
    RetryStale,
    abandon,
    best_trial,
    claim_study_attr,
    counted,
    counts,
    retry_interrupted,
    trial_line,
)
from bench.drivers.tune_options import (  # noqa: F401 (the options, imported from here too)
    DEFAULT_SPLITS,
    WORKER_SEEDS,
    TuneConfig,
    check_study,
    check_tune,
    check_validation,
    open_storage,
    parse_duration,
    study_folder,
)
from bench.features.bank import FeatureError
from bench.tracking.store import retry_races
from bench.tracking.tracker import Tracker


# What may fail one trial while the study goes on: NaN loss (TrainingError), out of memory, a bad
# combination that slipped through. Anything else (bad data, a bug) stops the study.
FAILURES = (RuntimeError, MemoryError, FeatureError, FloatingPointError)


def open_study(cfg: RunConfig, tune: TuneConfig, space: dict[str, Any], folder: Path) -> optuna.Study:
    """Create or continue the study; a continued study must have been started with the same settings."""
    storage = open_storage(tune.storage or f"sqlite:///{(folder / 'study.db').resolve()}", tune.heartbeat)
    # Steps are split indices: the first prune_warmup splits of a trial are never pruned.
    steps = sorted(cfg.splits)
    warmup = steps[tune.prune_warmup] if tune.prune_warmup < len(steps) else steps[-1] + 1
    pruner = optuna.pruners.MedianPruner(n_startup_trials=tune.prune_startup, n_warmup_steps=warmup)
    name = tune.study or cfg.dataset.name
    study = retry_races(
        lambda: optuna.create_study(
            storage=storage, study_name=name, direction="maximize", load_if_exists=True, pruner=pruner
        )
    )
    # Seeded per trial by its place in the study (`PlaceSeeded`): a re-run continues the sequence an
    # uninterrupted run draws, without replaying a suggestion. Workers started together see the same
    # trials: their number keeps them from drawing the same settings.
    study.sampler = PlaceSeeded(tune.seed + WORKER_SEEDS * tune.worker)
    fixed = {k: v for k, v in runs.result_view(cfg).items() if k not in space and k != "dataset.root"}
    settings = json.loads(json.dumps({**fixed, **{f"search {k}": v for k, v in space.items()}}))
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        diff = [
            f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(set(saved) | set(settings))
            if saved.get(k) != settings.get(k)
        ]
        raise ConfigError(
            f"study {name!r} was started with other settings, so its trials would not "
            f"be comparable; use another --study, or the same settings:\n  " + "\n  ".join(diff)
        )
    if study.metric_names != [METRIC]:  # named in plots and optuna-dashboard (not "Objective 0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    return study


def best_config(cfg: RunConfig, trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The whole config of `trial`, for `kfold --config`: every split, a fresh run name."""
    return merge(apply_params(cfg, trial.params), {"name": None, "splits": None})


def write_outputs(study: optuna.Study, folder: Path, cfg: RunConfig, plots: bool) -> list[Path]:
    """trials.csv and best.yaml (after every trial); the plots and report.md too (at the end)."""
    from reports.study import write_study

    best = best_trial(study)
    best_yaml = best and (
        f"# best trial {best.number} of study {study.study_name}: val_acc_mean "
        f"{best.value:.4f} over splits {','.join(map(str, cfg.splits))}\n# score it on "
        f"every test fold: python cli.py kfold --config {folder / 'best.yaml'}\n"
        f"# (the validation folds of those splits chose it: their test scores are "
        f"optimistic; nested CV gives an independent one)\n" + dump_yaml(best_config(cfg, best))
    )
    return write_study(study, folder, cfg, best, best_yaml, plots)


@dataclass
class StudyResult:
    study: optuna.Study
    folder: Path
    added: int  # counted trials this invocation ran (other workers sharing the study add theirs)
    total: int = 0  # counted trials in the study at the end, this invocation's and others'


def run_study(cfg: RunConfig, tune: TuneConfig, progress: bool = True) -> StudyResult:
    """Run (or continue) the study until it holds `tune.trials` counted trials (or times out);
    one line per finished trial on stdout, and a trials bar unless `progress` is off."""
    cfg, tune, space = check_study(cfg, tune)
    prepared = prepare(cfg, progress=progress)  # checked and decoded once, for every trial
    return search(cfg, tune, space, prepared, study_folder(cfg, tune), progress=progress, trial_lines=True)


class NotInterrupted(logging.Filter):
    """Drops Optuna's two warnings on a trial interrupted ("Trial N failed with parameters ...
    KeyboardInterrupt" with its traceback, then "Trial N failed with value None."): the command
    says it in one line ("interrupted: ..."), not with a library traceback."""

    trial: str | None = None  # "Trial N" whose second warning is still to come

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if getattr(record, "interrupted", False) or (  # bench.core.redact took its traceback off
            record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt)
        ):
            self.trial = text.split(" failed")[0]
            return False
        if self.trial and text.startswith(f"{self.trial} failed with value"):
            self.trial = None
            return False
        return True


@contextlib.contextmanager
def optuna_quiet():
    """Optuna's per-trial INFO lines (17-digit values, every parameter) off; warnings stay, except
    those on a trial interrupted (`NotInterrupted`)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_log, quiet = logging.getLogger("optuna.study._optimize"), NotInterrupted()  # a failed trial's log
    trials_log.addFilter(quiet)
    try:
        yield
    finally:
        trials_log.removeFilter(quiet)
        optuna.logging.set_verbosity(before)


def search(
    cfg: RunConfig,
    tune: TuneConfig,
    space: dict[str, Any],
    prepared: Prepared,
    folder: Path,
    *,
    tracker: Tracker | None = None,
    parent_run: str | None = None,
    progress: bool = True,
    trial_lines: bool = False,
    sole: bool = False,
) -> StudyResult:
    """The study `tune.study` in `folder` over `prepared`'s splits `cfg.splits`, run or continued up
    to `tune.trials` counted trials: `tune`'s loop, and nested CV's inner search (whose `prepared`
    holds only the inner splits). Its MLflow run goes under `parent_run` when given. `progress`: a
    trials bar (its postfix says which split the trial is at); `trial_lines`: `trial_line` printed
    for every finished trial (nested prints its own line per outer split instead). `sole`: no other
    process runs this study (nested: its run folder's lock), so a trial found running was
    interrupted. Interrupted trials are retried first, with their params (`retry_interrupted`)."""
    with optuna_quiet():
        return _search(cfg, tune, space, prepared, folder, tracker, parent_run, progress, trial_lines, sole)


def _search(cfg, tune, space, prepared, folder, tracker, parent_run, progress, trial_lines, sole) -> StudyResult:
    tracker = tracker or prepared.tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)
    with Job(cfg, prepared, tracker, kind="tune", folder=folder, progress=progress) as job:
        study = open_study(cfg, tune, space, folder)
        job.folder.keep()  # a failed start leaves no study folder behind; an opened study's stays
        job.tracker = tracker = tracker.tagged({"study": study.study_name})
        job.adopt(open_study_run(tracker, study, folder, parent_run), "study")
        return _optimize(study, job, cfg, tune, space, prepared, trial_lines, sole)


def _optimize(study, job: Job, cfg, tune, space, prepared, trial_lines, sole) -> StudyResult:
    """Trials until the study holds `tune.trials` counted ones (or --timeout); the study's outputs
    written after each trial, and with the plots at the end, whatever ends it."""
    name, folder, tracker, study_run = study.study_name, job.folder.path, job.tracker, job.run
    # The trials bar replaces the per-split and per-epoch bars inside a trial (they would leave a
    # line per trial); the bar's postfix says which split the running trial is at.
    objective = Objective(cfg, space, folder, name, tracker, study_run, False, prepared)
    objective.poll_s = min(5.0, tune.heartbeat / 2)
    objective.note = tqdm.write if trial_lines else None
    stale = getattr(getattr(study._storage, "_backend", study._storage), "heartbeat_stale_trial_callback", None)
    if isinstance(stale, RetryStale):  # closes a killed trial's MLflow run when this worker finds it
        stale.tracker, stale.note = tracker, objective.note
    before = counted(study)
    if sole:  # what a killed process was running: interrupted
        abandon(study, None, tracker)
    if before < tune.trials:
        retry_interrupted(study, space)
    bar = tqdm(
        total=tune.trials,
        initial=min(before, tune.trials),
        desc=f"trials ({name})",
        unit="trial",
        disable=not job.progress,
        dynamic_ncols=True,
    )
    objective.status = bar.set_postfix_str
    objective.target, objective.owner, objective.worker = tune.trials, tune.owner, tune.worker
    own = 0  # counted trials this invocation ran (other workers may share the study)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal own
        own += counts(trial)
        write_outputs(study, folder, cfg, plots=False)
        done = counted(study)
        bar.n = min(done, tune.trials)
        bar.set_postfix_str("", refresh=True)
        if trial_lines:
            tqdm.write(trial_line(study, trial, done, tune.trials))
        if done >= tune.trials or objective.full:
            study.stop()

    try:
        if before < tune.trials:
            study.optimize(objective, timeout=tune.timeout, catch=FAILURES, callbacks=[after_trial])
    finally:  # the study run ends with the job (`Job`): FINISHED, FAILED or KILLED
        bar.close()
        files = write_outputs(study, folder, cfg, plots=True)
        _log_study(tracker, study_run, study, files)
    return StudyResult(study, folder, own, counted(study))


def study_run_key(tracker: Tracker) -> str:
    """The study user attr holding its MLflow run's id in this tracking store and experiment."""
    return "mlflow_study_run " + hashlib.sha256(f"{tracker.uri} {tracker.experiment_id}".encode()).hexdigest()[:16]


def open_study_run(tracker: Tracker, study: optuna.Study, folder: Path, parent_run: str | None) -> str | None:
    """The study's one MLflow run, shared by every worker of the study: its id is kept in the
    study's user attrs (per tracking store and experiment), claimed atomically
    (`claim_study_attr`), so of workers starting at once one run is kept and the others' are
    deleted. A study begun before (its id in `folder`/mlflow.json) reopens its run."""
    if not tracker.enabled:
        return None
    key = study_run_key(tracker)
    name = study.study_name
    known = study.user_attrs.get(key) or runs.read_json(folder / "mlflow.json").get("study")
    if known and tracker._exists(known):
        run = known if study.user_attrs.get(key) == known else claim_study_attr(study, key, known)
        return tracker.start(f"tune-{name}", run_id=run)
    mine = tracker.start(
        f"tune-{name}",
        parent=parent_run,
        tags={"kind": "study", "code_version": code_version(), "run_folder": str(folder.resolve())},
    )
    if known and study.user_attrs.get(key) == known:  # its run since deleted from the store: replaced
        study.set_user_attr(key, mine)
        return mine
    run = claim_study_attr(study, key, mine)
    if run != mine:  # another worker's came first
        tracker.end(mine, "KILLED")
        tracker.delete(mine)
        tracker.start(f"tune-{name}", run_id=run)
    return run


# ---- one line per finished trial -------------------------------------------------------------


def _log_study(tracker: Tracker, run: str | None, study: optuna.Study, files: list[Path]) -> None:
    """Counts, the best value, and the best trial's params (as tags: they change as the study grows)."""
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    tracker.log_metrics(
        run,
        {
            "trials": counted(study),
            "complete": states.count("complete"),
            "pruned": states.count("pruned"),
            "failed": states.count("fail"),
        },
        step=len(states),
    )
    best = best_trial(study)
    if best is not None:
        tracker.set_tags(
            run, {"best_trial": best.number, **{f"best.{k}": v for k, v in best.user_attrs.get("config", {}).items()}}
        )
        tracker.log_metrics(run, {"best_val_acc_mean": best.value}, step=len(states))
    tracker.log_files(run, files)
