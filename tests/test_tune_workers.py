"""Small pieces of several workers sharing a study (issue 14), without training: what counts
towards --trials, the atomic claim of the shared MLflow study run's id, --heartbeat's check, and
the study report's counts (trials not run are not pruned ones)."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from bench.core.config import ConfigError
from bench.drivers.study import claim_study_attr, counts
from bench.drivers.tune import TuneConfig, check_tune
from reports.study import render_study, trials_table

FAIL, PRUNED, COMPLETE = (
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.COMPLETE,
)


def study_with(*trials) -> optuna.Study:
    study = optuna.create_study(storage="sqlite:///:memory:", study_name="s", direction="maximize")
    for state, attrs in trials:
        study.add_trial(optuna.create_trial(state=state, value=0.5 if state == COMPLETE else None, user_attrs=attrs))
    return study


def test_a_trial_failed_by_the_heartbeat_does_not_count_one_failed_in_the_objective_does():
    study = study_with(
        (FAIL, {}),
        (FAIL, {"reason": "TrainingError: loss became nan"}),
        (FAIL, {"reason": "interrupted"}),
        (PRUNED, {"excluded": True, "reason": "not run: full"}),
        (PRUNED, {"reason": "pruned after split 1"}),
        (COMPLETE, {}),
    )
    assert [counts(t) for t in study.get_trials()] == [False, True, False, False, True, True]


def test_the_first_claim_of_a_study_attr_holds(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    assert claim_study_attr(study, "run", "first") == "first"
    assert claim_study_attr(study, "run", "second") == "first"
    assert study.user_attrs["run"] == "first"


def test_heartbeat_must_be_a_positive_number_of_seconds():
    with pytest.raises(ConfigError, match="--heartbeat 0"):
        check_tune(TuneConfig(heartbeat=0))
    check_tune(TuneConfig(heartbeat=1))


def test_the_report_counts_trials_not_run_and_trials_stopped_with_their_worker_apart(tmp_path):
    study = study_with(
        (COMPLETE, {}),
        (PRUNED, {"reason": "pruned after split 1: below the median"}),
        (PRUNED, {"excluded": True, "reason": "not run: the study already has its 2 trials"}),
        (FAIL, {}),
    )
    study.add_trial(
        optuna.create_trial(state=COMPLETE, value=0.4, system_attrs={"failed_trial": 3, "retry_history": [3]})
    )
    table = trials_table(study)
    assert "retried as trial 4" in table["reason"][3]
    cfg = SimpleNamespace(
        dataset=SimpleNamespace(name="d"), model=SimpleNamespace(name="m"), train=SimpleNamespace(epochs=1), splits=[1]
    )
    text = render_study(study, table, {}, cfg, tmp_path, None)
    assert (
        "Trials: 2 complete, 1 pruned, 0 failed, 0 excluded before training (Mel bands the FFT size "
        "cannot resolve), 1 stopped with their worker (killed; not counted, retried), 1 not run "
        "(the study already had its trials)."
    ) in text


class FakeTracker:
    """What `open_study_run` asks of a Tracker, recording the runs it started, ended and deleted."""

    enabled, uri, experiment_id = True, "sqlite:///x.db", "1"

    def __init__(self, before_new_run=None):
        self.before_new_run, self.started, self.ended, self.deleted = before_new_run, [], {}, []

    def _exists(self, run_id):
        return run_id in self.started

    def start(self, name, run_id=None, **kw):
        if run_id is None:
            if self.before_new_run:
                self.before_new_run()
            run_id = f"run-{len(self.started)}"
        self.started.append(run_id)
        return run_id

    def end(self, run_id, status="FINISHED"):
        self.ended[run_id] = status

    def delete(self, run_id):
        self.deleted.append(run_id)


def test_a_worker_that_loses_the_study_run_race_uses_the_winners_run(tmp_path):
    """Another worker claims the study run between this one finding none and starting its own:
    this one's run is ended and deleted, and the winner's is used (once, it replaced the winner's
    id in the study, leaving two study runs and one of them RUNNING after its worker was killed)."""
    from bench.drivers.tune import open_study_run, study_run_key

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    tracker = FakeTracker()
    tracker.before_new_run = lambda: claim_study_attr(study, study_run_key(tracker), "winner")
    tracker.started.append("winner")  # the other worker's run exists in the store
    run = open_study_run(tracker, study, tmp_path, None)
    assert run == "winner" and study.user_attrs[study_run_key(tracker)] == "winner"
    mine = tracker.started[1]
    assert tracker.ended[mine] == "KILLED" and tracker.deleted == [mine]


def test_the_workers_summary_counts_what_the_study_holds():
    """Worker 1 ran a trial, then was killed in its second (failed by the heartbeat) and started
    again by Ray; worker 0 ran the retry. Ray's return values say 3 + 0 (the restarted worker ran
    nothing): the summary said 'the workers ran 3 + 0' and '3 trial(s) added' when 4 were."""
    from bench.scale.ray_workers import ran_by

    me, other = {"owner": "me"}, {"owner": "someone else"}
    study = study_with(
        (COMPLETE, {**me, "worker": 0}),
        (COMPLETE, {**me, "worker": 1}),
        (COMPLETE, {**me, "worker": 0}),
        (FAIL, {**me, "worker": 1}),
        (COMPLETE, {**other, "worker": 0}),
        (PRUNED, {**me, "worker": 1, "excluded": True, "reason": "not run: full"}),
    )
    study.add_trial(
        optuna.create_trial(
            state=COMPLETE,
            value=0.4,
            user_attrs={**me, "worker": 0},
            system_attrs={"failed_trial": 3, "retry_history": [3]},
        )
    )
    assert ran_by(study, "me", 2) == [3, 1]
