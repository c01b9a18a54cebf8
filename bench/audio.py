"""Decoding one clip to a fixed-shape waveform: soundfile, channels, torchaudio resampling, pad/trim.

`load_clip` either returns a float32 array [channels, samples] or raises `BadAudio` whose message
says what is wrong with the file; callers quarantine it or stop (`--strict`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T

from .config import AudioConfig


class BadAudio(Exception):
    """A file that cannot become a clip; the message is the reason, for people."""


# libsndfile's conversion to float is slow (about 1 ms of a 4 s stereo clip's 1.3 ms): integer PCM is
# read as integers and scaled here, which gives the very same float32 values (libsndfile scales
# by the same power of two). Compressed and float formats keep libsndfile's float path.
INTEGER_READS = {"PCM_S8": ("int16", 2.0 ** -15), "PCM_U8": ("int16", 2.0 ** -15),
                 "PCM_16": ("int16", 2.0 ** -15), "IMA_ADPCM": ("int16", 2.0 ** -15),
                 "PCM_24": ("int32", 2.0 ** -31)}


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples as float32 [channels, frames] and the file's sample rate."""
    path = Path(path)
    if not path.exists():
        raise BadAudio("file not found")
    if path.stat().st_size == 0:
        raise BadAudio("empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            dtype, scale = INTEGER_READS.get(f.subtype, ("float32", None))
            data, rate = f.read(dtype=dtype, always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise BadAudio(f"cannot decode: {e}") from None
    if data.shape[0] == 0:
        raise BadAudio("no audio frames")
    samples = np.ascontiguousarray(data.T, dtype=np.float32)
    if scale is not None:
        samples *= np.float32(scale)
    return samples, int(rate)


def check(samples: np.ndarray) -> None:
    """Content checks on decoded samples: finite, not all silent."""
    if not np.isfinite(samples).all():
        raise BadAudio("non-finite samples (NaN or Inf)")
    if not np.any(samples):
        raise BadAudio("silent (every sample is zero)")


def to_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Mix down by averaging, or duplicate mono, to `channels`."""
    have = samples.shape[0]
    if have == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=0, keepdims=True)
    if have == 1:
        return np.repeat(samples, channels, axis=0)
    return np.repeat(samples.mean(axis=0, keepdims=True), channels, axis=0)


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int) -> T.Resample:
    """torchaudio's windowed-sinc resampler; its kernel is built once per rate pair."""
    return T.Resample(orig, new)


def resample(samples: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation)."""
    if orig == new:
        return samples
    with torch.no_grad():
        return _resampler(orig, new)(torch.from_numpy(samples)).numpy()


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or trim to exactly `length` samples."""
    have = samples.shape[1]
    if have >= length:
        return samples[:, :length]
    return np.pad(samples, ((0, 0), (0, length - have)))


def load_clip(path: str | Path, audio: AudioConfig) -> np.ndarray:
    """Decode, check, mix to the channel count, resample, pad/trim: [channels, samples] float32."""
    samples, rate = decode(path)
    check(samples)
    samples = to_channels(samples, audio.channels)
    samples = resample(samples, rate, audio.sample_rate)
    return fit_length(samples, n_samples(audio)).astype(np.float32, copy=False)


def n_samples(audio: AudioConfig) -> int:
    return int(round(audio.sample_rate * audio.duration))
