"""tune: search space, objective (validation only), pruning, continuing a study, failures, MLflow,
and best.yaml through kfold. Tiny data and features so the whole file runs in well under a minute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

import cli
from bench.data import cache as cache_mod
from bench.drivers import kfold as cv_mod
from bench.drivers import prepare as prepare_mod
from bench.features import bank as features_mod
from bench.core.config import ConfigError, RunConfig, flatten, load_yaml, merge
from bench.drivers.kfold import run_cv
from bench.data.datasets import create_dataset
from bench.train.fit import TrainingError
from bench.drivers.tune import Objective, apply_params, check_space, load_space, parse_duration
from reports.files import read_history, read_split_json
from tests.conftest import FAST, fast_config

TINY = {
    **FAST,
    "audio.duration": 0.5,
    "features.n_mels": 16,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.max_lr": 0.01,
}
SPACE = {  # small: two feature configs and a few mask counts
    "features.n_mels": [16, 32],
    "features.n_fft": [256],
    "features.hop_length": ["1/2"],
    "augment.freq_masks": {"low": 0, "high": 2},
    "augment.time_masks": {"low": 0, "high": 2},
}
GOOD = {
    "features.n_mels": 16,
    "features.n_fft": 256,
    "features.hop_length": "1/2",
    "augment.freq_masks": 1,
    "augment.freq_mask_width": 0.1,
    "augment.time_masks": 1,
    "augment.time_mask_width": 0.1,
    "augment.time_shift": 0.1,
}
RESULT_SECTIONS = ("dataset", "protocol", "audio", "features", "augment", "model", "train")


def write_space(path: Path, space: dict) -> str:
    path.write_text(yaml.safe_dump(space))
    return str(path)


def tune_args(tmp: Path, root: Path, space: dict, *extra: str, mlflow: bool = False) -> list[str]:
    args = [
        "tune",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp / "runs"),
        "--cache-dir",
        str(tmp / "cache"),
        "--space",
        write_space(tmp / "space.yaml", space),
        "--splits",
        "1,2",
        "--quiet",
    ]
    for key, value in TINY.items():
        if key != "tracking.mlflow":
            args += ["--set", f"{key}={value}"]
    if mlflow:
        return args + ["--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--experiment", "tiny", *extra]
    return args + ["--no-mlflow", *extra]


def tiny_config(tmp: Path, root: Path, **kw) -> RunConfig:
    return fast_config(tmp, root, **{**TINY, **kw})


def load(tmp: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp / 'runs' / f'tune-{study}' / 'study.db'}")


# ---- one study, run three times, then its best trial through kfold: shared by the tests below ----


@pytest.fixture(scope="module")
def study(tiny_us8k_master, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    calls = {"fit": [], "log_mel": 0, "decoded": 0, "seeds": []}
    real_fit, real_log_mel, real_clip = cv_mod.fit_split, features_mod.create_frontend, cache_mod.load_clip

    def fit(*a, **kw):
        calls["fit"][-1].append(a[4])  # test_idx
        return real_fit(*a, **kw)

    def log_mel(*a, **kw):
        calls["log_mel"] += 1
        return real_log_mel(*a, **kw)

    def load_clip(*a, **kw):
        calls["decoded"] += 1
        return real_clip(*a, **kw)

    folder = tmp / "runs" / "tune-s"
    folder.mkdir(parents=True)  # trial 0 takes the other Mel band count, so two feature configs show
    optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize").enqueue_trial(
        {"features.n_mels": 16}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cv_mod, "fit_split", fit)
        mp.setattr(features_mod, "create_frontend", log_mel)  # the bank builds its front end here
        mp.setattr(features_mod, "_BANKS", {})
        mp.setattr(cache_mod, "load_clip", load_clip)
        real_tpe = optuna.samplers.TPESampler
        mp.setattr(
            optuna.samplers, "TPESampler", lambda *a, **kw: calls["seeds"].append(kw.get("seed")) or real_tpe(*a, **kw)
        )
        codes = []
        for trials in (3, 4, 4):  # start, continue to 4, then nothing left to add
            calls["fit"].append([])
            codes.append(
                cli.main(
                    tune_args(
                        tmp,
                        tiny_us8k_master,
                        SPACE,
                        "--trials",
                        str(trials),
                        "--study",
                        "s",
                        "--prune-startup",
                        "10",
                        mlflow=True,
                    )
                )
            )
        tuned_log_mel = calls["log_mel"]
        calls["fit"].append([])
        kfold = cli.main(
            [
                "kfold",
                "--config",
                str(folder / "best.yaml"),
                "--splits",
                "1",
                "--name",
                "best",
                "--quiet",
                "--experiment",
                "tiny",
            ]
        )
    return dict(
        tmp=tmp,
        folder=folder,
        codes=codes,
        kfold=kfold,
        calls=calls,
        tuned_log_mel=tuned_log_mel,
        root=tiny_us8k_master,
    )


def test_rerunning_continues_the_count_and_adds_no_duplicate_trials(study):
    assert study["codes"] == [0, 0, 0]
    trials = load(study["tmp"], "s").get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    fits = study["calls"]["fit"]
    assert [len(f) for f in fits[:3]] == [3 * 2, 1 * 2, 0]  # the second run trained trial 3 only
    # each trial's sampler is seeded by its place in the study (0 enqueued, 1, 2; the re-run's 3),
    # so a re-run does not replay the suggestions of the first
    assert [s for s in study["calls"]["seeds"] if s is not None] == [0, 1, 2, 3]  # None: create_study's default
    table = pd.read_csv(study["folder"] / "trials.csv")
    assert table["number"].tolist() == [0, 1, 2, 3] and (table["state"] == "complete").all()
    assert sorted(p.name for p in (study["folder"] / "trials").iterdir()) == ["0", "1", "2", "3"]


def test_tune_never_passes_test_indices_and_shares_cache_and_banks(study, tiny_us8k_master):
    *tuning, kfold = study["calls"]["fit"]
    assert all(test_idx is None for run in tuning for test_idx in run)
    assert kfold[0] is not None  # (the spy does see test indices when kfold passes them)
    n_clips = len(pd.read_csv(tiny_us8k_master / "metadata" / "UrbanSound8K.csv"))
    assert study["calls"]["decoded"] == n_clips  # the waveform cache was built once for all trials
    trials = load(study["tmp"], "s").get_trials()
    feature_configs = {t.params["features.n_mels"] for t in trials}  # the only searched feature
    assert study["tuned_log_mel"] == len(feature_configs) == 2  # 4 trials, 2 feature banks


def test_a_changed_setting_does_not_continue_the_study(study, capsys):
    code = cli.main(tune_args(study["tmp"], study["root"], SPACE, "--trials", "5", "--study", "s", "--epochs", "3"))
    assert code == 2
    assert "train.epochs: 2 -> 3" in capsys.readouterr().err
    assert len(load(study["tmp"], "s").get_trials()) == 4


def test_best_yaml_round_trips_through_kfold(study):
    assert study["kfold"] == 0
    best = load(study["tmp"], "s").best_trial
    trial_dir, kfold_dir = study["folder"] / "trials" / str(best.number), study["tmp"] / "runs" / "best"

    def settings(run_dir):
        return {
            k: v for k, v in flatten(load_yaml(run_dir / "config.yaml")).items() if k.split(".")[0] in RESULT_SECTIONS
        }

    assert settings(kfold_dir) == settings(trial_dir)
    assert settings(kfold_dir)["features.n_mels"] == best.params["features.n_mels"]
    assert load_yaml(study["folder"] / "best.yaml").splits is None  # kfold scores every test fold
    # Same settings, same seed: split 1 trains exactly as it did in the trial.
    pd.testing.assert_frame_equal(
        read_history(kfold_dir, 1)[["train_loss", "val_acc"]], read_history(trial_dir, 1)[["train_loss", "val_acc"]]
    )
    assert read_split_json(kfold_dir, 1)["test_acc"] is not None


def test_mlflow_holds_a_run_per_trial_with_its_split_runs(study):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{study['tmp'] / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    trials = runs[runs["tags.mlflow.runName"].str.startswith("trial-")]
    assert sorted(trials["tags.trial"].astype(int)) == [0, 1, 2, 3]
    assert (trials["tags.study"] == "s").all() and (trials["tags.state"] == "complete").all()
    values = {t.number: t.value for t in load(study["tmp"], "s").get_trials()}
    for _, trial in trials.iterrows():
        splits = runs[runs["tags.mlflow.parentRunId"] == trial["run_id"]]
        assert sorted(splits["params.test_fold"].astype(int)) == [1, 2]
        assert (splits["tags.trial"] == trial["tags.trial"]).all() and (splits["tags.study"] == "s").all()
        assert trial["metrics.val_acc_mean"] == pytest.approx(values[int(trial["tags.trial"])])
        trial_files = [a.path for a in mlflow.tracking.MlflowClient().list_artifacts(trial["run_id"])]
        assert trial_files == ["config.yaml"]  # the settings it tried, in the artifact view
    # The same param names as a kfold run, so the compare view lines trials and kfold runs up.
    kfold = runs[runs["tags.mlflow.runName"] == "best"]
    param_names = {c for c in runs.columns if c.startswith("params.") and kfold[c].notna().any()}
    assert len(kfold) == 1 and "params.features.n_mels" in param_names
    assert all(trials[c].notna().all() for c in param_names)
    assert trials["params.features.n_mels"].nunique() == 2
    # The study run: trial runs nest under it; it carries the best params and the plots.
    study_run = runs[runs["tags.kind"] == "study"]
    assert len(study_run) == 1 and (trials["tags.mlflow.parentRunId"] == study_run["run_id"].iloc[0]).all()
    best = load(study["tmp"], "s").best_trial
    assert study_run["tags.best_trial"].iloc[0] == str(best.number)
    assert study_run["tags.best.features.n_mels"].iloc[0] == str(best.params["features.n_mels"])
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(study_run["run_id"].iloc[0])}
    assert {"best.yaml", "trials.csv", "report.md", "optimization_history.png"} <= artifacts
    # 4 complete trials are too few for importances and parallel coordinates: not drawn, and said why
    assert not {"param_importances.png", "parallel_coordinate.png"} & artifacts
    assert (
        "- parameter importances: not drawn: needs at least 8 complete trials"
        in (study["folder"] / "report.md").read_text()
    )


# ---- pruning, failures, exclusions -----------------------------------------------------------


@pytest.mark.parametrize("warmup", [0, 1])
def test_an_aggressive_pruner_prunes_a_poor_trial(tiny_us8k_master, tmp_path, warmup):
    storage = f"sqlite:///{tmp_path / 'runs' / 'tune-p' / 'study.db'}"
    (tmp_path / "runs" / "tune-p").mkdir(parents=True)
    queued = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    space = {**SPACE, "train.max_lr": {"low": 1e-9, "high": 0.1, "log": True}}
    queued.enqueue_trial({**GOOD, "train.max_lr": 0.01})
    queued.enqueue_trial({**GOOD, "train.max_lr": 1e-9})  # barely trains: near chance
    assert (
        cli.main(
            tune_args(
                tmp_path,
                tiny_us8k_master,
                space,
                "--trials",
                "2",
                "--study",
                "p",
                "--prune-startup",
                "1",
                "--prune-warmup",
                str(warmup),
            )
        )
        == 0
    )
    good, poor = load(tmp_path, "p").get_trials()
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert poor.state == optuna.trial.TrialState.PRUNED
    # Steps are split indices (1, 2); warm-up w: the first w splits are never pruned.
    assert list(poor.intermediate_values) == [1, 2][: warmup + 1]
    assert f"pruned after split {warmup + 1}" in poor.user_attrs["reason"]
    assert (tmp_path / "runs" / "tune-p" / "trials" / "1" / "splits" / "2").exists() == (warmup == 1)
    table = pd.read_csv(tmp_path / "runs" / "tune-p" / "trials.csv")
    assert table["state"].tolist() == ["complete", "pruned"]


def test_failed_and_excluded_trials_are_recorded_and_the_study_goes_on(tiny_us8k_master, tmp_path, monkeypatch):
    real_fit, trained = cv_mod.fit_split, []

    def fit(bank, labels, train_idx, val_idx, test_idx, n_classes, cfg, **kw):
        trained.append(cfg.features.n_mels)
        if cfg.train.max_lr > 1:
            raise TrainingError("training loss became nan at epoch 1; try a lower train.lr / train.max_lr")
        return real_fit(bank, labels, train_idx, val_idx, test_idx, n_classes, cfg, **kw)

    monkeypatch.setattr(cv_mod, "fit_split", fit)
    storage = f"sqlite:///{tmp_path / 'runs' / 'tune-f' / 'study.db'}"
    (tmp_path / "runs" / "tune-f").mkdir(parents=True)
    queued = optuna.create_study(study_name="f", storage=storage, direction="maximize")
    space = {
        **SPACE,
        "features.n_mels": [16, 128],
        "features.n_fft": [256, 512],
        "train.max_lr": {"low": 0.001, "high": 10.0, "log": True},
    }
    queued.enqueue_trial({**GOOD, "features.n_mels": 128, "features.n_fft": 256, "train.max_lr": 0.01})
    queued.enqueue_trial({**GOOD, "train.max_lr": 5.0})
    queued.enqueue_trial({**GOOD, "train.max_lr": 0.01})
    args = tune_args(tmp_path, tiny_us8k_master, space, "--trials", "2", "--study", "f", "--splits", "1", mlflow=True)
    assert cli.main(args) == 0
    excluded, failed, complete = load(tmp_path, "f").get_trials()
    # 128 Mel bands at n_fft 256, 8 kHz: empty filters. Excluded before any training, not counted.
    assert excluded.state == optuna.trial.TrialState.PRUNED and excluded.user_attrs["excluded"]
    assert excluded.user_attrs["reason"].startswith("excluded before training: 128 Mel bands")
    assert 128 not in trained
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs["reason"].startswith("TrainingError: training loss became nan")
    assert complete.state == optuna.trial.TrialState.COMPLETE  # the study went on
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    runs = runs[runs["tags.mlflow.runName"].str.startswith("trial-")].sort_values("tags.trial")
    assert runs["tags.state"].tolist() == ["pruned", "failed", "complete"]
    assert runs["status"].tolist() == ["FINISHED", "FAILED", "FINISHED"]
    assert runs["tags.reason"].iloc[1].startswith("TrainingError")
    report = (tmp_path / "runs" / "tune-f" / "report.md").read_text()
    assert "1 failed, 1 excluded before training" in report


# ---- the objective sees validation folds only ------------------------------------------------


def test_objective_is_the_validation_figure_never_the_test_fold(tiny_us8k, tmp_path, monkeypatch):
    # Relabel the clips of fold 1 (split 1's test fold): a model that learned the classes scores
    # well on the validation fold (2) and badly on the test fold, by construction.
    meta_csv = tiny_us8k / "metadata" / "UrbanSound8K.csv"
    meta = pd.read_csv(meta_csv)
    names = meta.groupby("classID")["class"].first()
    rows = meta["fold"] == 1
    meta.loc[rows, "classID"] = (meta.loc[rows, "classID"] + 1) % len(names)
    meta.loc[rows, "class"] = names[meta.loc[rows, "classID"]].to_numpy()
    meta.to_csv(meta_csv, index=False)

    seen = []
    real_fit = cv_mod.fit_split
    monkeypatch.setattr(cv_mod, "fit_split", lambda *a, **kw: seen.append(a[4]) or real_fit(*a, **kw))
    cfg = tiny_config(tmp_path, tiny_us8k, splits=[1])
    objective = Objective(
        cfg, load_space(write_space(tmp_path / "space.yaml", SPACE)), tmp_path / "runs" / "tune-fixed", "fixed"
    )
    value = objective(optuna.trial.FixedTrial(GOOD, number=7))
    assert seen == [None]  # fit_split was never handed the test fold

    scored = run_cv(merge(apply_params(cfg, GOOD), {"name": "scored"}), progress=False)
    info = read_split_json(tmp_path / "runs" / "scored", 1)
    assert seen[1] is not None  # (the spy does see test indices when kfold passes them)
    assert value == info["val_acc"] == scored.val_acc[1] == info["val_correct"] / info["n_val"]
    assert info["val_acc"] >= info["test_acc"] + 0.4  # the two figures differ by design
    assert read_split_json(tmp_path / "runs" / "tune-fixed" / "trials" / "7", 1)["test_acc"] is None

    # Poison the test fold's features: the objective does not move, so no test clip reaches
    # the normalisation statistics, training or the epoch choice.
    folds = create_dataset(cfg.dataset, cfg.cache_dir).table["fold"].to_numpy()
    real_bank = prepare_mod.feature_bank

    def poisoned(*a, **kw):
        bank = real_bank(*a, **kw).clone()
        bank[np.flatnonzero(folds == 1)] = float("nan")
        return bank

    monkeypatch.setattr(prepare_mod, "feature_bank", poisoned)
    objective = Objective(cfg, objective.space, tmp_path / "runs" / "tune-fixed", "fixed")  # a fresh bank
    assert objective(optuna.trial.FixedTrial(GOOD, number=8)) == value


# ---- the search space --------------------------------------------------------------------------


def test_space_defaults_yaml_overrides_and_checks(tmp_path):
    space = load_space()
    assert space["features.n_mels"] == [32, 64, 96, 128] and "train.max_lr" not in space
    path = tmp_path / "space.yaml"
    path.write_text(
        "features:\n  n_mels: [64, 128]\naugment.time_shift: null\n"
        "train.max_lr: {low: 1e-4, high: 1e-2, log: true}\nmodel.name: wide_cnn\n"
    )
    space = load_space(path)
    assert space["features.n_mels"] == [64, 128] and "augment.time_shift" not in space
    assert space["train.max_lr"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert space["model.name"] == ["wide_cnn"]
    cfg = RunConfig()
    check_space(space, cfg)
    assert apply_params(cfg, {"features.n_fft": 2048, "features.hop_length": "1/4"}).features.hop_length == 512
    assert apply_params(cfg, {"features.hop_length": 300}).features.hop_length == 300
    for bad, message in [
        ({"dataset.root": ["x"]}, "not a searchable"),
        ({"features.n_mels": {"low": 5, "high": 1}}, "low < high"),
        ({"augment.freq_masks": ["two"]}, "not a valid int"),
        ({"model.name": ["resnet9000"]}, "not a valid choice"),
        ({"features.n_mels": [32, 128], "features.n_fft": [256]}, "n_mels=128"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_space(bad, merge(cfg, {"audio.sample_rate": 8000}))
    assert parse_duration("3h") == 10800 and parse_duration("90m") == 5400 and parse_duration("45") == 45
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_tune_refuses_name_and_runs_without_validation_folds(tmp_path, tiny_us8k_master, capsys):
    assert cli.main(tune_args(tmp_path, tiny_us8k_master, SPACE, "--name", "x")) == 2
    assert "--study" in capsys.readouterr().err
    assert cli.main(tune_args(tmp_path, tiny_us8k_master, SPACE, "--val", "none")) == 2
    assert "--val next" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any study or folder was made


OPENING_WORKER = """
    import sys, time, traceback
    from pathlib import Path
    from bench.core.config import RunConfig, merge
    from bench.drivers.tune import TuneConfig, open_study
    folder, me, workers, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cfg = merge(RunConfig(), {"dataset.name": "us8k", "splits": [1, 2]})
    failed = 0
    for r in range(rounds):
        (folder / f"ready-{r}-{me}").touch()  # a barrier: go when every worker is ready
        while len(list(folder.glob(f"ready-{r}-*"))) < workers:
            time.sleep(0.002)
        (folder / f"round-{r}").mkdir(exist_ok=True)
        try:
            study = open_study(cfg, TuneConfig(study="s"), {"features.n_mels": [16, 32]}, folder / f"round-{r}")
            study.tell(study.ask(), float(me))
        except Exception:  # counted; the worker still meets the others at the next barrier
            failed += 1
            traceback.print_exc()
    sys.exit(1 if failed else 0)
"""


def test_workers_opening_one_fresh_study_together_all_succeed(tmp_path):
    """Two or three `tune` workers on a fresh SQLite study: the schema race is retried, not fatal."""
    import os
    import subprocess
    import sys
    import textwrap

    repo = Path(__file__).resolve().parents[1]
    workers, rounds = 3, 8  # without the retry about one round in three lost a worker
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(OPENING_WORKER), str(tmp_path), str(i), str(workers), str(rounds)],
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, [err[-2000:] for _, err in results]
    for r in range(rounds):
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / f'round-{r}' / 'study.db'}")
        assert sorted(t.value for t in study.trials) == [float(i) for i in range(workers)]


def test_a_storage_that_cannot_be_opened_leaves_no_study_folder(tiny_us8k_master, tmp_path, capsys):
    flags = [
        "tune",
        "--dataset",
        "us8k",
        "--root",
        str(tiny_us8k_master),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-mlflow",
        "--quiet",
        "--trials",
        "1",
        "--study",
        "q",
    ]
    for storage in (f"sqlite:///{tmp_path / 'nodir' / 'x.db'}", "bogus://x"):
        assert cli.main([*flags, "--storage", storage]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot open the study storage" in err
        assert not (tmp_path / "runs" / "tune-q").exists()


def test_ctrl_c_is_one_line_and_the_rerun_retries_the_trial_with_its_settings(
    tiny_us8k_master, tmp_path, monkeypatch, capfd
):
    """Ctrl-C in a trial's second split: exit 130 and one line, not Optuna's KeyboardInterrupt
    traceback. The re-run retries the trial with its settings, keeping its finished first split,
    and goes on with the settings an uninterrupted study draws next (before: a failed trial that
    was never retried, and a sampler reseeded by the number of trials, so other settings)."""
    real_fit, calls = cv_mod.fit_split, []

    def interrupt_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*a, **kw)

    args = tune_args(tmp_path, tiny_us8k_master, SPACE, "--trials", "2", "--prune-startup", "5", "--threads", "1")
    monkeypatch.setattr(cv_mod, "fit_split", interrupt_second)
    assert cli.main(args) == 130
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "failed with" not in err, err
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("interrupted:")
    monkeypatch.setattr(cv_mod, "fit_split", real_fit)
    calls.clear()
    assert cli.main(args) == 0
    db = f"sqlite:///{tmp_path / 'runs' / 'tune-us8k' / 'study.db'}"
    trials = optuna.load_study(study_name="us8k", storage=db).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["reason"] == "interrupted" and trials[1].params == trials[0].params
    assert (tmp_path / "runs" / "tune-us8k" / "trials" / "1" / "splits" / "1" / "DONE").is_file()
    # the same study uninterrupted: the same settings and values
    other = tmp_path / "other"
    other.mkdir()
    other_args = tune_args(other, tiny_us8k_master, SPACE, "--trials", "2", "--prune-startup", "5", "--threads", "1")
    assert cli.main(other_args) == 0
    ref = optuna.load_study(study_name="us8k", storage=f"sqlite:///{other / 'runs' / 'tune-us8k' / 'study.db'}")
    assert [(t.params, t.value) for t in ref.get_trials()] == [(t.params, t.value) for t in trials[1:]]
