"""tune that a user can read and trust: exact fractions and ties, one line per trial, the objective's
name, plots only where they mean something, and `tune --help`. The study runs through the real
`bench.drivers.tune.search` with `run_cv` replaced by a stand-in that reports chosen counts of clips, so
no model trains and every figure is known in advance."""

from __future__ import annotations

import logging
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import cli
from bench.drivers import objective as objective_mod  # the trial, which calls run_cv
from bench.train.fit import TrainingError
from protocols import create_protocol
from bench.drivers.study import best_trial
from bench.drivers.tune import DEFAULT_SPLITS, TuneConfig, mean_fraction, search
from tests.conftest import fast_config

N_VAL = 30  # validation clips per split in the stand-in
SPACE = {
    "features.n_mels": [16, 32],
    "augment.freq_masks": {"low": 0, "high": 3},
    "augment.time_masks": {"low": 0, "high": 3},
}


def float32_objective(counts: list[int]) -> float:
    """The objective as it was: each split's accuracy a float32 mean, then their float64 mean."""
    return float(np.mean([float(np.float32(c) / np.float32(N_VAL)) for c in counts]))


def run_search(
    tmp_path,
    monkeypatch,
    counts: dict[int, list[int] | Exception],
    trials: int,
    prune_startup: int = 10,
    trial_lines: bool = True,
    space: dict = SPACE,
) -> optuna.Study:
    """`search` over splits 1-3 where trial n's split k gets counts[n][k-1] of 30 clips right."""

    def fake_run_cv(cfg, on_split, **kw):
        plan = counts[int(cfg.name)]
        if isinstance(plan, Exception):
            raise plan
        for k, correct in zip(cfg.splits, plan):
            on_split(SimpleNamespace(index=k), {"val_correct": correct, "n_val": N_VAL, "val_acc": correct / N_VAL})

    monkeypatch.setattr(objective_mod, "run_cv", fake_run_cv)
    cfg = fast_config(tmp_path, splits=[1, 2, 3])
    tune = TuneConfig(trials=trials, study="s", prune_startup=prune_startup)
    prepared = SimpleNamespace(
        tracker=None,
        device=torch.device("cpu"),  # what the trials' params read
        plan=SimpleNamespace(protocol=create_protocol("predefined"), folds=np.array([1, 2, 3])),
    )
    result = search(cfg, tune, space, prepared, tmp_path / "tune-s", progress=False, trial_lines=trial_lines)
    return result.study


# ---- exact fractions and ties ----------------------------------------------------------------


def test_equal_fractions_are_equal_values_and_the_earlier_trial_wins(tmp_path, monkeypatch):
    first, second = [10, 10, 17], [10, 11, 16]  # both 37/90 of the clips, on average
    # The crafted case: float32 accuracies made the later trial look better by float noise.
    assert float32_objective(second) > float32_objective(first)
    study = run_search(tmp_path, monkeypatch, {0: first, 1: second, 2: [9, 9, 9]}, trials=3)
    t0, t1, t2 = study.get_trials()
    assert t0.value == t1.value == 37 / 90  # bit-identical: the float nearest the exact mean
    assert (t0.user_attrs["val_acc_mean_num"], t0.user_attrs["val_acc_mean_den"]) == (37, 90)
    assert t1.user_attrs["val_counts"] == [[1, 10, 30], [2, 11, 30], [3, 16, 30]]
    assert t2.value == 0.3
    assert best_trial(study).number == 0
    table = pd.read_csv(tmp_path / "tune-s" / "trials.csv")
    assert table["val_correct"].tolist() == ["10/30 10/30 17/30", "10/30 11/30 16/30", "9/30 9/30 9/30"]
    assert "trial 0, val_acc_mean 0.4111 (10/30 10/30 17/30" in (tmp_path / "tune-s" / "report.md").read_text()
    assert "# best trial 0 " in (tmp_path / "tune-s" / "best.yaml").read_text()


def test_the_running_mean_for_pruning_is_exact_too(tmp_path, monkeypatch):
    study = run_search(tmp_path, monkeypatch, {0: [10, 11, 16]}, trials=1)
    assert study.get_trials()[0].intermediate_values == {1: 10 / 30, 2: 21 / 60, 3: 37 / 90}


def test_fit_split_counts_the_validation_clips_it_got_right():
    from bench.train.fit import fit_split
    from tests.test_train import CFG, toy_bank

    bank, labels = toy_bank()
    idx = np.random.default_rng(0).permutation(len(labels))
    result = fit_split(bank, labels, idx[:54], idx[54:72], None, 3, CFG, seed=1)
    assert isinstance(result.val_correct, int) and 0 <= result.val_correct <= 18
    assert result.val_acc == result.val_correct / 18  # the float nearest the fraction, not a float32 mean
    chosen = result.history[result.best_epoch - 1]["val_acc"]
    assert chosen == result.val_acc == max(h["val_acc"] for h in result.history)
    assert all(h["val_acc"] == round(h["val_acc"] * 18) / 18 for h in result.history)


def test_mean_fraction_with_unequal_folds():
    assert mean_fraction([(1, 3), (1, 2)]) == Fraction(5, 12)
    assert float(mean_fraction([(1, 3), (1, 2)])) == 5 / 12


# ---- what the terminal shows -----------------------------------------------------------------


def test_one_line_per_trial_and_optuna_quiet(tmp_path, monkeypatch, capsys):
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default: a line per trial
    logging.getLogger("optuna").addHandler(handler)
    try:
        study = run_search(
            tmp_path,
            monkeypatch,
            {0: [18, 18, 18], 1: [3, 3, 3], 2: TrainingError("training loss became nan at epoch 1")},
            trials=3,
            prune_startup=1,
        )
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert optuna.logging.get_verbosity() == optuna.logging.INFO  # restored
    assert not [r for r in records if "finished with value" in r or "pruned" in r]
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "PRUNED", "FAIL"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    p0, p1, p2 = (study.get_trials()[i].params for i in range(3))
    assert lines[0].startswith(
        "[1/3] trial 0 complete  val_acc_mean 0.6000 (18/30 18/30 18/30)  "
        f"n_mels={p0['features.n_mels']} freq_masks={p0['augment.freq_masks']} "
    )
    assert lines[0].endswith("best: trial 0 0.6000")
    assert lines[1].startswith(
        "[2/3] trial 1 pruned after split 1: running mean 0.1000 (3/30) below the "
        f"median of earlier trials  n_mels={p1['features.n_mels']} "
    )
    assert lines[2].startswith(
        f"[3/3] trial 2 failed: TrainingError: training loss became nan at epoch 1  n_mels={p2['features.n_mels']} "
    )
    assert all(" s  best: trial 0 0.6000" in line for line in lines)


def test_an_excluded_pair_is_one_line_and_not_counted(tmp_path, monkeypatch, capsys):
    (tmp_path / "tune-s").mkdir()
    optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'tune-s' / 'study.db'}", direction="maximize"
    ).enqueue_trial({"features.n_mels": 128, "features.n_fft": 256})
    space = {"features.n_mels": [16, 128], "features.n_fft": [256, 512]}
    run_search(tmp_path, monkeypatch, {1: [18, 18, 18]}, trials=1, space=space)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trial 0 excluded before training: 128 Mel bands")
    assert lines[0].endswith("(not counted)")
    assert lines[1].startswith("[1/1] trial 1 complete") and len(lines) == 2


def test_nested_style_searches_print_no_trial_lines(tmp_path, monkeypatch, capsys):
    run_search(tmp_path, monkeypatch, {0: [18, 18, 18]}, trials=1, trial_lines=False)
    assert capsys.readouterr().out == ""


# ---- the objective's name, and plots ----------------------------------------------------------


def test_the_objective_is_named_and_stays_named_when_continued(tmp_path, monkeypatch):
    counts = {n: [10 + n, 12, 14] for n in range(3)}
    run_search(tmp_path, monkeypatch, counts, trials=1)
    study = run_search(tmp_path, monkeypatch, counts, trials=2)  # continued (SQLite: RDB storage)
    assert len(study.get_trials()) == 2
    stored = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'tune-s' / 'study.db'}")
    assert stored.metric_names == ["val_acc_mean"]


def test_plots_wait_for_enough_trials_and_the_report_says_why(tmp_path, monkeypatch):
    counts = {n: [10 + n, 12 + (n * 7) % 5, 14] for n in range(8)}
    run_search(tmp_path, monkeypatch, counts, trials=3)
    folder = tmp_path / "tune-s"
    report = (folder / "report.md").read_text()
    assert (folder / "optimization_history.png").exists()
    assert not (folder / "param_importances.png").exists() and not (folder / "parallel_coordinate.png").exists()
    assert (
        "- parameter importances: not drawn: needs at least 8 complete trials over at least 2 "
        "searched parameters that vary; the study has 3 complete"
    ) in report
    assert "- parallel coordinates: not drawn: needs at least 8 complete trials" in report
    run_search(tmp_path, monkeypatch, counts, trials=8)  # continued to 8
    report = (folder / "report.md").read_text()
    assert (folder / "param_importances.png").exists() and (folder / "parallel_coordinate.png").exists()
    assert "not drawn" not in report and "![parameter importances](param_importances.png)" in report


def test_one_complete_trial_draws_no_history(tmp_path, monkeypatch):
    run_search(tmp_path, monkeypatch, {0: [10, 12, 14]}, trials=1)
    assert not (tmp_path / "tune-s" / "optimization_history.png").exists()
    assert (
        "- optimization history: not drawn: needs at least 2 complete trials; the study has 1 complete"
        in (tmp_path / "tune-s" / "report.md").read_text()
    )


# ---- tune --help --------------------------------------------------------------------------------


def test_tune_help_tells_the_truth(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    splits = ",".join(map(str, DEFAULT_SPLITS))
    assert f"run only these splits, e.g. 1,2,3 (default: {splits})" in text
    assert "(default: all)" not in text
    assert "--name" not in text and "--resume" not in text  # refused: --study is the name
    assert "Results go to <runs-dir>/tune-<study>/" in text and "Results go to runs/<name>/" not in text
    assert "--study STUDY" in text


def test_kfold_help_keeps_its_own_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["kfold", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: all)" in text and "--name NAME" in text and "--resume" in text
