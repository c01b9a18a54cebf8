"""nested: fold k is never read while selecting for outer split k (spy + NaN poison), the run
folder and MLflow layout, the non-nested estimate beside it, resume per outer split, refusals."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest

import cli
from bench.drivers import kfold as cv_mod
from bench.drivers.nested import inner_prepared, select
from bench.drivers.prepare import Prepared, prepare
from bench.core.runfolder import RunFolderError
from bench.drivers.tune import TuneConfig, load_space
from tests.conftest import fast_config
from tests.test_kill_and_races import (
    finish,
    kill_held,
    procs,  # noqa: F401 (a fixture)
    start,
    trained,  # noqa: F401 (a fixture)
    wait_until,
)
from tests.test_tune import SPACE, TINY, tune_args, write_space

TUNE = TuneConfig(trials=3, prune_startup=5)  # no pruning: every trial trains every inner split


def tiny(tmp: Path, root: Path, **kw):
    return fast_config(tmp, root, **{**TINY, **kw})


def fold_rows(prepared: Prepared, fold: int) -> set[int]:
    """Manifest rows (feature bank rows) of the clips in `fold`."""
    return set(prepared.plan.rows[np.asarray(prepared.plan.folds) == fold].tolist())


def test_inner_splits_leave_the_outer_test_fold_out(tmp_path, tiny_us8k):
    prepared = prepare(tiny(tmp_path, tiny_us8k), progress=False, tracking=False)
    for k in (1, 5, 10):
        inner = inner_prepared(prepared, k)
        assert len(inner.plan.splits) == 9
        assert [s.index for s in inner.plan.splits] == list(range(1, 10))
        positions = np.flatnonzero(np.asarray(prepared.plan.folds) == k)
        for s in inner.plan.splits:
            assert k not in (s.test_fold, s.val_fold)
            for part in (s.train, s.val, s.test):
                assert not set(part.tolist()) & set(positions.tolist())
        # the outer plan itself is untouched
        assert len(prepared.plan.splits) == 10


def _selection(tmp: Path, cfg, prepared, split, folder: str, monkeypatch, poison: set[int] | None):
    """Run outer split `split`'s inner study; return the trials' values and the rows fit_split got."""
    seen: list[tuple[set, set, bool]] = []
    real_fit = cv_mod.fit_split

    def spy(bank, labels, train, val, test, *args, **kw):
        seen.append((set(np.asarray(train).tolist()), set(np.asarray(val).tolist()), test is not None))
        return real_fit(bank, labels, train, val, test, *args, **kw)

    real_bank = Prepared.bank

    def poisoned(self, cfg, progress=True):
        bank = real_bank(self, cfg, progress)
        if poison is None:
            return bank
        bank = bank.clone()
        bank[sorted(poison)] = float("nan")  # any use of fold k (statistics, a batch, validation) shows
        return bank

    monkeypatch.setattr(cv_mod, "fit_split", spy)
    monkeypatch.setattr(Prepared, "bank", poisoned)
    space = load_space(write_space(tmp / "space.yaml", SPACE))
    best = select(cfg, TUNE, space, prepared, split, tmp / folder, inner_splits=2)
    study = optuna.load_study(study_name=cfg.dataset.name, storage=f"sqlite:///{tmp / folder / 'study.db'}")
    monkeypatch.undo()
    return best, study.get_trials(), seen


def test_fold_k_is_never_read_while_selecting(tmp_path, tiny_us8k, monkeypatch):
    cfg = tiny(tmp_path, tiny_us8k)
    prepared = prepare(cfg, progress=False, tracking=False)
    split = prepared.plan.splits[3]  # outer split 4: test fold 4
    rows_k = fold_rows(prepared, split.test_fold)
    assert rows_k
    best, clean, seen = _selection(tmp_path, cfg, prepared, split, "clean", monkeypatch, None)
    assert len(seen) == 3 * 2  # 3 trials x 2 inner splits
    for train, val, scored in seen:
        assert not scored  # no inner split predicts a test set
        train_rows = {int(prepared.plan.rows[i]) for i in train}
        val_rows = {int(prepared.plan.rows[i]) for i in val}
        assert not (train_rows | val_rows) & rows_k
    # The same search with fold k's features all NaN: had any of them been read (a training batch,
    # the normalisation statistics, validation, early stopping), a loss or a score would change.
    best_p, poisoned, _ = _selection(tmp_path, cfg, prepared, split, "poisoned", monkeypatch, rows_k)
    assert [t.state for t in poisoned] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.value for t in poisoned] == [t.value for t in clean]
    assert [t.params for t in poisoned] == [t.params for t in clean]
    assert best_p.number == best.number
    # ... whereas poisoning a fold the inner splits do use is seen (the check has teeth)
    used = fold_rows(prepared, prepared.plan.splits[0].test_fold)  # fold 1: inside outer split 4
    with pytest.raises(RunFolderError, match="no inner trial completed"):  # NaN loss in every trial
        _selection(tmp_path, cfg, prepared, split, "control", monkeypatch, used)


def nested_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    args = tune_args(tmp, root, SPACE, mlflow=True)
    args[0] = "nested"
    return args + ["--trials", "2", "--inner-splits", "1", "--name", "n1", *extra]


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory, tiny_us8k_master):
    tmp = tmp_path_factory.mktemp("nested")
    assert cli.main(nested_args(tmp, tiny_us8k_master)) == 0
    return tmp


def test_nested_run_folder_and_estimates(nested_run):
    run = nested_run / "runs" / "n1"
    summary = json.loads((run / "nested.json").read_text())
    outer = summary["outer"]
    assert [r["split"] for r in outer] == [1, 2]  # --splits 1,2 of tune_args: the outer splits
    for r in outer:
        assert set(r["chosen"]) == set(load_space(write_space(nested_run / "s.yaml", SPACE)))
        assert 0 <= r["test_acc"] <= 1
        info = json.loads((run / "splits" / str(r["split"]) / "split.json").read_text())
        assert info["chosen"] == r["chosen"] and info["search"]["trials"] == 2
        assert (run / "inner" / str(r["split"]) / "study.db").is_file()
    scores = json.loads((run / "scores.json").read_text())
    assert summary["nested"]["acc_mean"] == pytest.approx(scores["acc_mean"])
    assert summary["nested"]["acc_mean"] == pytest.approx(np.mean([r["test_acc"] for r in outer]))
    base = summary["non_nested"]
    assert base["n_splits"] == 2 and Path(base["run"]).name == "kfold"
    assert summary["selection_bias"] == pytest.approx(base["acc_mean"] - summary["nested"]["acc_mean"])
    assert set(summary["stability"]) == set(outer[0]["chosen"])
    text = (run / "nested.md").read_text()
    assert "Selection bias" in text and "Chosen per outer split" in text


def test_nested_mlflow_layout(nested_run):
    client = mlflow.MlflowClient(f"sqlite:///{nested_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_id = {r.info.run_id: r for r in runs}
    parent = [r for r in runs if r.data.tags.get("kind") == "nested"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    pid = parent[0].info.run_id
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid}
    assert {"outer-1", "outer-2", "non-nested"} <= set(children)
    for k in (1, 2):
        outer = children[f"outer-{k}"]
        under = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outer.info.run_id]
        assert {r.info.run_name for r in under} == {f"tune-n1-outer-{k}", f"split-{k}"}
        study = next(r for r in under if r.data.tags.get("kind") == "study")
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
        assert len(trials) == 2
        assert "test_acc" in outer.data.metrics
    assert "selection_bias" in parent[0].data.metrics
    assert all(r.info.status == "FINISHED" for r in by_id.values())


def test_nested_resume_trains_only_the_unfinished_outer_split(nested_run, tiny_us8k_master, monkeypatch):
    run = nested_run / "runs" / "n1"
    (run / "splits" / "2" / "DONE").unlink()
    scored = []
    real_fit = cv_mod.fit_split

    def spy(bank, labels, train, val, test, *args, **kw):
        scored.append(test is not None)
        return real_fit(bank, labels, train, val, test, *args, **kw)

    monkeypatch.setattr(cv_mod, "fit_split", spy)
    assert cli.main(nested_args(nested_run, tiny_us8k_master, "--resume")) == 0
    assert scored == [True]  # split 2 only; its study already holds its 2 trials; kfold skips its splits
    assert (run / "splits" / "2" / "DONE").is_file()
    # other search settings than the run's: refused, nothing trained
    assert cli.main(nested_args(nested_run, tiny_us8k_master, "--resume", "--trials", "3")) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--protocol", "stratified", "--folds", "3"], "folds leave"),
        (["--inner-splits", "10"], "--inner-splits 10"),
        (["--val", "none"], "--val next"),
    ],
)
def test_nested_refuses_before_writing(tmp_path, tiny_us8k, capsys, extra, message):
    assert cli.main(nested_args(tmp_path, tiny_us8k, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "n1").exists()


def test_nested_killed_in_an_outer_split_resumes_without_losing_finished_work(tmp_path, tiny_us8k_master, procs):
    """SIGKILL while outer split 2 trains (its inner study finished): the resume trains outer split 2
    again and nothing else of the nested part: not outer split 1, not a trial of either study."""
    args = nested_args(tmp_path, tiny_us8k_master)
    # Inner trials train inner split 1 (seed + 1); outer split k trains with seed + k.
    kill_held(tmp_path, start(procs, tmp_path, args, "first", FB_HOLD="epoch:2"))
    run = tmp_path / "runs" / "n1"
    assert (run / "splits" / "1" / "DONE").is_file() and not (run / "splits" / "2" / "DONE").exists()
    rc, out, err = finish(start(procs, tmp_path, [*args, "--resume"], "resume"))
    assert rc == 0, err[-3000:]
    [resumed] = trained(tmp_path, "resume").values()
    # outer split 2 once, then the non-nested part: 2 trials x inner split 1, and its kfold of splits 1, 2
    assert sorted(resumed) == [1, 1, 1, 2, 2]
    summary = json.loads((run / "nested.json").read_text())
    assert [r["split"] for r in summary["outer"]] == [1, 2]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=1000)
    names = sorted(r.info.run_name for r in runs if r.info.run_name.startswith(("outer-", "split-2")))
    assert names.count("outer-2") == 1  # reopened, not doubled
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_kfold_and_nested_do_not_resume_each_other(nested_run, tiny_us8k_master, tmp_path, capsys):
    kfold = [a for a in nested_args(nested_run, tiny_us8k_master) if a not in ("--inner-splits", "1")]
    kfold = kfold[: kfold.index("--space")] + kfold[kfold.index("--space") + 2 :]
    kfold[0] = "kfold"
    kfold = [a for i, a in enumerate(kfold) if not (a == "--trials" or (i and kfold[i - 1] == "--trials"))]
    assert cli.main([*kfold, "--resume"]) == 2
    assert "a nested run" in capsys.readouterr().err
    # a finished kfold run is not continued as a nested one
    plain = [*kfold[: kfold.index("--name")], "--name", "k1", "--splits", "1", "--no-mlflow"]
    assert cli.main(plain) == 0
    args = nested_args(nested_run, tiny_us8k_master)
    args[args.index("n1")] = "k1"
    assert cli.main([*args, "--splits", "1", "--resume"]) == 2
    assert "a kfold run, not a nested one" in capsys.readouterr().err


def test_nested_refuses_repeats(tmp_path, tiny_us8k, capsys):
    assert cli.main(nested_args(tmp_path, tiny_us8k, "--set", "protocol.repeats=2")) == 2
    assert "--repeats is for kfold" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "n1").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trials", "0"], "--trials 0"),
        (["--prune-startup", "-1"], "--prune-startup -1"),
        (["--prune-warmup", "-1"], "--prune-warmup -1"),
        (["--sampler-seed", "-1"], "--sampler-seed -1"),
    ],
)
def test_bad_search_options_are_refused_before_writing(tmp_path, tiny_us8k, capsys, extra, message):
    """Before: --trials 0 failed after the folder and three MLflow runs existed, pointing at a
    report.md it then deleted; a negative --prune-startup / --sampler-seed was a traceback (exit 1);
    a negative --prune-warmup was taken as a Python index (the last split)."""
    assert cli.main(nested_args(tmp_path, tiny_us8k, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs" / "n1").exists()


def test_interrupt_in_the_first_outer_split_keeps_its_study(tmp_path, tiny_us8k_master, monkeypatch, capsys):
    """Ctrl-C / SIGTERM while outer split 1's study runs (no outer split DONE yet): the run folder
    and the study's finished trial stay, and --resume selects from --trials counted trials (the
    interrupted one does not count). Before, the whole folder was removed ("no run at ...")."""
    real_fit, calls = cv_mod.fit_split, []

    def interrupt_second(*a, **kw):
        calls.append(a[4] is not None)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*a, **kw)

    monkeypatch.setattr(cv_mod, "fit_split", interrupt_second)
    args = [a for a in nested_args(tmp_path, tiny_us8k_master, "--splits", "1", "--no-non-nested")]
    assert cli.main(args) == 130
    db = tmp_path / "runs" / "n1" / "inner" / "1" / "study.db"
    assert db.is_file()
    monkeypatch.setattr(cv_mod, "fit_split", real_fit)
    assert cli.main([*args, "--resume"]) == 0, capsys.readouterr().err
    trials = optuna.load_study(study_name="n1-outer-1", storage=f"sqlite:///{db}").get_trials()
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ]
    assert trials[1].user_attrs["reason"] == "interrupted"


def test_resume_checks_the_search_settings_each_outer_split_was_selected_with(nested_run, tiny_us8k_master, capsys):
    """search.json is the last invocation's record, not vouched for by any DONE: edited to match
    other settings, it must not let a resume mix outer splits selected with other budgets."""
    run = nested_run / "runs" / "n1"
    path = run / "search.json"
    original = path.read_text()
    try:
        edited = {**json.loads(original), "trials": 3}
        path.write_text(json.dumps(edited))  # its own digest no longer matches
        for extra in ((), ("--trials", "3")):
            assert cli.main(nested_args(nested_run, tiny_us8k_master, "--resume", *extra)) == 2
            err = capsys.readouterr().err
            assert "search.json does not match its digest" in err and len(err.strip().splitlines()) == 1
        del edited["digest"]  # as an older foldbench wrote it: read as is, checked against split.json
        path.write_text(json.dumps(edited))
        assert cli.main(nested_args(nested_run, tiny_us8k_master, "--resume", "--trials", "3")) == 2
        err = capsys.readouterr().err
        assert "selected with other search settings" in err and len(err.strip().splitlines()) == 1
    finally:
        path.write_text(original)


def test_kfold_resume_without_a_name_skips_nested_runs(nested_run, tmp_path):
    """(Before: `!= "n1"`, which None passed too.) A copy of the nested run's record, then a kfold run's."""
    from bench.core.runfolder import latest_run

    runs = tmp_path / "runs"
    (runs / "n1").mkdir(parents=True)
    for name in ("config.yaml", "search.json"):
        (runs / "n1" / name).write_text((nested_run / "runs" / "n1" / name).read_text())
    assert latest_run(runs, "us8k") is None
    assert latest_run(runs, "us8k", nested=True) == "n1"
    (runs / "k1").mkdir()
    (runs / "k1" / "config.yaml").write_text((runs / "n1" / "config.yaml").read_text())
    assert latest_run(runs, "us8k") == "k1"
    assert latest_run(runs, "us8k", nested=True) == "n1"


def inner_sequence(run: Path, study: str, k) -> list[tuple[dict, float]]:
    """The counted trials of outer split k's study (or the non-nested one), in order: (params, value)."""
    from bench.drivers.study import counts

    folder = run / "inner" / str(k) if k else run / "non-nested"
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{folder / 'study.db'}").get_trials()
    return [(t.params, t.value) for t in trials if counts(t)]


def assert_same_nested(run: Path, reference: Path) -> None:
    """Split for split: the settings chosen, the inner value, the predictions; every study's counted
    trials (settings and values, in order); the estimates."""
    import pandas as pd

    for k in (1, 2):
        got, ref = (json.loads((r / "splits" / str(k) / "split.json").read_text()) for r in (run, reference))
        assert (got["chosen"], got["inner_val_acc_mean"]) == (ref["chosen"], ref["inner_val_acc_mean"])
        pd.testing.assert_frame_equal(
            *(pd.read_csv(r / "splits" / str(k) / "predictions.csv") for r in (run, reference))
        )
        assert inner_sequence(run, f"n1-outer-{k}", k) == inner_sequence(reference, f"n1-outer-{k}", k)
    assert inner_sequence(run, "n1-non-nested", None) == inner_sequence(reference, "n1-non-nested", None)
    got, ref = (json.loads((r / "nested.json").read_text()) for r in (run, reference))
    assert (got["nested"], got["selection_bias"]) == (ref["nested"], ref["selection_bias"])


@pytest.fixture(scope="module")
def threads_one_run(tmp_path_factory, tiny_us8k_master):
    """An uninterrupted nested run with one thread (what the interrupted runs are compared to)."""
    tmp = tmp_path_factory.mktemp("nested-reference")
    assert cli.main(nested_args(tmp, tiny_us8k_master, "--threads", "1")) == 0
    return tmp


@pytest.mark.parametrize("hold", ["done:1", "epoch:1"])
def test_ctrl_c_then_resume_equals_the_uninterrupted_run(threads_one_run, tiny_us8k_master, tmp_path, procs, hold):
    """SIGINT (Ctrl-C) in outer split 1's first inner trial: after its inner split was DONE (its work
    finished, not yet told to Optuna: it counts with its value) or mid-training (it is retried with
    the same settings). Before, the finished trial was failed and not retried: the sampler drew
    other settings (an outer split's test 0.117 -> 0.183). Ctrl-C prints one line, no traceback."""
    args = nested_args(tmp_path, tiny_us8k_master, "--threads", "1")
    args[args.index("--cache-dir") + 1] = str(threads_one_run / "cache")
    p = start(procs, tmp_path, args, "first", FB_HOLD=hold)
    wait_until(lambda: (tmp_path / f"held-{p.pid}").exists(), [p], "the hold point")
    p.send_signal(signal.SIGINT)
    rc, _, err = finish(p)
    assert rc == 130
    assert cli.main([*args, "--resume"]) == 0
    assert_same_nested(tmp_path / "runs" / "n1", threads_one_run / "runs" / "n1")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "failed with" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted:")


def test_no_non_nested_is_saved_with_the_run(tmp_path, tiny_us8k_master, monkeypatch):
    """`nested --no-non-nested`, interrupted, then `--resume` without the flag: the run as started
    (before, search.json did not hold it: the resume ran the non-nested study and its kfold too)."""
    real_fit = cv_mod.fit_split

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cv_mod, "fit_split", interrupt)
    args = nested_args(tmp_path, tiny_us8k_master, "--splits", "1", "--trials", "1")
    assert cli.main([*args, "--no-non-nested"]) == 130
    monkeypatch.setattr(cv_mod, "fit_split", real_fit)
    run = tmp_path / "runs" / "n1"
    assert json.loads((run / "search.json").read_text())["non_nested"] is False
    assert cli.main([*args, "--resume"]) == 0
    assert (run / "splits" / "1" / "DONE").is_file() and not (run / "non-nested").exists()
    assert json.loads((run / "nested.json").read_text())["non_nested"] is None


def test_tune_refuses_repeats(tmp_path, tiny_us8k, capsys):
    args = tune_args(tmp_path, tiny_us8k, SPACE)
    assert cli.main([*args, "--set", "protocol.repeats=2"]) == 2
    assert "protocol.repeats is for kfold" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
