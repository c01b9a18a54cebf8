"""The speed benchmark's pieces: the per-item baseline does the same work as the bank, the fast
masks are torchaudio's masks, and `speed` reports every figure. No timing is asserted."""

import json

import pytest
import torch
import torchaudio.transforms as T

import cli
from bench.data.cache import load_waveforms
from bench.core.config import AugmentConfig, DatasetConfig
from bench.data.datasets import create_dataset
from bench.features.bank import Augment, feature_bank
from bench.drivers.speed import ROWS, PerItemDataset, render
from tests.conftest import fast_config


@pytest.mark.parametrize(
    "aug",
    [
        AugmentConfig(0.4, 2, 0.1, 2, 0.1),
        AugmentConfig(0.0, 3, 0.25, 1, 0.05),
        AugmentConfig(0.1, 0, 0.1, 2, 0.2),
        AugmentConfig(0.0, 0, 0.0, 0, 0.0),
    ],
)
def test_augment_masks_are_torchaudios_iid_masks(aug):
    x = torch.randn(8, 2, 32, 50) + 5
    torch.manual_seed(3)
    ref = x
    if int(aug.time_shift * 50):  # the time shift, as Augment does it
        m = int(aug.time_shift * 50)
        shift = torch.randint(-m, m + 1, (8, 1, 1, 1))
        ref = torch.gather(ref, -1, ((torch.arange(50) - shift) % 50).expand_as(ref))
    for _ in range(aug.freq_masks):
        ref = T.FrequencyMasking(max(1, int(aug.freq_mask_width * 32)), iid_masks=True)(ref)
    for _ in range(aug.time_masks):
        ref = T.TimeMasking(max(1, int(aug.time_mask_width * 50)), iid_masks=True)(ref)
    torch.manual_seed(3)
    assert torch.equal(Augment(aug, n_mels=32, frames=50)(x), ref)


def test_per_item_dataset_gives_the_banks_features(tiny_us8k_master, tmp_path):
    cfg = fast_config(
        tmp_path, tiny_us8k_master, **{"augment.time_shift": 0.0, "augment.freq_masks": 0, "augment.time_masks": 0}
    )
    dataset = create_dataset(DatasetConfig("us8k", str(tiny_us8k_master)), tmp_path)
    waves = load_waveforms(dataset, cfg.audio, tmp_path, progress=False)
    bank = feature_bank(waves, cfg.audio, cfg.features, torch.device("cpu"), progress=False)
    items = PerItemDataset(dataset.table["path"], dataset.table["label"], cfg.audio, cfg.features, cfg.augment)
    for i in (0, 5, len(items) - 1):
        spec, label = items[i]
        assert spec.shape == bank.shape[1:] and label == dataset.table["label"][i]
        assert (spec - bank[i]).norm() / bank[i].norm() < 1e-3  # same decode, mix, resample, pad, mel
    aug = PerItemDataset(
        dataset.table["path"], dataset.table["label"], cfg.audio, cfg.features, AugmentConfig(0.4, 2, 0.1, 2, 0.1)
    )
    assert aug[0][0].shape == bank.shape[1:]


def test_speed_command_reports_every_figure(tiny_us8k_master, tmp_path, capsys):
    out = tmp_path / "speed.json"
    args = [
        "speed",
        "--dataset",
        "us8k",
        "--root",
        str(tiny_us8k_master),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--time-box",
        "0.05",
        "--repeats",
        "1",
        "--quiet",
        "--set",
        "audio.sample_rate=8000",
        "--set",
        "audio.duration=1.0",
        "--set",
        "features.n_fft=256",
        "--set",
        "features.hop_length=128",
        "--json",
        str(out),
    ]
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert {key for key, *_ in ROWS} - {"peak_gpu_gb"} <= set(figures)  # CUDA peak only on CUDA
    assert all(v > 0 for v in figures.values()), figures
    assert result["clips"] == 90 and result["estimates"]["kfold_hours"] > 0
    assert result["estimates"]["tune_hours"] > result["estimates"]["kfold_hours"]
    printed = capsys.readouterr().out
    assert printed.strip() == render(result).strip()
    assert "training / per-item" in printed and "model compute" in printed
    assert not list((tmp_path / "cache").glob("speed-*"))  # the measured cache is removed
