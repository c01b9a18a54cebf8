"""Front ends against references computed independently in numpy (librosa's formulas, written out
here; matplotlib's mlab.specgram), their shapes, the resize step, the bank's key, and validation."""

import ast
from dataclasses import fields, replace
from pathlib import Path

import matplotlib.mlab as mlab
import numpy as np
import pytest
import torch

from bench.features import bank as features_mod
from bench.core.config import AudioConfig, ConfigError, FeatureConfig, RunConfig, merge
from bench.core.validation import validate
from bench.features.bank import FeatureError, check_features, feature_bank, max_mels
from bench.features.frontends import FRONTENDS, ResizeToImage, create_frontend, frontend_shape, list_frontends, uses_mel
from bench.drivers.prepare import check_config
from bench.drivers.tune import check_space

AUDIO = AudioConfig(sample_rate=8000, channels=2, duration=0.5)


def signal(batch=3, channels=2, samples=4000, seed=0) -> np.ndarray:
    """Noise plus a tone; clips at very different levels, the second channel quieter than the first,
    so that 'each clip's maximum' differs from a batch-wide or per-channel maximum."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / AUDIO.sample_rate
    x = 0.3 * rng.standard_normal((batch, channels, samples)) + 0.5 * np.sin(2 * np.pi * 440 * t)
    x *= np.array([1.0, 0.05, 3e-4, 0.5][:batch])[:, None, None]
    x[:, 1:] *= 0.2
    return x


def run(name: str, x: np.ndarray, feat: FeatureConfig, audio=AUDIO, dtype=torch.float64) -> np.ndarray:
    module = create_frontend(name, audio, feat).to(dtype)
    with torch.no_grad():
        return module(torch.from_numpy(x).to(dtype)).double().numpy()


# ---- numpy references: librosa's formulas (filters.mel, stft, power_to_db) written out --------


def hz_to_mel(f, scale):
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0  # Slaney: linear below 1 kHz, logarithmic above
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m, scale):
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(sr, n_fft, n_mels, f_min, f_max, scale, norm) -> np.ndarray:
    """librosa.filters.mel: triangles between consecutive Mel points, on the rfft bin frequencies."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    hz = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2), scale)
    lower = (fft_freqs[None, :] - hz[:-2, None]) / np.diff(hz)[:-1, None]
    upper = (hz[2:, None] - fft_freqs[None, :]) / np.diff(hz)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights


def mel_power_ref(x: np.ndarray, sr, feat: FeatureConfig) -> np.ndarray:
    """Centred STFT (reflect padding), periodic Hann window, |X|^2, Mel filters: [..., n_mels, frames]."""
    pad = feat.n_fft // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, feat.n_fft, axis=-1)[..., :: feat.hop_length, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(feat.n_fft) / feat.n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [..., frames, bins]
    fb = mel_filters(sr, feat.n_fft, feat.n_mels, feat.f_min, feat.f_max or sr / 2, feat.mel_scale, feat.mel_norm)
    return np.einsum("mb,...tb->...mt", fb, power)


def power_to_db_ref_max(S: np.ndarray, top_db: float, amin=1e-10) -> np.ndarray:
    """librosa.power_to_db(S, ref=np.max, amin, top_db), verbatim, for one clip."""
    log_spec = 10.0 * np.log10(np.maximum(amin, S))
    log_spec -= 10.0 * np.log10(np.maximum(amin, np.max(S)))
    return np.maximum(log_spec, log_spec.max() - top_db)


# torchaudio builds its Mel filterbank and window in float32 even when run in float64: filter weights
# differ from the float64 formula by ~1e-5 relative, i.e. ~5e-5 dB
DB_TOL = 1e-3

MEL_CASES = [
    FeatureConfig(n_mels=32, n_fft=256, hop_length=128),
    FeatureConfig(n_mels=40, n_fft=512, hop_length=100, f_min=50.0, f_max=3500.0, top_db=60.0),
    FeatureConfig(n_mels=64, n_fft=256, hop_length=64, mel_scale="slaney", mel_norm="slaney"),
]


@pytest.mark.parametrize("feat", MEL_CASES)
def test_logmel_max_is_librosas_power_to_db_ref_max(feat):
    x = signal()
    out = run("logmel_max", x, replace(feat, frontend="logmel_max"))
    S = mel_power_ref(x, AUDIO.sample_rate, feat)
    ref = np.stack([power_to_db_ref_max(clip, feat.top_db) for clip in S])  # each clip on its own
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=DB_TOL)
    assert (out.max(axis=(1, 2, 3)) == 0).all() and out.min() >= -feat.top_db
    assert (out[:, 1].max(axis=(1, 2)) < -10).all()  # the quieter channel: the max is over channels too
    # the clip's own maximum, not the batch's: the quiet clip's dB map equals that of the clip alone
    np.testing.assert_allclose(run("logmel_max", x[2:], feat), out[2:], atol=1e-9)
    # float32, as the bank computes it, stays close
    assert np.abs(run("logmel_max", x, feat, dtype=torch.float32) - out).max() < 1e-2


@pytest.mark.parametrize("feat", MEL_CASES)
def test_logmel_is_absolute_db_floored_below_each_clips_peak(feat):
    x = signal()
    out = run("logmel", x, feat)
    S = mel_power_ref(x, AUDIO.sample_rate, feat)
    db = 10 * np.log10(np.maximum(S, 1e-10))
    ref = np.maximum(db, db.max(axis=(1, 2, 3), keepdims=True) - feat.top_db)
    np.testing.assert_allclose(out, ref, atol=DB_TOL)


def test_logmel_is_todays_transform_unchanged():
    """The default front end is exactly the torchaudio pipeline foldbench always used."""
    import torchaudio.transforms as T

    feat = FeatureConfig(n_mels=32, n_fft=256, hop_length=128)
    assert feat.frontend == "logmel" and feat.mel_scale == "htk" and feat.mel_norm is None and feat.image_size is None
    old = torch.nn.Sequential(
        T.MelSpectrogram(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, f_min=0.0, f_max=None, power=2.0),
        T.AmplitudeToDB(stype="power", top_db=80.0),
    )
    x = torch.from_numpy(signal()).float()
    assert torch.equal(create_frontend("logmel", AUDIO, feat)(x), old(x))


LINEAR_CASES = [(256, 128, 4000), (256, 256, 4000), (251, 100, 4000), (2048, 1920, 4000), (256, 64, 200)]


@pytest.mark.filterwarnings("ignore:Only one segment is calculated")  # matplotlib, on the short clip
@pytest.mark.parametrize("n_fft,hop,samples", LINEAR_CASES)
def test_linear_db_matches_matplotlib_specgram(n_fft, hop, samples):
    x = signal(samples=samples)
    feat = FeatureConfig(frontend="linear_db", n_fft=n_fft, hop_length=hop, top_db=400.0)  # no floor reached
    audio = replace(AUDIO, duration=samples / AUDIO.sample_rate)
    out64, out32 = (run("linear_db", x, feat, audio, dtype) for dtype in (torch.float64, torch.float32))
    floored = run("linear_db", x, replace(feat, top_db=80.0), audio)
    for b in range(x.shape[0]):
        specs = [
            mlab.specgram(x[b, c], NFFT=n_fft, Fs=AUDIO.sample_rate, noverlap=n_fft - hop, mode="psd")
            for c in range(x.shape[1])
        ]
        for c, (spec, _freqs, t) in enumerate(specs):
            assert out64[b, c].shape == spec.shape == (n_fft // 2 + 1, len(t))
            np.testing.assert_allclose(10 ** (out64[b, c] / 10), spec, rtol=1e-4)
            np.testing.assert_allclose(out64[b, c], 10 * np.log10(spec), rtol=1e-4)
            power32 = 10 ** (out32[b, c] / 10)
            assert np.linalg.norm(power32 - spec) / np.linalg.norm(spec) < 1e-4
        db = 10 * np.log10(np.stack([spec for spec, _, _ in specs]))  # this clip's channels
        np.testing.assert_allclose(floored[b], np.maximum(db, db.max() - 80.0), rtol=1e-4)
    assert frontend_shape(audio, feat)[1:] == out64.shape[2:]


def test_silence_is_finite_in_every_front_end():
    x = torch.zeros(2, 2, 4000)
    for name in list_frontends():
        out = create_frontend(name, AUDIO, FeatureConfig(frontend=name, n_mels=32, n_fft=256, hop_length=128))(x)
        assert torch.isfinite(out).all(), name


# ---- the resize-to-image step ----------------------------------------------------------------


def test_resize_follows_half_pixel_bilinear_and_keeps_constants():
    # align_corners=False: output pixel centres at (i + 0.5) / 2 - 0.5 of the input, edges clamped
    two = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    expected_row = torch.tensor([1.0, 1.25, 1.75, 2.0])
    out = ResizeToImage(4)(two)[0, 0]
    assert torch.allclose(out[0], expected_row) and torch.allclose(out[:, 0], torch.tensor([1.0, 1.5, 2.5, 3.0]))
    constant = torch.full((3, 2, 40, 63), -12.5)
    assert torch.equal(ResizeToImage(64)(constant), torch.full((3, 2, 64, 64), -12.5))
    assert ResizeToImage(16)(torch.randn(2, 40, 63)).shape == (2, 16, 16)  # one clip, no batch


@pytest.mark.parametrize("name", sorted(FRONTENDS))
@pytest.mark.parametrize(
    "feat",
    [
        FeatureConfig(n_mels=32, n_fft=256, hop_length=128),
        FeatureConfig(n_mels=16, n_fft=512, hop_length=100),
        FeatureConfig(n_mels=64, n_fft=256, hop_length=64, image_size=64),
        FeatureConfig(n_mels=24, n_fft=1024, hop_length=1000, image_size=8),
    ],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_output_shapes(name, feat, channels):
    audio, feat = replace(AUDIO, channels=channels), replace(feat, frontend=name)
    check_features(audio, feat)
    out = run(name, signal(batch=2, channels=channels), feat, audio, torch.float32)
    assert out.shape[1:] == frontend_shape(audio, feat) and np.isfinite(out).all()
    if feat.image_size:
        assert out.shape[1:] == (channels, feat.image_size, feat.image_size)
    elif uses_mel(name):
        assert out.shape[2] == feat.n_mels
    else:
        assert out.shape[2] == feat.n_fft // 2 + 1  # linear_db ignores n_mels


def test_resized_logmel_max_is_the_resized_map():
    feat = FeatureConfig(frontend="logmel_max", n_mels=32, n_fft=256, hop_length=128)
    x = signal()
    plain = torch.from_numpy(run("logmel_max", x, feat))
    resized = run("logmel_max", x, replace(feat, image_size=48))
    assert np.allclose(resized, ResizeToImage(48)(plain).numpy(), atol=1e-9)


# ---- registry, bank key, checks ----------------------------------------------------------------


def test_registry_lists_the_front_ends_and_is_a_leaf_module():
    assert list_frontends() == ["linear_db", "logmel", "logmel_max"]
    assert uses_mel("logmel") and uses_mel("logmel_max") and not uses_mel("linear_db")
    with pytest.raises(FeatureError, match="unknown front end 'mfcc'; known: linear_db, logmel"):
        create_frontend("mfcc", AUDIO, FeatureConfig())
    tree = ast.parse((Path(__file__).parent.parent / "bench" / "features" / "frontends.py").read_text())
    local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("bench")}
    assert local == {"bench.core.config", "bench.core.errors"}  # the settings and the one error base class


class FakeWaves:
    key = "fake"

    def __init__(self):
        self.data = signal(batch=4, channels=2).astype(np.float32)

    def __len__(self):
        return len(self.data)

    def get(self, start, stop):
        return self.data[start:stop]


OTHER_VALUE = {
    "n_mels": 16,
    "n_fft": 512,
    "hop_length": 64,
    "f_min": 100.0,
    "f_max": 3000.0,
    "top_db": 20.0,
    "frontend": "logmel_max",
    "mel_scale": "slaney",
    "mel_norm": "slaney",
    "image_size": 24,
}


def test_bank_is_rebuilt_when_any_feature_field_differs(monkeypatch):
    assert set(OTHER_VALUE) == {f.name for f in fields(FeatureConfig)}  # a new field needs a value here
    built = []
    real = features_mod.create_frontend
    monkeypatch.setattr(features_mod, "create_frontend", lambda *a: built.append(a[0]) or real(*a))
    monkeypatch.setattr(features_mod, "_BANKS", {})
    waves, base = FakeWaves(), FeatureConfig(n_mels=32, n_fft=256, hop_length=128)
    first = feature_bank(waves, AUDIO, base, torch.device("cpu"), batch_size=3, progress=False)
    assert feature_bank(waves, AUDIO, base, torch.device("cpu"), progress=False) is first and len(built) == 1
    for name, value in OTHER_VALUE.items():
        assert getattr(base, name) != value
        other = replace(base, **{name: value})
        bank = feature_bank(waves, AUDIO, other, torch.device("cpu"), batch_size=3, progress=False)
        assert len(built) == 2 and bank.shape[1:] == frontend_shape(AUDIO, other), name
        assert bank.shape != first.shape or not torch.equal(bank, first), name
        built.pop()
    linear = replace(base, frontend="linear_db")
    assert torch.equal(
        feature_bank(waves, AUDIO, linear, torch.device("cpu"), progress=False),
        torch.from_numpy(run("linear_db", waves.data, linear, dtype=torch.float32)),
    )


def test_check_features_per_front_end():
    # 128 bands from a 256-point FFT at 8 kHz leave empty Mel filters; linear_db ignores n_mels
    too_many = FeatureConfig(n_mels=128, n_fft=256, hop_length=128)
    with pytest.raises(FeatureError, match="128 Mel bands.*at most 86"):
        check_features(AUDIO, too_many)
    with pytest.raises(FeatureError, match="at most 86"):
        check_features(AUDIO, replace(too_many, frontend="logmel_max"))
    check_features(AUDIO, replace(too_many, frontend="linear_db"))
    # the Slaney scale spaces low filters linearly: more bands fit the same FFT
    assert max_mels(8000, 256) == 86 and max_mels(8000, 256, mel_scale="slaney") > 86
    check_features(AUDIO, replace(too_many, n_mels=100, mel_scale="slaney"))
    with pytest.raises(FeatureError, match="at most 86"):
        check_features(AUDIO, replace(too_many, n_mels=100))
    # linear_db: matplotlib needs 0 <= noverlap = n_fft - hop_length
    with pytest.raises(FeatureError, match="hop_length=300 is more than n_fft=256"):
        check_features(AUDIO, FeatureConfig(frontend="linear_db", n_fft=256, hop_length=300))
    # Mel front ends: the centred STFT reflects n_fft // 2 samples at each end of the clip
    short = AudioConfig(sample_rate=8000, channels=1, duration=0.016)  # 128 samples
    with pytest.raises(FeatureError, match="n_fft=256 needs clips longer than 128 samples"):
        check_features(short, FeatureConfig(n_mels=8, n_fft=256, hop_length=64))
    check_features(short, FeatureConfig(n_mels=8, n_fft=254, hop_length=64))
    check_features(short, FeatureConfig(frontend="linear_db", n_fft=256, hop_length=64))  # padded, 1 frame
    assert frontend_shape(short, FeatureConfig(frontend="linear_db", n_fft=256, hop_length=64)) == (1, 129, 1)
    with pytest.raises(FeatureError, match="unknown front end"):
        check_features(AUDIO, FeatureConfig(frontend="mfcc"))


@pytest.mark.parametrize(
    "key,value",
    [
        ("features.mel_scale", "mel"),
        ("features.mel_norm", "area"),
        ("features.image_size", 4),
        ("features.image_size", 2000),
    ],
)
def test_validation_refuses_bad_values_in_one_line(key, value):
    with pytest.raises(ConfigError) as e:
        validate(merge(RunConfig(), {key: value}))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_new_fields_from_the_command_line_and_an_unknown_front_end():
    cfg = validate(
        merge(
            RunConfig(),
            {
                "features.mel_norm": "slaney",
                "features.mel_scale": "slaney",
                "features.image_size": "64",
                "features.frontend": "logmel_max",
            },
        )
    )
    assert (cfg.features.mel_norm, cfg.features.image_size) == ("slaney", 64)
    cfg = validate(merge(cfg, {"features.mel_norm": "none", "features.image_size": "none"}))
    assert cfg.features.mel_norm is None and cfg.features.image_size is None
    with pytest.raises(ConfigError) as e:
        check_config(merge(RunConfig(), {"features.frontend": "mfcc", "train.device": "cpu"}))
    assert str(e.value) == (
        "features.frontend='mfcc': unknown front end; known: linear_db, logmel, "
        "logmel_max; fix it with --set features.frontend=<name>"
    )


def test_tune_space_searches_front_ends_and_checks_mel_bands_only_for_mel_ones():
    cfg = merge(RunConfig(), {"audio.sample_rate": 8000, "features.n_fft": 256, "features.hop_length": 128})
    check_space({"features.frontend": ["logmel", "logmel_max", "linear_db"], "features.n_mels": [32, 64]}, cfg)
    with pytest.raises(ConfigError, match="'mfcc' is not a registered front end"):
        check_space({"features.frontend": ["logmel", "mfcc"]}, cfg)
    space = {"features.n_mels": [32, 128], "features.n_fft": [256]}
    with pytest.raises(ConfigError, match="n_mels=128"):
        check_space(space, cfg)
    check_space(space, merge(cfg, {"features.frontend": "linear_db"}))  # n_mels is not used there
    check_space({**space, "features.mel_scale": ["htk", "slaney"]}, cfg)  # slaney resolves 128
    with pytest.raises(ConfigError, match="n_mels=128"):
        check_space({**space, "features.frontend": ["linear_db", "logmel"]}, cfg)
