"""`tune`: an Optuna study over the Mel front end and SpecAugment masking, each trial one `run_cv`.

search space (bench/space.py: defaults, overridable from YAML) -> objective(trial) = mean validation accuracy
of `run_cv(config + suggestions, score_test=False)` over the chosen splits, computed exactly from
the clips each split got right (a Fraction; Optuna gets the float nearest it, so equal fractions are
equal values); after each split the running mean is reported the same way with the split index as
step, and MedianPruner may stop the trial ->
study (SQLite in runs/tune-<study>/ unless --storage; TPE, seeded; a re-run continues up to
--trials in total) -> runs/tune-<study>/: trials/<n>/ (run folders), trials.csv, best.yaml, plots,
report.md. MLflow: a study run, a run per trial under it, the trial's split runs under that.
Test folds are never scored here: the objective only ever sees validation accuracy. The best trial
has the highest exact value; ties go to the earlier trial (the lower number). `tune` prints one line
per finished trial and a trials bar; Optuna's own INFO log is silenced while it runs.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from . import runfolder as runs
from .atomic import atomic_write_text
from .config import ConfigError, RunConfig, dump_yaml, flatten, merge, plain_name
from .cv import code_version, run_cv
from .prepare import Prepared, prepare
from .features import FeatureError, check_features
from .mlflow_layout import run_params
from .space import apply_params, check_space, load_space, suggest
from .tracking import Tracker, retry_races

DEFAULT_SPLITS = [1, 2, 3]  # tune's splits unless --splits: all 10 would train 10 models a trial
METRIC = "val_acc_mean"  # the objective's name, in Optuna (plots, optuna-dashboard), MLflow and files

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

    def __init__(self, cfg: RunConfig, space: dict[str, Any], folder: Path, study: str,
                 tracker: Tracker | None = None, study_run: str | None = None, progress: bool = False,
                 prepared: Prepared | None = None):
        check_validation(cfg)
        self.cfg, self.space, self.folder, self.study = cfg, space, Path(folder), study
        self.prepared = prepared
        self.tracker = tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)
        self.study_run, self.progress = study_run, progress
        self.status = None
        self.target: int | None = None  # --trials: a trial not needed to reach it is not run
        self.full = False  # a trial was not run: the study had --trials counted or running trials

    def __call__(self, trial: optuna.Trial) -> float:
        if self.target is not None:  # before suggesting: a trial not run has no params (TPE ignores it)
            ahead = ahead_of(trial.study, trial.number)
            if ahead >= self.target:
                self.full = True
                trial.set_user_attr("excluded", True)
                trial.set_user_attr("reason", f"not run: the study already has its {self.target} "
                                    f"trials ({ahead} counted, or running since before it)")
                raise optuna.TrialPruned("the study is full")
        cfg = merge(apply_params(self.cfg, suggest(trial, self.space)),
                    {"name": str(trial.number), "runs_dir": str(self.folder / "trials")})
        flat = flatten(cfg)
        trial.set_user_attr("config", {k: flat[k] for k in self.space})
        tracker = self.tracker.tagged({"study": self.study, "trial": trial.number})
        run = tracker.start(f"trial-{trial.number}", params=run_params(cfg, self.prepared),
                            parent=self.study_run, tags={
            "state": "running", "run_folder": str((Path(cfg.runs_dir) / cfg.name).resolve())})
        shutil.rmtree(Path(cfg.runs_dir) / cfg.name, ignore_errors=True)  # numbers are never reused
        seen: list[tuple[int, int, int]] = []  # (split, correct, total)
        if self.status:
            self.status(f"trial {trial.number}: split 1 of {len(cfg.splits)}")

        def report(split, info) -> None:
            seen.append((split.index, int(info["val_correct"]), int(info["n_val"])))
            mean = float(record_counts(trial, seen))  # the float nearest the exact running mean
            trial.report(mean, split.index)
            if self.status and len(seen) < len(cfg.splits):
                self.status(f"trial {trial.number}: split {len(seen) + 1} of {len(cfg.splits)}, "
                            f"running mean {mean:.3f}")
            tracker.log_metrics(run, {"val_acc_mean": mean}, step=split.index)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after split {split.index}: running mean val_acc "
                                         f"{mean:.3f} is below the median of earlier trials")

        try:
            try:
                check_features(cfg.audio, cfg.features)
            except FeatureError as e:
                trial.set_user_attr("excluded", True)
                raise optuna.TrialPruned(f"excluded before training: {e}") from None
            if self.prepared is None:
                self.prepared = prepare(self.cfg, progress=self.progress, tracking=False)
            run_cv(cfg, report, prepared=self.prepared, score_test=False, tracker=tracker,
                   parent_run=run, progress=self.progress)  # `report` saw every split, in order
            value = float(mean_fraction([(c, n) for _, c, n in seen]))  # the float nearest the mean
        except optuna.TrialPruned as e:
            self._finish(trial, tracker, run, "pruned", str(e), folder=Path(cfg.runs_dir) / cfg.name)
            raise
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            self._finish(trial, tracker, run, "failed", "interrupted" if interrupted else
                         f"{type(e).__name__}: {e}", "KILLED" if interrupted else "FAILED",
                         folder=Path(cfg.runs_dir) / cfg.name)
            raise
        self._finish(trial, tracker, run, "complete", folder=Path(cfg.runs_dir) / cfg.name)
        return value

    @staticmethod
    def _finish(trial, tracker, run, state: str, reason: str = "", status: str = "FINISHED",
                 folder: Path | None = None) -> None:
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
    prune_startup: int = 3  # trials that must complete before any trial is pruned
    prune_warmup: int = 0  # splits a trial finishes before it can be pruned


# What may fail one trial while the study goes on: NaN loss (TrainingError), out of memory, a bad
# combination that slipped through. Anything else (bad data, a bug) stops the study.
FAILURES = (RuntimeError, MemoryError, FeatureError, FloatingPointError)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)


def check_tune(tune: TuneConfig) -> None:
    """Refuse search options Optuna would reject mid-run (after the run folder and MLflow runs exist)
    or that would silently mean something else (a negative index as the warm-up)."""
    if tune.trials < 1:
        raise ConfigError(f"--trials {tune.trials}: at least 1")
    if tune.prune_startup < 0:
        raise ConfigError(f"--prune-startup {tune.prune_startup}: 0 or more trials")
    if tune.prune_warmup < 0:
        raise ConfigError(f"--prune-warmup {tune.prune_warmup}: 0 or more splits")
    if not 0 <= tune.seed < 2 ** 31:  # TPE seeds numpy (0 .. 2**32 - 1) with seed + trials so far
        raise ConfigError(f"--sampler-seed {tune.seed}: between 0 and {2 ** 31 - 1}")


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


def counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts towards --trials: a finished one, except one excluded before training
    (or not run: the study was full) and one interrupted (Ctrl-C, SIGTERM) before it ended: a
    continued study still runs the budget it was asked for (a nested run's outer split is selected
    from --trials trials, as recorded)."""
    return (t.state in FINISHED and not t.user_attrs.get("excluded")
            and t.user_attrs.get("reason") != "interrupted")


def counted(study: optuna.Study) -> int:
    """The trials that count towards --trials (`counts`)."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def ahead_of(study: optuna.Study, number: int) -> int:
    """Counted trials plus the trials still running that started before trial `number` (a lower
    number: Optuna numbers trials in the order they are created). Workers sharing a study run trial
    `number` only while this is below --trials: of two trials started at once, the earlier one runs,
    so the workers together stop at exactly --trials (unless a running trial is interrupted)."""
    trials = study.get_trials(deepcopy=False)
    return sum(counts(t) or (t.state == optuna.trial.TrialState.RUNNING and t.number < number)
               for t in trials)


def storage_url(url: str) -> str:
    """`postgresql://` (and `postgres://`) with the driver foldbench installs, psycopg2: SQLAlchemy
    2.1 would otherwise look for psycopg 3. A URL naming its driver (`postgresql+...://`) is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage. Workers creating a fresh database at once race in its schema (a table
    or PostgreSQL enum type already exists, the version row is written twice, the file is locked):
    the loser retries (`retry_races`)."""
    url = storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
        # Heartbeats: a trial whose process was killed is marked failed when the study next runs.
        return retry_races(lambda: optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180))


def open_study(cfg: RunConfig, tune: TuneConfig, space: dict[str, Any], folder: Path) -> optuna.Study:
    """Create or continue the study; a continued study must have been started with the same settings."""
    url = tune.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    try:
        storage = _storage(url)
    except Exception as e:  # a malformed URL, a missing driver, a server that refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"--storage {url}: cannot open the study storage ({type(e).__name__}: "
                          f"{first}); give a reachable database URL, or leave --storage out") from None
    # Steps are split indices: the first prune_warmup splits of a trial are never pruned.
    steps = sorted(cfg.splits)
    warmup = steps[tune.prune_warmup] if tune.prune_warmup < len(steps) else steps[-1] + 1
    pruner = optuna.pruners.MedianPruner(n_startup_trials=tune.prune_startup, n_warmup_steps=warmup)
    name = tune.study or cfg.dataset.name
    study = retry_races(lambda: optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                                    load_if_exists=True, pruner=pruner))
    # Seeded, and offset by the trials already there: a re-run must not replay the same suggestions.
    study.sampler = optuna.samplers.TPESampler(seed=tune.seed + len(study.get_trials(deepcopy=False)))
    fixed = {k: v for k, v in runs.result_view(cfg).items() if k not in space and k != "dataset.root"}
    settings = json.loads(json.dumps({**fixed, **{f"search {k}": v for k, v in space.items()}}))
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        diff = [f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
                if saved.get(k) != settings.get(k)]
        raise ConfigError(f"study {name!r} was started with other settings, so its trials would not "
                          f"be comparable; use another --study, or the same settings:\n  " + "\n  ".join(diff))
    if study.metric_names != [METRIC]:  # named in plots and optuna-dashboard (not "Objective 0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    return study


def exact_value(trial: optuna.trial.FrozenTrial) -> Fraction | None:
    """A trial's (running) mean validation accuracy as the exact fraction kept in its user attrs;
    a trial recorded without them (an older foldbench) by its float value; None without any."""
    num, den = trial.user_attrs.get("val_acc_mean_num"), trial.user_attrs.get("val_acc_mean_den")
    if num is not None and den:
        return Fraction(num, den)
    return None if trial.value is None else Fraction(trial.value)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the highest exact mean validation accuracy; of equal ones, the
    earlier (lower number): a tie is not evidence, and the first found is reproducible."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: (exact_value(t), -t.number)) if complete else None


def best_config(cfg: RunConfig, trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The whole config of `trial`, for `kfold --config`: every split, a fresh run name."""
    return merge(apply_params(cfg, trial.params), {"name": None, "splits": None})


def write_outputs(study: optuna.Study, folder: Path, cfg: RunConfig, plots: bool) -> list[Path]:
    """trials.csv and best.yaml (after every trial); the plots and report.md too (at the end)."""
    from reports.study import write_study
    best = best_trial(study)
    best_yaml = best and (f"# best trial {best.number} of study {study.study_name}: val_acc_mean "
                          f"{best.value:.4f} over splits {','.join(map(str, cfg.splits))}\n# score it on "
                          f"every test fold: python cli.py kfold --config {folder / 'best.yaml'}\n"
                          f"# (the validation folds of those splits chose it: their test scores are "
                          f"optimistic; nested CV gives an independent one)\n"
                          + dump_yaml(best_config(cfg, best)))
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
        raise ConfigError("tune: protocol.repeats is for kfold; tune on one fold plan, then score "
                          "best.yaml with `kfold --config best.yaml --repeats R`")
    space = load_space(tune.space)
    check_space(space, cfg)
    return cfg, replace(tune, study=plain_name(tune.study or cfg.dataset.name, "--study")), space


def study_folder(cfg: RunConfig, tune: TuneConfig) -> Path:
    return Path(cfg.runs_dir) / f"tune-{tune.study}"


@contextlib.contextmanager
def optuna_quiet():
    """Optuna's per-trial INFO lines (17-digit values, every parameter) off; warnings stay."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def search(cfg: RunConfig, tune: TuneConfig, space: dict[str, Any], prepared: Prepared, folder: Path,
           *, tracker: Tracker | None = None, parent_run: str | None = None,
           progress: bool = True, trial_lines: bool = False) -> StudyResult:
    """The study `tune.study` in `folder` over `prepared`'s splits `cfg.splits`, run or continued up
    to `tune.trials` counted trials: `tune`'s loop, and nested CV's inner search (whose `prepared`
    holds only the inner splits). Its MLflow run goes under `parent_run` when given. `progress`: a
    trials bar (its postfix says which split the trial is at); `trial_lines`: `trial_line` printed
    for every finished trial (nested prints its own line per outer split instead)."""
    with optuna_quiet():
        return _search(cfg, tune, space, prepared, folder, tracker, parent_run, progress, trial_lines)


def _search(cfg, tune, space, prepared, folder, tracker, parent_run, progress, trial_lines) -> StudyResult:
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(cfg, tune, space, folder)
    except BaseException:
        if created:  # a failed start leaves no study folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise

    name = study.study_name
    tracker = (tracker or prepared.tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)
               ).tagged({"study": name})
    study_run = tracker.start(f"tune-{name}", run_id=runs.read_json(folder / "mlflow.json").get("study"),
                              parent=parent_run, tags={"kind": "study", "code_version": code_version(),
                                                       "run_folder": str(folder.resolve())})
    if study_run:
        atomic_write_text(folder / "mlflow.json", json.dumps({"study": study_run}) + "\n")
    # The trials bar replaces the per-split and per-epoch bars inside a trial (they would leave a
    # line per trial); the bar's postfix says which split the running trial is at.
    objective = Objective(cfg, space, folder, name, tracker, study_run, False, prepared)
    before = counted(study)
    bar = tqdm(total=tune.trials, initial=min(before, tune.trials), desc=f"trials ({name})", unit="trial",
               disable=not progress, dynamic_ncols=True)
    objective.status = bar.set_postfix_str
    objective.target = tune.trials
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


# ---- one line per finished trial -------------------------------------------------------------

def _seconds(trial: optuna.trial.FrozenTrial) -> str:
    s = trial.duration.total_seconds() if trial.duration else 0.0
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, done: int, target: int) -> str:
    """`[4/20] trial 3 complete  val_acc_mean 0.5889 (17/30 18/30 18/30)  n_mels=64 ...  12 s  best:
    trial 1 0.6000`: the counted trials so far, the state (pruned and failed with the short reason),
    the exact per-split fractions of clips, the settings by their last name, the duration, the best."""
    reason = str(trial.user_attrs.get("reason", "")).strip().splitlines()
    reason = reason[0] if reason else ""
    if trial.user_attrs.get("excluded"):
        return f"trial {trial.number} {reason} (not counted)"
    counts = trial.user_attrs.get("val_counts") or []
    fractions = " ".join(f"{c}/{n}" for _, c, n in counts)
    mean = exact_value(trial) if counts else None
    if trial.state == optuna.trial.TrialState.COMPLETE:
        state = f"complete  {METRIC} {float(mean):.4f} ({fractions})" if mean is not None else "complete"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        state = (f"pruned after split {counts[-1][0]}: running mean {float(mean):.4f} ({fractions}) below "
                 f"the median of earlier trials" if mean is not None else reason or "pruned")
    else:
        state = "failed: " + (reason[:120] + ("..." if len(reason) > 120 else "") if reason else "no reason recorded")
    settings = " ".join(f"{k.split('.')[-1]}={_value(v)}" for k, v in trial.params.items())
    best = best_trial(study)
    best = f"best: trial {best.number} {best.value:.4f}" if best is not None else "best: none yet"
    return f"[{done}/{target}] trial {trial.number} {state}  {settings}  {_seconds(trial)}  {best}"


def _log_study(tracker: Tracker, run: str | None, study: optuna.Study, files: list[Path]) -> None:
    """Counts, the best value, and the best trial's params (as tags: they change as the study grows)."""
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    tracker.log_metrics(run, {"trials": counted(study), "complete": states.count("complete"),
                              "pruned": states.count("pruned"), "failed": states.count("fail")},
                        step=len(states))
    best = best_trial(study)
    if best is not None:
        tracker.set_tags(run, {"best_trial": best.number,
                               **{f"best.{k}": v for k, v in best.user_attrs.get("config", {}).items()}})
        tracker.log_metrics(run, {"best_val_acc_mean": best.value}, step=len(states))
    tracker.log_files(run, files)
