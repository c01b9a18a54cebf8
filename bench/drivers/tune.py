"""`tune`: an Optuna study over the Mel front end and SpecAugment masking, each trial one `run_cv`.

search space (bench/drivers/space.py: defaults, overridable from YAML) -> objective(trial) = mean validation accuracy
of `run_cv(config + suggestions, score_test=False)` over the chosen splits, computed exactly from
the clips each split got right (a Fraction; Optuna gets the float nearest it, so equal fractions are
equal values); after each split the running mean is reported the same way with the split index as
step, and MedianPruner may stop the trial ->
study (SQLite in runs/tune-<study>/ unless --storage; TPE, seeded; a re-run continues up to
--trials in total) -> runs/tune-<study>/: trials/<n>/ (run folders), trials.csv, best.yaml, plots,
report.md. MLflow: a study run, a run per trial under it, the trial's split runs under that.
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
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from bench.core import runfolder as runs
from bench.core.atomic import atomic_write_text
from bench.core.config import ConfigError, RunConfig, dump_yaml, flatten, merge, plain_name
from bench.drivers.kfold import code_version, run_cv
from bench.drivers.prepare import Prepared, prepare
from bench.core.redact import redact
from bench.features.bank import FeatureError, check_features
from bench.tracking.layout import run_params
from bench.drivers.space import apply_params, check_space, load_space, suggest
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
    frozen,
    holding,
    priority,
    rdb_storage,
    retry_interrupted,
    trial_line,
)
from bench.tracking.tracker import Tracker, retry_races

DEFAULT_SPLITS = [1, 2, 3]  # tune's splits unless --splits: all 10 would train 10 models a trial
WORKER_SEEDS = 1_000_003  # sampler seeds between `--workers` workers: far apart, as trial counts go

# ---- objective ------------------------------------------------------------------------------


def check_validation(cfg: RunConfig) -> None:
    if cfg.protocol.val != "next":
        raise ConfigError("tune optimises validation accuracy: it needs --val next")


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
        if isinstance(trial, optuna.Trial) and priority(frozen(trial))[0] == 0:  # a retry (not a
            # FixedTrial): its user attrs are copies of the killed trial's
            for key in (
                "admitted",
                "val_counts",
                "val_acc_mean_num",
                "val_acc_mean_den",
                "mlflow_run",
                "owner",
                "worker",
                "reason",
            ):
                if key in trial.user_attrs:
                    trial.set_user_attr(key, None)
        if self.owner and isinstance(trial, optuna.Trial):  # whose driver may have to close it
            trial.set_user_attr("owner", self.owner)
            trial.set_user_attr("worker", self.worker)  # which of its workers ran it (`ray_workers.ran_by`)
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
        atomic_write_text(own / "config.yaml", dump_yaml(cfg))  # its own name (settings: the same)
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


# ---- study ----------------------------------------------------------------------------------


@dataclass
class TuneConfig:
    trials: int = 20  # trials in the study in total; a re-run adds trials up to this count
    study: str | None = None  # study name; None: the dataset's name
    storage: str | None = None  # Optuna storage URL; None: SQLite in runs/tune-<study>/study.db
    timeout: float | None = None  # seconds after which this invocation starts no new trial
    space: str | None = None  # YAML file of search-space entries replacing space.DEFAULT_SPACE's
    seed: int = 0  # TPE seed (plus the number of trials already in the study, so none repeat)
    worker: int = 0  # this worker's number among workers started together (`--workers N`: 0..N-1)
    owner: str | None = None  # `--workers N`: their driver's token on the trials they run (`study.abandon`)
    prune_startup: int = 3  # trials that must complete before any trial is pruned
    prune_warmup: int = 0  # splits a trial finishes before it can be pruned
    heartbeat: int = 60  # seconds between a running trial's heartbeats; 3x this without one: its
    # worker is taken for dead, the trial failed (not counted) and retried with the same params


# What may fail one trial while the study goes on: NaN loss (TrainingError), out of memory, a bad
# combination that slipped through. Anything else (bad data, a bug) stops the study.
FAILURES = (RuntimeError, MemoryError, FeatureError, FloatingPointError)


def check_tune(tune: TuneConfig) -> None:
    """Refuse search options Optuna would reject mid-run (after the run folder and MLflow runs exist)
    or that would silently mean something else (a negative index as the warm-up)."""
    if tune.trials < 1:
        raise ConfigError(f"--trials {tune.trials}: at least 1")
    if tune.prune_startup < 0:
        raise ConfigError(f"--prune-startup {tune.prune_startup}: 0 or more trials")
    if tune.prune_warmup < 0:
        raise ConfigError(f"--prune-warmup {tune.prune_warmup}: 0 or more splits")
    if tune.heartbeat < 1:
        raise ConfigError(f"--heartbeat {tune.heartbeat}: 1 or more seconds")
    if not 0 <= tune.seed < 2**31:  # TPE seeds numpy (0 .. 2**32 - 1) with seed + trials so far
        raise ConfigError(f"--sampler-seed {tune.seed}: between 0 and {2**31 - 1}")


def parse_duration(text: str | None) -> float | None:
    """'3h', '90m', '45s' or plain seconds -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"--timeout {text!r}: expected a positive number of seconds, or 90m, 3h, 1d")
    return seconds


def _storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """`rdb_storage(url)`, or a one-line ConfigError saying why it cannot be opened."""
    try:
        return rdb_storage(url, heartbeat)
    except Exception as e:  # a malformed URL, a missing driver, a server that refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"--storage {redact(url)}: cannot open the study storage ({type(e).__name__}: "
            f"{redact(first)}); give a reachable database URL, or leave --storage out"
        ) from None


def open_study(cfg: RunConfig, tune: TuneConfig, space: dict[str, Any], folder: Path) -> optuna.Study:
    """Create or continue the study; a continued study must have been started with the same settings."""
    storage = _storage(tune.storage or f"sqlite:///{(folder / 'study.db').resolve()}", tune.heartbeat)
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


def check_study(cfg: RunConfig, tune: TuneConfig) -> tuple[RunConfig, TuneConfig, dict[str, Any]]:
    """The study's config (tune's default splits), its options (the study named) and search space,
    checked: whatever `tune` refuses, refused before anything is written."""
    cfg = merge(cfg, {"splits": cfg.splits or DEFAULT_SPLITS})
    check_tune(tune)
    check_validation(cfg)
    if cfg.protocol.repeats > 1:  # best.yaml would carry them to kfold and nested unasked
        raise ConfigError(
            "tune: protocol.repeats is for kfold; tune on one fold plan, then score "
            "best.yaml with `kfold --config best.yaml --repeats R`"
        )
    space = load_space(tune.space)
    check_space(space, cfg)
    if tune.storage and not tune.storage.startswith("sqlite"):  # a database server that refuses: refused
        _storage(tune.storage, tune.heartbeat).engine.dispose()  # before the cache or MLflow is written
    return cfg, replace(tune, study=plain_name(tune.study or cfg.dataset.name, "--study")), space


def study_folder(cfg: RunConfig, tune: TuneConfig) -> Path:
    return Path(cfg.runs_dir) / f"tune-{tune.study}"


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
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(cfg, tune, space, folder)
    except BaseException:
        if created:  # a failed start leaves no study folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise

    name = study.study_name
    tracker = (tracker or prepared.tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)).tagged(
        {"study": name}
    )
    study_run = open_study_run(tracker, study, folder, parent_run)
    if study_run:
        atomic_write_text(folder / "mlflow.json", json.dumps({"study": study_run}) + "\n")
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
        disable=not progress,
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

    status = "FINISHED"
    try:
        if before < tune.trials:
            study.optimize(objective, timeout=tune.timeout, catch=FAILURES, callbacks=[after_trial])
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        raise
    finally:
        bar.close()
        files = write_outputs(study, folder, cfg, plots=True)
        _log_study(tracker, study_run, study, files)
        tracker.end(study_run, status)
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
