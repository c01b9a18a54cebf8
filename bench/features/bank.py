"""The feature bank (a front end's map of every cached clip, computed once per feature config on the
training device) and on-device augmentation.

`feature_bank` turns the cached waveforms into [N, channels, bands, frames] with the front end that
`feat.frontend` names (the registry and the front ends live in `bench.features.frontends`), in batches, and
keeps the result for every fold, epoch and trial that shares the feature config. `check_features`
refuses configs a front end cannot compute. `Augment` applies a random time shift and SpecAugment
masks to a batch, on whatever device the batch is on.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import astuple

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.core.config import AudioConfig, AugmentConfig, FeatureConfig
from bench.features.frontends import FRONTENDS, FeatureError, create_frontend, list_frontends, log_mel, uses_mel

__all__ = ["Augment", "FeatureError", "check_features", "create_frontend", "feature_bank", "log_mel", "max_mels"]


def check_features(audio: AudioConfig, feat: FeatureConfig) -> None:
    """Refuse, before any work, configs that the front end cannot compute.

    Every front end: a registered name, positive sizes. Mel front ends (logmel, logmel_max):
    0 <= f_min < f_max <= sample_rate/2, no empty Mel filter (too many bands for n_fft), and a clip
    longer than n_fft // 2 samples (the centred STFT reflects that many samples at each end).
    linear_db has n_fft // 2 + 1 bands whatever n_mels says, and ignores n_mels, f_min, f_max and
    the Mel settings; it needs hop_length <= n_fft (matplotlib's noverlap = n_fft - hop_length >= 0).
    A clip shorter than n_fft is zero-padded to one frame there, as matplotlib does."""
    if feat.frontend not in FRONTENDS:
        raise FeatureError(f"unknown front end {feat.frontend!r}; known: {', '.join(list_frontends())}")
    if feat.hop_length <= 0 or feat.n_fft <= 0 or feat.n_mels <= 0:
        raise FeatureError("n_fft, hop_length and n_mels must be positive")
    if not uses_mel(feat.frontend):
        if feat.hop_length > feat.n_fft:
            raise FeatureError(
                f"{feat.frontend}: hop_length={feat.hop_length} is more than "
                f"n_fft={feat.n_fft} (matplotlib's noverlap = n_fft - hop_length "
                f"must be >= 0)"
            )
        return
    samples = int(round(audio.sample_rate * audio.duration))
    if feat.n_fft // 2 >= samples:
        raise FeatureError(
            f"n_fft={feat.n_fft} needs clips longer than {feat.n_fft // 2} samples "
            f"(the centred STFT pads each end by n_fft/2), got {samples}; "
            f"lower n_fft or raise audio.duration"
        )
    f_max = feat.f_max or audio.sample_rate / 2
    if not 0 <= feat.f_min < f_max <= audio.sample_rate / 2:
        raise FeatureError(f"need 0 <= f_min < f_max <= sample_rate/2, got {feat.f_min}, {f_max}")
    if _empty_filters(audio.sample_rate, feat.n_fft, feat.f_min, f_max, feat.n_mels, feat.mel_scale):
        raise FeatureError(
            f"{feat.n_mels} Mel bands is more than n_fft={feat.n_fft} at {audio.sample_rate} Hz "
            f"resolves: some filters would be empty (at most "
            f"{max_mels(audio.sample_rate, feat.n_fft, feat.f_min, f_max, feat.mel_scale)} here)"
        )


@functools.lru_cache(maxsize=256)
def _empty_filters(
    sample_rate: int, n_fft: int, f_min: float, f_max: float, n_mels: int, mel_scale: str = "htk"
) -> bool:
    import torchaudio.functional as AF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio warns about exactly what we test
        fb = AF.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, mel_scale=mel_scale)
    return bool((fb.max(dim=0).values == 0).any())  # the norm scales filters: it empties none


def max_mels(
    sample_rate: int, n_fft: int, f_min: float = 0.0, f_max: float | None = None, mel_scale: str = "htk"
) -> int:
    """The most Mel bands for which no triangular filter falls between two FFT bins."""
    f_max = f_max or sample_rate / 2
    lo, hi = 1, n_fft // 2 + 1  # empty filters only appear as n_mels grows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _empty_filters(sample_rate, n_fft, f_min, f_max, mid, mel_scale):
            hi = mid - 1
        else:
            lo = mid
    return lo


_BANKS: dict[tuple, torch.Tensor] = {}
_KEEP = 2  # feature banks kept in memory (a tune study alternates between a few configs)


def frontend_maps(
    get,
    n: int,
    audio: AudioConfig,
    feat: FeatureConfig,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The front end's maps [n, channels, bands, frames] of clips `get(start, stop)` (a float32
    [clips, channels, samples] array), computed on `device` in batches: the feature bank's loop,
    and `predict`'s for new files.

    Default batches: 8 clips on CPU, where the STFT's intermediates then stay in cache (1.6-1.9x
    faster than 64 on one core), 64 elsewhere."""
    batch_size = batch_size or (8 if torch.device(device).type == "cpu" else 64)
    transform = create_frontend(feat.frontend, audio, feat).to(device)
    bank = None
    with torch.no_grad():
        for start in tqdm(
            range(0, n, batch_size), disable=not progress, desc=f"{feat.frontend} features", unit="batch"
        ):
            chunk = torch.from_numpy(get(start, start + batch_size)).to(device)
            maps = transform(chunk)
            if bank is None:
                bank = torch.empty((n, *maps.shape[1:]), dtype=torch.float32, device=device)
            bank[start : start + len(chunk)] = maps
    if bank is None:
        raise FeatureError("no clips to featurise")
    return bank


def feature_bank(
    waves,
    audio: AudioConfig,
    feat: FeatureConfig,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The front end's map [N, channels, bands, frames] of every cached clip, on `device`, kept per
    (waveforms, every FeatureConfig field, device)."""
    check_features(audio, feat)
    key = (waves.key, astuple(feat), str(device))
    if key in _BANKS:
        return _BANKS[key]
    bank = frontend_maps(waves.get, len(waves), audio, feat, device, batch_size, progress)
    while len(_BANKS) >= _KEEP:
        _BANKS.pop(next(iter(_BANKS)))
    _BANKS[key] = bank
    return bank


def _bands(x: torch.Tensor, width: int, axis: int) -> torch.Tensor:
    """One SpecAugment mask per clip and channel, drawn exactly as torchaudio's
    `mask_along_axis_iid` draws it (same random calls, same cells): 0 inside the band, 1 outside,
    shaped [batch, channels, n_mels, 1] (axis -2) or [batch, channels, 1, frames] (axis -1)."""
    size = x.shape[axis]
    value = torch.rand(x.shape[:-2], device=x.device, dtype=x.dtype) * width
    start = torch.rand(x.shape[:-2], device=x.device, dtype=x.dtype) * (size - value)
    lo, hi = start.long()[..., None], (start.long() + value.long())[..., None]
    pos = torch.arange(size, device=x.device, dtype=x.dtype)
    keep = ((pos < lo) | (pos >= hi)).to(x.dtype)
    return keep[..., :, None] if axis == -2 else keep[..., None, :]


class Augment(nn.Module):
    """Per-batch, on-device training augmentation: circular time shift, then SpecAugment masks.

    Inputs are normalised log-mels, so masked cells become 0, the training mean. The masks are
    torchaudio's iid Frequency/TimeMasking masks, drawn the same way and zeroing the same cells, but
    applied as two multiplications by small per-clip 0/1 masks instead of one full copy per mask.
    """

    def __init__(self, cfg: AugmentConfig, n_mels: int, frames: int):
        super().__init__()
        self.max_shift = int(cfg.time_shift * frames)
        self.freq_widths = [max(1, int(cfg.freq_mask_width * n_mels))] * (
            cfg.freq_masks if cfg.freq_mask_width > 0 else 0
        )
        self.time_widths = [max(1, int(cfg.time_mask_width * frames))] * (
            cfg.time_masks if cfg.time_mask_width > 0 else 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_shift > 0:
            frames = x.shape[-1]
            shift = torch.randint(-self.max_shift, self.max_shift + 1, (x.shape[0], 1, 1, 1), device=x.device)
            idx = (torch.arange(frames, device=x.device) - shift) % frames
            x = torch.gather(x, -1, idx.expand_as(x))
        freq = [_bands(x, w, -2) for w in self.freq_widths]  # drawn in torchaudio's order
        time = [_bands(x, w, -1) for w in self.time_widths]
        for keep in [functools.reduce(torch.mul, m) for m in (freq, time) if m]:
            x = x * keep  # features are finite, so masked cells are exactly 0
        return x
