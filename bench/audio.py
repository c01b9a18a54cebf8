"""Decoding one clip to a fixed-shape waveform: soundfile, channels, torchaudio resampling, pad/trim.

`load_clip` either returns a float32 array [channels, samples] or raises `BadAudio` whose message
says what is wrong with the file; callers quarantine it or stop (`--strict`). Failures that are not
the audio's fault (permission denied, an I/O error, out of memory) are raised as they are
(`OSError`, `MemoryError`), never as `BadAudio`: a file must not be set aside for them.

Only regular files are opened (a FIFO would block, a device never ends), and only the frames the
kept clip needs are read, so a long file costs no more than a short one.
"""
from __future__ import annotations

import functools
import math
import os
import re
import stat
from collections.abc import Callable
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
BLOCK = 1 << 16  # frames per read: many channels are mixed down a block at a time
# libsndfile's log line when a header's data size runs past the end of the file (WAV, AIFF, AU);
# it then reads what is there, so without this check a cut file decodes as a short clip.
DATA_SIZE = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+) \(should be (\d+)\)", re.M)
WIDTHS = {"PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
          "FLOAT": 4, "DOUBLE": 8}  # bytes a sample, where fixed
UNKNOWN_SIZE = 0x7FFFFFFF  # streamed files write this or more as "size not known"
KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _usable(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise BadAudio(f"not a regular file ({KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')})")
    if st.st_size == 0:
        raise BadAudio("empty file (0 bytes)")


def open_regular(path: str | Path):
    """`path` opened for reading (unbuffered), if it is a non-empty regular file; else BadAudio.
    Permission and I/O errors are raised as OSError: they are not the audio's fault."""
    try:
        _usable(os.stat(path))  # before opening: opening a FIFO blocks
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO swapped in now cannot block
    except (FileNotFoundError, NotADirectoryError):
        raise BadAudio("file not found") from None
    try:
        _usable(os.fstat(fd))
        return open(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class _Reader:
    """The file as libsndfile's virtual I/O sees it. An exception inside soundfile's C callbacks is
    printed and lost (the read just comes up short), so an OS error is kept here and re-raised."""

    def __init__(self, raw, path):
        self.raw, self.path, self.error = raw, str(path), None

    def __repr__(self) -> str:  # soundfile's error messages name the file by its repr
        return repr(self.path)

    def _guard(self, call, failed):
        if self.error is None:
            try:
                return call()
            except OSError as e:
                self.error = e
        return failed

    def seek(self, offset, whence=0):
        return self._guard(lambda: self.raw.seek(offset, whence), -1)

    def tell(self):
        return self._guard(self.raw.tell, -1)

    def readinto(self, buf):
        return self._guard(lambda: self.raw.readinto(buf), 0)

    def read(self, n=-1):
        return self._guard(lambda: self.raw.read(n), b"")

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def decode(path: str | Path, frames: Callable[[int], int] | None = None,
           channels: int | None = None) -> tuple[np.ndarray, int]:
    """Samples as float32 [channels, frames] and the file's sample rate. `frames`: a function of the
    file's rate giving the most frames to read (default: all); `channels`: mix a file with more
    channels down to this many, block by block."""
    with open_regular(path) as raw:
        reader = _Reader(raw, path)
        try:
            with sf.SoundFile(reader) as f:
                want = f.frames if frames is None else min(f.frames, frames(f.samplerate))
                samples = _read(f, want, channels)
                rate, held, log = f.samplerate, f.frames, f.extra_info
                width, mp3 = WIDTHS.get(f.subtype, 0) * f.channels, f.format == "MP3"
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            reader.raise_error()  # the read failed because the disk did: not the audio's fault
            raise BadAudio(f"cannot decode: {e}") from None
        reader.raise_error()
    m = DATA_SIZE.search(log)
    if m and int(m[2]) < int(m[1]) < UNKNOWN_SIZE:  # header's size, then what the file holds
        if not width:  # compressed (ADPCM): no fixed bytes per frame
            raise BadAudio(f"truncated: header says {m[1]} bytes of audio, file holds {m[2]}")
        raise BadAudio(f"truncated: header says {held + -(-(int(m[1]) - int(m[2])) // width)} frames, "
                       f"file holds {held}")
    if samples.shape[1] < want and not mp3:  # an MP3's frame count can be an estimate
        raise BadAudio(f"truncated: header says {held} frames, file holds {samples.shape[1]}")
    if samples.shape[1] == 0:
        raise BadAudio("no audio frames")
    return samples, int(rate)


def _read(f: sf.SoundFile, want: int, channels: int | None) -> np.ndarray:
    dtype, scale = INTEGER_READS.get(f.subtype, ("float32", None))
    mix = channels is not None and f.channels > channels
    parts, got = [], 0
    while True:
        block = f.read(min(BLOCK, want - got), dtype=dtype, always_2d=True)
        samples = np.ascontiguousarray(block.T, dtype=np.float32)
        if scale is not None:
            samples *= np.float32(scale)
        parts.append(to_channels(samples, channels) if mix else samples)
        got += len(block)
        if got >= want or len(block) == 0:  # done, or the file ends early
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


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
    return T.Resample(kernel_rate(orig, new), new)


MAX_KERNEL = 4_000_000  # (orig/gcd) x (new/gcd) taps: 16 MB of float32 at most


def kernel_rate(orig: int, new: int) -> int:
    """The source rate the resampling kernel is built for. torchaudio's kernel has about
    (orig/gcd) x (new/gcd) taps: 44,101 Hz -> 8 kHz (gcd 1) would need 1.4 GB. Such a rate is read as
    the nearest multiple of 10, 50, 100, ... Hz whose kernel is small (44,101 -> 44,100: a pitch
    error of 0.002 %), so memory stays bounded whatever rate a header claims."""
    for step in (1, 10, 50, 100, 500, 1000):
        rate = max(step, round(orig / step) * step)
        g = math.gcd(rate, new)
        if (rate // g) * (new // g) <= MAX_KERNEL:
            return rate
    return new


def frames_needed(length: int, orig: int, new: int) -> int:
    """Input frames at `orig` Hz that the first `length` samples at `new` Hz depend on. torchaudio's
    resampler turns each block of orig/gcd inputs into new/gcd outputs, reading `width` more on
    each side, so the first `length` outputs are exactly those of resampling the whole file."""
    if orig == new:
        return length
    r = _resampler(orig, new)
    return -(-length // (new // r.gcd)) * (orig // r.gcd) + r.width


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
    """Decode what is kept, check, mix to the channel count, resample, pad/trim: [channels, samples]
    float32, the same as decoding the whole file and trimming."""
    length = n_samples(audio)
    samples, rate = decode(path, lambda rate: frames_needed(length, rate, audio.sample_rate),
                           audio.channels)
    check(samples)
    samples = to_channels(samples, audio.channels)
    samples = fit_length(resample(samples, rate, audio.sample_rate), length)
    if not np.any(samples):  # the kept part is silent (a file can start with silence)
        raise BadAudio("silent (every kept sample is zero)")
    return samples.astype(np.float32, copy=False)


def n_samples(audio: AudioConfig) -> int:
    return int(round(audio.sample_rate * audio.duration))
