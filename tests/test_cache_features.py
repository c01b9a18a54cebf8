"""The waveform cache (decode once, keyed, atomic) and the log-mel feature bank."""

import numpy as np
import pytest
import soundfile as sf
import torch

from bench.data import cache as cache_mod
from bench.data.audio import load_clip
from bench.data.cache import load_waveforms
from bench.core.config import AudioConfig, AugmentConfig, DatasetConfig, FeatureConfig
from bench.data.datasets import create_dataset
from bench.features.bank import Augment, FeatureError, check_features, feature_bank, log_mel


@pytest.fixture
def manifest(tiny_us8k_master, tmp_path):
    return create_dataset(DatasetConfig("us8k", str(tiny_us8k_master)), tmp_path)


AUDIO = AudioConfig(sample_rate=8000, channels=1, duration=1.0)


def test_fixture_mixes_real_formats(manifest):
    infos = [sf.info(p) for p in manifest.table["path"]]
    assert len({i.samplerate for i in infos}) >= 3
    assert {i.channels for i in infos} == {1, 2}
    assert any(i.duration < 1.0 for i in infos)


def test_cache_shapes_and_content(manifest, tmp_path):
    waves = load_waveforms(manifest, AUDIO, tmp_path, progress=False)
    assert waves.data.shape == (len(manifest.table), 1, 8000) and waves.data.dtype == np.int16
    assert waves.ok.all()
    for i in (0, 7, len(manifest.table) - 1):
        ref = load_clip(manifest.table["path"][i], AUDIO)
        assert np.abs(waves.get(i, i + 1)[0] - ref).max() <= np.abs(ref).max() / 32767
        assert np.abs(waves.data[i]).max() == 32767  # each clip uses the full int16 range
    stereo = load_waveforms(manifest, AudioConfig(8000, 2, 0.5), tmp_path, progress=False)
    assert stereo.data.shape == (len(manifest.table), 2, 4000)


def test_cache_is_reused_and_rebuilt_when_audio_settings_change(manifest, tmp_path, monkeypatch):
    first = load_waveforms(manifest, AUDIO, tmp_path, progress=False)
    calls = []
    real = cache_mod.load_clip
    monkeypatch.setattr(cache_mod, "load_clip", lambda *a: calls.append(1) or real(*a))
    again = load_waveforms(manifest, AUDIO, tmp_path, progress=False)
    assert calls == [] and again.path == first.path
    other = load_waveforms(manifest, AudioConfig(16000, 1, 1.0), tmp_path, progress=False)
    assert len(calls) == len(manifest.table) and other.path != first.path


def test_cache_build_killed_half_way_leaves_nothing_trusted(manifest, tmp_path, monkeypatch):
    real, calls = cache_mod.load_clip, []

    def dying(path, audio):
        calls.append(path)
        if len(calls) == 10:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-build
        return real(path, audio)

    monkeypatch.setattr(cache_mod, "load_clip", dying)
    with pytest.raises(KeyboardInterrupt):
        load_waveforms(manifest, AUDIO, tmp_path, workers=1, progress=False)
    assert [p.name for p in (tmp_path / "waves").iterdir()] == [cache_mod.LOCK]  # no entry, no temporary folder
    monkeypatch.setattr(cache_mod, "load_clip", real)
    waves = load_waveforms(manifest, AUDIO, tmp_path, workers=1, progress=False)
    assert waves.ok.all() and (np.abs(waves.data).max(axis=(1, 2)) == 32767).all()


@pytest.mark.parametrize("n_mels,n_fft,hop", [(32, 256, 128), (16, 512, 64), (64, 512, 256)])
def test_feature_bank_shapes(manifest, tmp_path, n_mels, n_fft, hop):
    waves = load_waveforms(manifest, AUDIO, tmp_path, progress=False)
    feat = FeatureConfig(n_mels=n_mels, n_fft=n_fft, hop_length=hop)
    bank = feature_bank(waves, AUDIO, feat, torch.device("cpu"), batch_size=7, progress=False)
    assert bank.shape == (len(manifest.table), 1, n_mels, 8000 // hop + 1)
    assert torch.isfinite(bank).all()
    assert feature_bank(waves, AUDIO, feat, torch.device("cpu"), progress=False) is bank  # reused


def test_int16_storage_keeps_features_within_1e4_of_float32(manifest, tmp_path):
    waves = load_waveforms(manifest, AUDIO, tmp_path, progress=False)
    feat = FeatureConfig(n_mels=32, n_fft=256, hop_length=128)
    transform = log_mel(AUDIO, feat)
    exact = torch.stack([torch.from_numpy(load_clip(p, AUDIO)) for p in manifest.table["path"][:20]])
    stored = torch.from_numpy(waves.get(0, 20))
    a, b = transform(exact), transform(stored)
    rel = (a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)  # per clip
    assert rel.max() < 1e-4 * 5 and (a - b).norm() / a.norm() < 1e-4 * 2


def test_silent_clip_features_are_finite():
    transform = log_mel(AUDIO, FeatureConfig(n_mels=32, n_fft=256, hop_length=128))
    db = transform(torch.zeros(2, 1, 8000))
    assert torch.isfinite(db).all()


def test_empty_mel_filters_are_refused_before_any_work():
    with pytest.raises(FeatureError, match="128 Mel bands.*at most"):
        check_features(AUDIO, FeatureConfig(n_mels=128, n_fft=256, hop_length=128))
    check_features(AUDIO, FeatureConfig(n_mels=64, n_fft=256, hop_length=128))


def test_augment_masks_and_shifts_per_clip():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 32, 50) + 5  # no zeros to begin with
    aug = Augment(
        AugmentConfig(time_shift=0.0, freq_masks=2, freq_mask_width=0.25, time_masks=0, time_mask_width=0.0),
        n_mels=32,
        frames=50,
    )
    y = aug(x)
    zero_rows = (y == 0).all(dim=-1).sum(dim=(1, 2))  # masked Mel bands per clip
    assert y.shape == x.shape and zero_rows.max() > 0 and zero_rows.max() <= 2 * 8
    assert len(set(zero_rows.tolist())) > 1 or not torch.equal(y[0], y[1])  # masks differ per clip
    shift = Augment(AugmentConfig(time_shift=0.4, freq_masks=0, time_masks=0), n_mels=32, frames=50)
    z = shift(x)
    assert torch.allclose(z.sort(dim=-1).values, x.sort(dim=-1).values)  # a roll keeps the frames
    assert not torch.equal(z, x)
    none = Augment(AugmentConfig(time_shift=0.0, freq_masks=0, time_masks=0), n_mels=32, frames=50)
    assert torch.equal(none(x), x)
