"""Presets resolve to the tutorials' settings; `suite` runs several over one fold plan into one table."""

import json

import pandas as pd
import pytest

import cli
from bench.core.config import RunConfig, flatten
from bench.core.presets import PRESETS, SOURCES, apply_preset
from bench.drivers.prepare import check_config
from tests.test_cli import fast_flags

TUTORIALS = {  # the description of each system, key by key
    "seed-librosa-cnn": {
        "audio.sample_rate": 22050,
        "audio.channels": 1,
        "audio.duration": 4.0,
        "features.frontend": "logmel_max",
        "features.n_mels": 128,
        "features.n_fft": 2048,
        "features.hop_length": 512,
        "features.top_db": 80.0,
        "augment.time_shift": 0.0,
        "augment.freq_masks": 0,
        "augment.time_masks": 0,
        "model.name": "librosa_cnn",
        "train.optimizer": "adam",
        "train.schedule": "constant",
        "train.lr": 1e-3,
        "train.batch_size": 32,
        "train.epochs": 10,
        "train.mixup": 0.0,
    },
    "seed-gtzan-vit": {
        "features.frontend": "logmel_max",
        "features.n_mels": 128,
        "features.image_size": 64,
        "model.name": "vit",
        "model.params.image_size": 64,
        "train.optimizer": "adam",
        "train.lr": 1e-3,
        "train.batch_size": 32,
        "train.epochs": 30,
        "train.schedule": "plateau",
        "train.plateau_factor": 0.3,
        "train.plateau_patience": 3,
        "augment.freq_masks": 0,
    },
    "seed-gtzan-cnn": {
        "audio.duration": 5.0,
        "audio.channels": 1,
        "features.frontend": "linear_db",
        "features.n_fft": 2048,
        "features.hop_length": 2048 - 128,
        "features.image_size": 64,
        "model.name": "keras_cnn",
        "train.optimizer": "sgd",
        "train.lr": 0.01,
        "train.momentum": 0.9,
        "train.schedule": "constant",
        "train.batch_size": 8,
        "train.epochs": 50,
        "augment.time_masks": 0,
    },
    "seed": {
        "audio.sample_rate": 44100,
        "audio.channels": 2,
        "audio.duration": 4.0,
        "features.frontend": "logmel",
        "features.n_mels": 64,
        "features.n_fft": 1024,
        "features.hop_length": 512,
        "augment.time_shift": 0.4,
        "augment.freq_masks": 2,
        "augment.time_masks": 2,
        "model.name": "tutorial_cnn",
        "train.optimizer": "adam",
        "train.schedule": "onecycle",
        "train.max_lr": 1e-3,
        "train.batch_size": 16,
        "train.epochs": 20,
    },
}


@pytest.mark.parametrize("name", list(TUTORIALS))
def test_each_preset_resolves_to_its_tutorials_settings(name):
    flat = flatten(apply_preset(RunConfig(), name))
    assert {k: flat[k] for k in TUTORIALS[name]} == TUTORIALS[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_a_valid_config_with_a_source(name):
    check_config(apply_preset(RunConfig(), name))  # the model fits its front end's output shape
    assert SOURCES[name]


def test_presets_are_listed(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS) and "Kong et al. 2020" in out


def test_suite_runs_presets_on_one_fold_plan_into_one_table(tiny_us8k_master, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = fast_flags(tmp_path, tiny_us8k_master)
    code = cli.main(
        [
            "suite",
            *flags,
            "--presets",
            "seed,strong",
            "--name",
            "tiny",
            "--epochs",
            "1",
            "--splits",
            "1,2",
            "--tracking-uri",
            uri,
            "--experiment",
            "suite",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / "suite-tiny"
    table = pd.read_csv(folder / "suite.csv")
    assert table["entry"].tolist() == ["seed", "strong"]
    assert (table["n_splits"] == 2).all() and table["train_clips_per_s"].gt(0).all()
    for row in table.itertuples():  # each row is its run's own report
        scores = json.loads((folder / row.entry / "scores.json").read_text())
        assert row.acc_mean == pytest.approx(scores["acc_mean"])
    assert (
        "strong(depth=4, dropout=0.1, head_dropout=0.2, width=16)" in table.set_index("entry").loc["strong", "settings"]
    )
    assert json.loads((folder / "suite.json").read_text())["same_folds"] is True
    assert "| seed |" in (folder / "suite.md").read_text() and "| strong |" in out

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["suite"])
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert sorted(parents["tags.preset"]) == ["seed", "strong"] and (parents["tags.suite"] == "tiny").all()
    assert set(parents["params.model.name"]) == {"tutorial_cnn", "strong"}
    assert parents.set_index("tags.preset").loc["strong", "params.model.params.width"] == "16"


def test_suite_refuses_an_unknown_preset_before_anything_is_written(tmp_path, capsys):
    assert cli.main(["suite", "--presets", "seed,nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err and not (tmp_path / "runs").exists()
