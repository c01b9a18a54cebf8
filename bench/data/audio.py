"""Decoding one clip to a fixed-shape waveform: soundfile, channels, resampling, pad/trim.

`load_clip` either returns a float32 array [channels, samples] or raises `BadAudio` whose message
says what is wrong with the file; callers quarantine it or stop (`--strict`). Failures that are not
the audio's fault (permission denied, an I/O error, out of memory) are raised as they are
(`OSError`, `MemoryError`), never as `BadAudio`: a file must not be set aside for them.

Only regular files are opened (a FIFO would block, a device never ends), and only the frames the
kept clip needs are read, so a long file costs no more than a short one.

Resampling: torchaudio's windowed sinc wherever its kernel is small (every rate foldbench could
read before soxr came: their clips, and so the cache, are unchanged); soxr for the rest, any rate
a header can hold (500 kHz, 2 GHz), streamed a block at a time so that memory stays bounded.
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
import soxr
import torch
import torchaudio.transforms as T

from bench.core.config import AudioConfig
from bench.core.errors import FoldbenchError


class BadAudio(FoldbenchError):
    """A file that cannot become a clip; the message is the reason, for people."""


# libsndfile's conversion to float is slow (about 1 ms of a 4 s stereo clip's 1.3 ms): integer PCM is
# read as integers and scaled here, which gives the very same float32 values (libsndfile scales
# by the same power of two). Compressed and float formats keep libsndfile's float path.
INTEGER_READS = {
    "PCM_S8": ("int16", 2.0**-15),
    "PCM_U8": ("int16", 2.0**-15),
    "PCM_16": ("int16", 2.0**-15),
    "IMA_ADPCM": ("int16", 2.0**-15),
    "PCM_24": ("int32", 2.0**-31),
}
BLOCK = 1 << 16  # frames per read: many channels are mixed down a block at a time
# libsndfile's log line when a header's data size runs past the end of the file (WAV, AIFF, AU);
# it then reads what is there, so without this check a cut file decodes as a short clip.
DATA_SIZE = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+) \(should be (\d+)\)", re.M)
WIDTHS = {
    "PCM_S8": 1,
    "PCM_U8": 1,
    "ULAW": 1,
    "ALAW": 1,
    "PCM_16": 2,
    "PCM_24": 3,
    "PCM_32": 4,
    "FLOAT": 4,
    "DOUBLE": 8,
}  # bytes a sample, where fixed
UNKNOWN_SIZE = 0x7FFFFFFF  # streamed files write this or more as "size not known"
KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


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


def decode(
    path: str | Path, frames: Callable[[int], int] | None = None, channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Samples as float32 [channels, frames] and the file's sample rate. `frames`: a function of the
    file's rate giving the most frames to read (default: all); `channels`: mix a file with more
    channels down to this many, block by block."""
    kept, rate = _decode(path, lambda rate, held: _Frames(held if frames is None else frames(rate)), channels)
    return kept.samples(), rate


def _decode(
    path: str | Path, sink: Callable[[int, int], _Frames | _SoxrClip], channels: int | None
) -> tuple[_Frames | _SoxrClip, int]:
    """The file's frames, read a block at a time into `sink(rate, frames held)` until it needs no
    more, and the file's rate. BadAudio for what is wrong with the file; OSError for the disk."""
    with open_regular(path) as raw:
        reader = _Reader(raw, path)
        try:
            with sf.SoundFile(reader) as f:
                kept = sink(f.samplerate, f.frames)
                got = _read(f, kept, channels)
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
        raise BadAudio(
            f"truncated: header says {held + -(-(int(m[1]) - int(m[2])) // width)} frames, file holds {held}"
        )
    if got < held and kept.need() > 0 and not mp3:  # an MP3's frame count can be an estimate
        raise BadAudio(f"truncated: header says {held} frames, file holds {got}")
    if got == 0:
        raise BadAudio("no audio frames")
    return kept, int(rate)


def _read(f: sf.SoundFile, sink: _Frames | _SoxrClip, channels: int | None) -> int:
    """Blocks of the file into `sink` until it needs no more or the file ends: the frames read."""
    dtype, scale = INTEGER_READS.get(f.subtype, ("float32", None))
    mix = channels is not None and f.channels > channels
    got = 0
    while (want := min(BLOCK, sink.need(), f.frames - got)) > 0:
        block = f.read(want, dtype=dtype, always_2d=True)
        samples = np.ascontiguousarray(block.T, dtype=np.float32)
        if scale is not None:
            samples *= np.float32(scale)
        got += len(block)
        sink.push(to_channels(samples, channels) if mix else samples, last=got >= f.frames or len(block) == 0)
        if len(block) == 0:  # the file ends early
            break
    return got


class _Frames:
    """The first `want` frames as read, kept whole (torchaudio resamples them at once)."""

    def __init__(self, want: int):
        self.want, self.parts, self.got = want, [], 0

    def need(self) -> int:
        return self.want - self.got

    def push(self, samples: np.ndarray, last: bool) -> None:
        self.parts.append(samples)
        self.got += samples.shape[1]

    def samples(self) -> np.ndarray:
        return self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts, axis=1)


NON_FINITE, SILENT = "non-finite samples (NaN or Inf)", "silent (every sample is zero)"
# Decoded samples lie in [-1, 1] (integer PCM exactly; float files may overshoot a little). Beyond
# this (80 dB over full scale) a float file holds no usable level: its power spectrum overflows
# float32 and training stops on NaN with no hint of the file.
MAX_PEAK = 1e4


def check_finite(samples: np.ndarray) -> None:
    """Finite samples of a usable level (see MAX_PEAK)."""
    if not np.isfinite(samples).all():
        raise BadAudio(NON_FINITE)
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > MAX_PEAK:
        raise BadAudio(
            f"non-finite in practice: sample values up to {peak:.3g} (a float file's samples "
            f"lie near [-1, 1]; above {MAX_PEAK:g} its spectrum overflows)"
        )


def check(samples: np.ndarray) -> None:
    """Content checks on decoded samples: finite and of a usable level, not all silent."""
    check_finite(samples)
    if not np.any(samples):
        raise BadAudio(SILENT)


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
    rate = kernel_rate(orig, new)
    if rate is None:
        raise ValueError(f"no small torchaudio kernel for {orig} Hz -> {new} Hz")
    return T.Resample(rate, new)


MAX_KERNEL = 4_000_000  # (orig/gcd) x (new/gcd) taps: 16 MB of float32 at most


def kernel_rate(orig: int, new: int) -> int | None:
    """The source rate torchaudio's resampling kernel is built for, or None where none is small
    (soxr resamples those). The kernel has about (orig/gcd) x (new/gcd) taps: 44,101 Hz -> 8 kHz
    (gcd 1) would need 1.4 GB. Such a rate is read as the nearest multiple of 10, 50, 100, ... Hz
    whose kernel is small (44,101 -> 44,100: a pitch error of 0.002 %), as foldbench always has, so
    the clips of every rate it could read keep their samples (and the cache its entries). A rate
    that would round to `new` itself, or whose neighbours have no small kernel either (500 kHz ->
    22,050 Hz), gets None."""
    for step in (1, 10, 50, 100, 500, 1000):
        rate = max(step, round(orig / step) * step)
        g = math.gcd(rate, new)
        if rate != new and (rate // g) * (new // g) <= MAX_KERNEL:
            return rate
    return None


def frames_needed(length: int, orig: int, new: int) -> int:
    """Input frames at `orig` Hz that the first `length` samples at `new` Hz depend on, for a rate
    with a torchaudio kernel. The resampler turns each block of orig/gcd inputs into new/gcd
    outputs, reading `width` more on each side, so the first `length` outputs are exactly those of
    resampling the whole file."""
    if orig == new:
        return length
    r = _resampler(orig, new)
    return -(-length // (new // r.gcd)) * (orig // r.gcd) + r.width


def resample(samples: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling: torchaudio's sinc interpolation where its kernel is small, else
    soxr's (see `kernel_rate`)."""
    if orig == new:
        return samples
    if kernel_rate(orig, new) is None:
        stream = _SoxrClip(orig, new, samples.shape[0], length=0)
        stream.push(samples, last=True)
        return stream.clip()
    with torch.no_grad():
        return _resampler(orig, new)(torch.from_numpy(samples)).numpy()


class _KernelClip(_Frames):
    """torchaudio's path: the frames its kernel needs, checked, mixed and resampled at once."""

    def __init__(self, orig: int, new: int, channels: int, length: int):
        super().__init__(frames_needed(length, orig, new))
        self.orig, self.new, self.channels = orig, new, channels

    def clip(self) -> np.ndarray:
        samples = self.samples()
        check(samples)
        return resample(to_channels(samples, self.channels), self.orig, self.new)


class _SoxrClip:
    """soxr's path, for rates without a small torchaudio kernel (any ratio: 500 kHz, 2 GHz, 1 Hz):
    each block is checked, mixed and resampled as it is read, and reading stops once `length`
    samples are out (0: never). Memory is a block in and about a block out, whatever the rate and
    the file's length; soxr's output does not depend on how its input is cut into blocks, so the
    clip is the start of resampling the whole file."""

    def __init__(self, orig: int, new: int, channels: int, length: int):
        self.orig, self.new, self.channels, self.length = orig, new, channels, length
        self.stream = soxr.ResampleStream(orig, new, channels, dtype="float32", quality="HQ")
        self.parts, self.out, self.read, self.heard = [], 0, 0, False

    def need(self) -> int:
        """Frames to read next: none once the clip is out; no more than the samples still
        missing take, so a large upsampling ratio (1 Hz -> 22,050 Hz) never makes a huge block."""
        if self.length and self.out >= self.length:
            return 0
        missing = self.length - self.out if self.length else BLOCK
        return max(1, min(BLOCK, math.ceil(missing * self.orig / self.new)))

    def push(self, samples: np.ndarray, last: bool) -> None:
        check_finite(samples)
        self.heard = self.heard or bool(np.any(samples))
        samples = to_channels(samples, self.channels)
        out = self.stream.resample_chunk(np.ascontiguousarray(samples.T), last=last)
        self.parts.append(out.T)
        self.out += len(out)
        self.read += samples.shape[1]

    def clip(self) -> np.ndarray:
        if not self.heard:
            raise BadAudio(SILENT)
        if self.out == 0:  # a 2 GHz header on a short file: not one sample long at the new rate
            raise BadAudio(
                f"no audio frames at {self.new} Hz: {self.read} frame(s) at {self.orig} Hz last under one sample"
            )
        return np.ascontiguousarray(np.concatenate(self.parts, axis=1), dtype=np.float32)


def _clip_reader(orig: int, new: int, channels: int, length: int) -> _KernelClip | _SoxrClip:
    if orig != new and kernel_rate(orig, new) is None:
        return _SoxrClip(orig, new, channels, length)
    return _KernelClip(orig, new, channels, length)


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
    kept, _ = _decode(
        path, lambda rate, held: _clip_reader(rate, audio.sample_rate, audio.channels, length), audio.channels
    )
    samples = fit_length(kept.clip(), length)
    if not np.any(samples):  # the kept part is silent (a file can start with silence)
        raise BadAudio("silent (every kept sample is zero)")
    return samples.astype(np.float32, copy=False)


def n_samples(audio: AudioConfig) -> int:
    return int(round(audio.sample_rate * audio.duration))
