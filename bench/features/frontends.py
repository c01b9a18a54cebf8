"""Front ends: a registry of waveform -> time-frequency map transforms, and a resize-to-image step.

A front end maps waveforms [batch, channels, samples] (or one clip, [channels, samples]) to a map
[batch, channels, bands, frames]. `create_frontend(name, audio, feat)` builds the registered one as
an `nn.Module`, followed by `ResizeToImage` when `feat.image_size` is set; `frontend_shape` says
the shape of one clip's map without computing it. Registered (`list_frontends()`):

- `logmel`: torchaudio's Mel power spectrogram in dB with a floor top_db below each clip's peak
  (the torchaudio UrbanSound8K tutorial; foldbench's default).
- `logmel_max`: the same Mel power spectrogram in dB relative to each clip's maximum, librosa's
  `power_to_db(S, ref=np.max, top_db=top_db)` (the librosa tutorials), so values lie in [-top_db, 0].
- `linear_db`: a linear-frequency power spectral density in dB, as matplotlib's `specgram` computes
  it (the Keras GTZAN spectrogram-image tutorial), floored top_db below each clip's peak.

A leaf module: of the package it imports only `bench.core.config`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch import nn

from bench.core.config import AudioConfig, FeatureConfig
from bench.core.errors import FoldbenchError

AMIN = 1e-10  # power floor before the logarithm (librosa's and torchaudio's default): -100 dB


class FeatureError(FoldbenchError, ValueError):
    """A feature config that cannot work with this audio config."""


FRONTENDS: dict[str, Callable[[AudioConfig, FeatureConfig], nn.Module]] = {}
_MEL: set[str] = set()  # front ends built on a Mel filterbank (they use n_mels, f_min, f_max, mel_*)


def register_frontend(name: str, *, mel: bool):
    def add(fn):
        FRONTENDS[name] = fn
        if mel:
            _MEL.add(name)
        return fn

    return add


def list_frontends() -> list[str]:
    return sorted(FRONTENDS)


def uses_mel(name: str) -> bool:
    """True when front end `name` applies a Mel filterbank (and so reads n_mels, f_min, f_max,
    mel_scale and mel_norm); False for `linear_db`, which ignores them."""
    return name in _MEL


def create_frontend(name: str, audio: AudioConfig, feat: FeatureConfig) -> nn.Module:
    """Front end `name` for `feat`, with the resize-to-image step when `feat.image_size` is set."""
    if name not in FRONTENDS:
        raise FeatureError(f"unknown front end {name!r}; known: {', '.join(list_frontends())}")
    module = FRONTENDS[name](audio, feat)
    return nn.Sequential(module, ResizeToImage(feat.image_size)) if feat.image_size else module


def frontend_shape(audio: AudioConfig, feat: FeatureConfig) -> tuple[int, int, int]:
    """(channels, bands, frames) of one clip's map under `feat.frontend`, without computing it.

    Mel front ends: n_mels bands, samples // hop + 1 frames (a centred STFT). linear_db:
    n_fft // 2 + 1 bands, (max(samples, n_fft) - n_fft) // hop + 1 frames (no centring; a clip
    shorter than n_fft is zero-padded to it, as matplotlib does). With image_size: (channels, N, N)."""
    samples = int(round(audio.sample_rate * audio.duration))  # as bench.data.audio.n_samples
    if feat.image_size:
        return audio.channels, feat.image_size, feat.image_size
    if uses_mel(feat.frontend):
        return audio.channels, feat.n_mels, samples // feat.hop_length + 1
    return audio.channels, feat.n_fft // 2 + 1, (max(samples, feat.n_fft) - feat.n_fft) // feat.hop_length + 1


# ---- the resize-to-image step ----------------------------------------------------------------


class ResizeToImage(nn.Module):
    """Resize the [channels, bands, frames] map of each clip to [channels, size, size] by bilinear
    interpolation (`F.interpolate`, align_corners=False, antialias=False: half-pixel centres, no
    low-pass when shrinking), as the spectrogram-image tutorials resize their images."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, *x.shape[-3:])
        out = F.interpolate(flat, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        return out.reshape(*x.shape[:-3], *out.shape[-3:])

    def extra_repr(self) -> str:
        return f"size={self.size}"


# ---- Mel front ends ---------------------------------------------------------------------------


def mel_power(audio: AudioConfig, feat: FeatureConfig) -> T.MelSpectrogram:
    """torchaudio's Mel power spectrogram: centred STFT (reflect padding), periodic Hann window,
    |X|^2, triangular filters on the `feat.mel_scale` scale ("htk": torchaudio's default; "slaney":
    librosa's) with `feat.mel_norm` normalisation (None; "slaney": each filter of area 1, librosa's)."""
    return T.MelSpectrogram(
        sample_rate=audio.sample_rate,
        n_fft=feat.n_fft,
        hop_length=feat.hop_length,
        n_mels=feat.n_mels,
        f_min=feat.f_min,
        f_max=feat.f_max,
        power=2.0,
        norm=feat.mel_norm,
        mel_scale=feat.mel_scale,
    )


@register_frontend("logmel", mel=True)
def log_mel(audio: AudioConfig, feat: FeatureConfig) -> nn.Module:
    """The torchaudio tutorial's log-mel: `MelSpectrogram(power=2)` then `AmplitudeToDB("power",
    top_db)`: 10*log10(max(S, 1e-10)), floored top_db below each clip's peak (over its channels,
    bands and frames). Absolute decibels (reference power 1)."""
    return nn.Sequential(mel_power(audio, feat), T.AmplitudeToDB(stype="power", top_db=feat.top_db))


class PowerToDbRelativeToMax(nn.Module):
    """librosa's `power_to_db(S, ref=np.max, amin=1e-10, top_db)`, per clip:
    10*log10(max(S, amin)) - 10*log10(max(amin, max(S))), clipped below at -top_db.

    "max(S)" is the clip's own maximum over all its channels, bands and frames (the last three
    dimensions), so every clip's loudest cell is 0 dB and the map lies in [-top_db, 0]."""

    def __init__(self, top_db: float, amin: float = AMIN):
        super().__init__()
        self.top_db, self.amin = float(top_db), float(amin)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(power.clamp_min(self.amin))
        db = db - db.amax(dim=(-3, -2, -1), keepdim=True)  # log is monotone: 10*log10(max(amin, max S))
        return db.clamp_min(-self.top_db)

    def extra_repr(self) -> str:
        return f"top_db={self.top_db}, amin={self.amin}"


@register_frontend("logmel_max", mel=True)
def log_mel_max(audio: AudioConfig, feat: FeatureConfig) -> nn.Module:
    """The librosa tutorials' log-mel: the Mel power spectrogram of `mel_power` in dB relative to
    each clip's maximum (`librosa.power_to_db(S, ref=np.max, top_db)`), in [-top_db, 0]. For
    librosa's filterbank set mel_scale="slaney" and mel_norm="slaney". The STFT is torchaudio's
    (reflect padding; librosa >= 0.10 pads with zeros, which changes the first and last frames)."""
    return nn.Sequential(mel_power(audio, feat), PowerToDbRelativeToMax(feat.top_db))


# ---- linear-frequency front end ----------------------------------------------------------------


class LinearPowerDb(nn.Module):
    """matplotlib's `specgram` (mlab.specgram, mode="psd", scale_by_freq=True, detrend none,
    window_hanning, sides="onesided", pad_to=NFFT) with NFFT = n_fft, noverlap = n_fft - hop_length,
    Fs = the sample rate, in dB (10*log10) as `Axes.specgram(scale="dB")` plots it, floored top_db
    below each clip's peak.

    Frames of n_fft samples every hop_length samples, no centring (a clip shorter than n_fft is
    zero-padded to n_fft); symmetric Hann window (`np.hanning`); |rfft|^2 / (Fs * sum(window^2)),
    doubled except at DC and (even n_fft) Nyquist; n_fft // 2 + 1 bands. matplotlib has no floor
    (exact silence, such as a zero-padded tail, is -inf there); here the map is
    max(10*log10(max(P, 1e-30)), clip peak - top_db), the clip's peak taken over its channels, bands
    and frames as `logmel` does, so it equals matplotlib's wherever that is within top_db of the peak."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, top_db: float, amin: float = 1e-30):
        super().__init__()
        self.n_fft, self.hop_length, self.top_db, self.amin = n_fft, hop_length, float(top_db), amin
        window = torch.hann_window(n_fft, periodic=False, dtype=torch.float64)  # = np.hanning(n_fft)
        scale = torch.full((n_fft // 2 + 1, 1), 2.0, dtype=torch.float64)  # one-sided: fold negatives
        scale[0] = 1.0
        if n_fft % 2 == 0:
            scale[-1] = 1.0
        scale /= sample_rate * window.square().sum()
        self.register_buffer("window", window, persistent=False)  # float64: cast to the input's dtype
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.n_fft:
            x = F.pad(x, (0, self.n_fft - x.shape[-1]))
        frames = x.unfold(-1, self.n_fft, self.hop_length) * self.window.to(x.dtype)  # [..., frames, n_fft]
        power = torch.view_as_real(torch.fft.rfft(frames)).square().sum(-1)  # [..., frames, bands]
        db = 10.0 * torch.log10((power.transpose(-1, -2) * self.scale.to(x.dtype)).clamp_min(self.amin))
        return torch.maximum(db, db.amax(dim=(-3, -2, -1), keepdim=True) - self.top_db)

    def extra_repr(self) -> str:
        return f"n_fft={self.n_fft}, hop_length={self.hop_length}, top_db={self.top_db}"


@register_frontend("linear_db", mel=False)
def linear_db(audio: AudioConfig, feat: FeatureConfig) -> nn.Module:
    """Linear-frequency PSD in dB as matplotlib's `specgram` computes it (see `LinearPowerDb`),
    floored top_db below each clip's peak: n_fft // 2 + 1 bands; noverlap = n_fft - hop_length.
    n_mels, f_min, f_max, mel_scale and mel_norm are not used."""
    return LinearPowerDb(audio.sample_rate, feat.n_fft, feat.hop_length, feat.top_db)
