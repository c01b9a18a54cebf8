"""A study that several workers share: what counts towards --trials and who may run, its storage
(psycopg2 for `postgresql://`, schema races retried, heartbeats and the retry of a killed worker's
trial), a study attribute the first worker claims, the exact best trial, and one line per trial.
Used by `tune` (bench/drivers/tune.py) and its workers; imports nothing of the drivers.
"""

from __future__ import annotations

import contextlib
import json
import uuid
import warnings
from fractions import Fraction
from typing import Any

import optuna

from bench.tracking.store import retry_races
from bench.tracking.tracker import Tracker

METRIC = "val_acc_mean"  # the objective's name, in Optuna (plots, optuna-dashboard), MLflow and files


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts towards --trials: a finished one, except one excluded before training
    (or not run: the study was full), one interrupted (Ctrl-C, SIGTERM) before it ended, and a
    failed one whose failure the objective never saw (it records a `reason`): its worker was killed
    and the heartbeat failed it; its retry counts instead. A continued study still runs the budget
    it was asked for (a nested run's outer split is selected from --trials trials, as recorded)."""
    if t.state not in FINISHED or t.user_attrs.get("excluded"):
        return False
    reason = t.user_attrs.get("reason")
    if t.state == optuna.trial.TrialState.FAIL and not reason:
        return False
    return reason != "interrupted"


def counted(study: optuna.Study) -> int:
    """The trials that count towards --trials (`counts`)."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def superseded(t: optuna.trial.FrozenTrial) -> bool:
    """A trial whose place in the study's sequence another one takes: one interrupted (Ctrl-C,
    SIGTERM, a resume that found it running) or whose worker was killed, both failed without
    counting (a retry runs its settings), and one not run (the study was full)."""
    if t.user_attrs.get("excluded"):
        return str(t.user_attrs.get("reason", "")).startswith("not run")
    return t.state == optuna.trial.TrialState.FAIL and not counts(t)


class PlaceSeeded(optuna.samplers.BaseSampler):
    """TPE seeded afresh for each trial with `seed` plus the trial's place: its number less the
    trials before it that were superseded (`superseded`). So the settings a trial draws do not depend
    on what was interrupted before it: a study continued after Ctrl-C or a kill, its interrupted
    trial retried with the same params, draws what the uninterrupted study drew; a continued study
    draws from new places (no suggestion replayed)."""

    def __init__(self, seed: int):
        self.seed = seed
        self._tpe: optuna.samplers.TPESampler | None = None  # the trial's, from `before_trial` on

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        place = trial.number - sum(superseded(t) for t in earlier)
        self._tpe = optuna.samplers.TPESampler(seed=(self.seed + place) % 2**32)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)


def retry_interrupted(study: optuna.Study, names) -> list[int]:
    """Every trial interrupted with all its settings drawn (`names`), queued again once with them,
    as `RetryStale` queues a killed worker's: its retry takes its place in the sequence (and starts
    from the splits it finished, `Objective`). Workers doing this at once queue each trial once
    (`claim_study_attr`). One interrupted before its settings were drawn is not retried: the next
    trial takes its place. Returns the numbers queued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    queued = []
    for t in trials:
        if (
            t.state != optuna.trial.TrialState.FAIL
            or t.user_attrs.get("reason") != "interrupted"
            or t.number in retried
            or set(t.params) != set(names)
        ):
            continue
        token = uuid.uuid4().hex
        if claim_study_attr(study, f"retry of trial {t.number}", token) != token:
            continue  # another worker queued it
        system = {"failed_trial": t.number, **t.system_attrs}
        system["retry_history"] = [*t.system_attrs.get("retry_history", []), t.number]
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=t.params,
                distributions=t.distributions,
                system_attrs=system,
            )
        )
        queued.append(t.number)
    return queued


def frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as stored (Optuna 5's `Trial` has no `system_attrs`)."""
    return trial.study._storage.get_trial(trial._trial_id)


def priority(t: optuna.trial.FrozenTrial) -> tuple[int, int]:
    """Retries of killed trials (Optuna's `failed_trial` system attr) first, then by number (the
    order Optuna creates trials in)."""
    return (0 if "failed_trial" in t.system_attrs else 1, t.number)


def holding(trials: list[optuna.trial.FrozenTrial], trial: optuna.trial.FrozenTrial) -> list[int]:
    """The running trials other than `trial` that hold a place among --trials: those admitted
    (`admitted`: past `Objective._wait_for_room`) and those ahead of it (`priority`). Of two trials
    deciding at once, the later one always counts the earlier, so the workers together never admit
    more than --trials (unless a running trial is interrupted)."""
    me = priority(trial)
    return [
        t.number
        for t in trials
        if t.state == optuna.trial.TrialState.RUNNING
        and t.number != trial.number
        and (t.user_attrs.get("admitted") or priority(t) < me)
    ]


def storage_url(url: str) -> str:
    """`postgresql://` (and `postgres://`) with the driver foldbench installs, psycopg2: SQLAlchemy
    2.1 would otherwise look for psycopg 3. A URL naming its driver (`postgresql+...://`) is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


class RetryStale(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose heartbeat ran out (its worker was killed): a waiting copy
    with the same params, `retried_trial_number` pointing to it (3 retries at most). Also closes
    the trial's MLflow run (and its split runs) KILLED, when `tracker` is set, and says so (`note`)."""

    tracker: Tracker | None = None
    note = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().__call__(study, trial)
        run = trial.user_attrs.get("mlflow_run")
        if self.note:
            self.note(
                f"trial {trial.number} failed: its worker stopped (no heartbeat); not counted, "
                f"queued again with the same settings"
            )
        problem = close_trial_run(self.tracker, run, "its worker stopped (no heartbeat)")
        if problem and self.note:
            self.note(f"trial {trial.number}: its MLflow run {run} was not closed ({problem})")


def close_trial_run(tracker: Tracker | None, run: str | None, reason: str) -> str | None:
    """A trial's MLflow run (and its split runs) closed KILLED with `reason`, for a trial whose
    worker is gone; what went wrong, if anything (another store, the run deleted): the study goes on."""
    if not (run and tracker is not None and tracker.enabled):
        return None
    try:
        tracker.close_running(run)
        tracker.set_tags(run, {"state": "failed", "reason": reason})
        tracker.end(run, "KILLED")
    except Exception as e:
        return str(e)
    return None


def abandon(study: optuna.Study, owner: str | None, tracker: Tracker | None) -> list[int]:
    """The trials `owner`'s workers were running when they were stopped from outside (their driver
    interrupted, the workers killed): failed with the reason "interrupted" (not counted, as a trial
    interrupted in its own process; retried, `retry_interrupted`), their MLflow runs closed KILLED;
    at once, not after the heartbeat's grace. `owner` None: every running trial (a resumed nested
    run owns its studies: what its killed process was running is no one's). Returns their numbers."""
    stopped = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if owner is not None and t.user_attrs.get("owner") != owner:
            continue
        close_trial_run(tracker, t.user_attrs.get("mlflow_run"), "interrupted")
        study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted")
        with contextlib.suppress(Exception):  # it ended meanwhile
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            stopped.append(t.number)
    return stopped


def rdb_storage(url: str, heartbeat: int = 60) -> optuna.storages.RDBStorage:
    """The study's storage. Workers creating a fresh database at once race in its schema (a table
    or PostgreSQL enum type already exists, the version row is written twice, the file is locked):
    the loser retries (`retry_races`). Heartbeats every `heartbeat` s: a running trial without one
    for 3x that is failed by the next worker that looks, and queued again (`RetryStale`)."""
    url = storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
        retry = RetryStale(max_retry=3)
        return retry_races(
            lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat, heartbeat_stale_trial_callback=retry
            )
        )


def claim_study_attr(study: optuna.Study, key: str, value: Any) -> Any:
    """The study's user attr `key`: set to `value` unless another worker set it first; returns the
    one that holds. Atomic on PostgreSQL and SQLite: one INSERT under Optuna's unique (study, key)
    constraint; the loser's is rolled back (Optuna's `set_study_user_attr` would overwrite it)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    rdb = getattr(study._storage, "_backend", study._storage)
    study_id = rdb.get_study_id_from_name(study.study_name)
    with _create_scoped_session(rdb.scoped_session, ignore_integrity_error=True) as session:
        session.add(models.StudyUserAttributeModel(study_id=study_id, key=key, value_json=json.dumps(value)))
    return rdb.get_study_user_attrs(study_id)[key]


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


def seconds_text(trial: optuna.trial.FrozenTrial) -> str:
    s = trial.duration.total_seconds() if trial.duration else 0.0
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def value_text(v: Any) -> str:
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
        state = (
            f"pruned after split {counts[-1][0]}: running mean {float(mean):.4f} ({fractions}) below "
            f"the median of earlier trials"
            if mean is not None
            else reason or "pruned"
        )
    else:
        state = "failed: " + (reason[:120] + ("..." if len(reason) > 120 else "") if reason else "no reason recorded")
    settings = " ".join(f"{k.split('.')[-1]}={value_text(v)}" for k, v in trial.params.items())
    best = best_trial(study)
    best = f"best: trial {best.number} {best.value:.4f}" if best is not None else "best: none yet"
    return f"[{done}/{target}] trial {trial.number} {state}  {settings}  {seconds_text(trial)}  {best}"
