"""`decode` reads integer PCM as integers and scales it itself (faster than libsndfile's float path):
the samples must be exactly libsndfile's float32 samples, in every format and subtype. Only regular
files are opened, a cut file is truncated (not a short clip), a long file is read only as far as
the clip needs, and an I/O error stays an OSError (not the audio's fault)."""

import errno
import os
import threading

import numpy as np
import pytest
import soundfile as sf

from bench.data import audio as audio_mod
from bench.data.audio import (
    INTEGER_READS,
    BadAudio,
    decode,
    fit_length,
    frames_needed,
    load_clip,
    resample,
    to_channels,
)
from bench.core.config import AudioConfig
from tests.conftest import FailingDisk

CASES = [
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_U8"),
    ("WAV", "IMA_ADPCM"),
    ("WAV", "FLOAT"),
    ("WAV", "PCM_32"),
    ("WAV", "ULAW"),
    ("AIFF", "PCM_S8"),
    ("AIFF", "PCM_24"),
    ("AU", "PCM_16"),
    ("FLAC", "PCM_16"),
    ("FLAC", "PCM_24"),
    ("OGG", "VORBIS"),
]


@pytest.mark.parametrize("fmt,subtype", CASES)
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_equals_libsndfile_float_reads(tmp_path, fmt, subtype, channels):
    rng = np.random.default_rng(0)
    x = (rng.random((8000, channels), dtype=np.float32) - 0.5) * 1.99
    x[:5] = [[1.0] * channels, [-1.0] * channels, [0.0] * channels, [0.999] * channels, [-0.5] * channels]
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    samples, rate = decode(path)
    expected = sf.read(path, dtype="float32", always_2d=True)[0].T
    assert rate == 16000 and samples.dtype == np.float32 and samples.flags.c_contiguous
    assert np.array_equal(samples, expected)


def test_integer_reads_cover_the_common_subtypes():
    assert {"PCM_16", "PCM_24", "PCM_U8"} <= set(INTEGER_READS)


# ---- what is opened, what is read ----


def _decode_in_thread(path):
    """decode(path) in a thread: a FIFO opened for reading would block it forever, not the test."""
    result = {}

    def run():
        try:
            decode(path)
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), f"decode({path}) blocked"
    return result.get("error")


def test_only_regular_files_are_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo.wav")
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "device.wav").symlink_to("/dev/zero")
    kinds = {"fifo.wav": "a FIFO", "folder.wav": "a directory", "device.wav": "a character device"}
    for name, kind in kinds.items():
        error = _decode_in_thread(tmp_path / name)
        assert isinstance(error, BadAudio) and str(error) == f"not a regular file ({kind})", (name, error)


def test_a_cut_wav_is_truncated_not_a_short_clip(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, np.full(44100, 0.25, np.float32), 44100, subtype="PCM_16")  # 1 s, 2 bytes a frame
    path.write_bytes(path.read_bytes()[: 44 + 2 * 12000])  # the 44-byte header and 12000 frames
    with pytest.raises(BadAudio, match=r"^truncated: header says 44100 frames, file holds 12000$"):
        decode(path)
    sf.write(path, np.full(44100, 0.25, np.float32), 44100, subtype="PCM_16")
    assert decode(path)[0].shape == (1, 44100)  # whole again: decodes


@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 6), (8000, 1)])
def test_long_files_are_read_only_as_far_as_the_clip_needs(tmp_path, monkeypatch, rate, channels):
    path = tmp_path / "long.wav"
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (60 * rate, channels)).astype(np.float32)
    sf.write(path, x, rate, subtype="PCM_24")
    audio = AudioConfig(sample_rate=22050, channels=1, duration=4.0)
    whole, file_rate = decode(path)
    expected = fit_length(resample(to_channels(whole, 1), file_rate, 22050), 4 * 22050)
    requested, real_read = [], sf.SoundFile.read
    monkeypatch.setattr(
        sf.SoundFile, "read", lambda self, frames=-1, **kw: requested.append(frames) or real_read(self, frames, **kw)
    )
    clip = load_clip(path, audio)
    assert np.array_equal(clip, expected)  # the same clip as decoding all 60 s and trimming
    assert sum(requested) == frames_needed(4 * 22050, rate, 22050) < 5 * rate  # not 60 s
    assert max(requested) <= audio_mod.BLOCK  # read, and mixed down, a block at a time


def test_an_io_error_is_an_os_error_not_bad_audio(tmp_path, monkeypatch):
    path = tmp_path / "clip.wav"
    sf.write(path, np.full((80000, 2), 0.25, np.float32), 16000, subtype="PCM_24")
    real = audio_mod.open_regular
    monkeypatch.setattr(audio_mod, "open_regular", lambda p: FailingDisk(real(p), good_reads=2))
    with pytest.raises(OSError) as err:
        decode(path)
    assert err.value.errno == errno.EIO and not isinstance(err.value, BadAudio)


def test_an_odd_sample_rate_keeps_the_resampling_kernel_small(tmp_path):
    """44,101 Hz -> 8 kHz shares no factor: torchaudio's kernel would hold 44,101 x 8,000 taps
    (1.4 GB). The rate is read as 44,100 Hz instead, and the clip decodes like its neighbour's."""
    from bench.data.audio import MAX_KERNEL, _resampler, kernel_rate, load_clip
    from bench.core.config import AudioConfig

    assert kernel_rate(44101, 8000) == 44100 and kernel_rate(48000, 22050) == 48000
    tone = np.sin(2 * np.pi * 440 * np.arange(44101) / 44101).astype(np.float32)
    sf.write(tmp_path / "odd.wav", tone, 44101, subtype="FLOAT")
    sf.write(tmp_path / "even.wav", tone, 44100, subtype="FLOAT")
    audio = AudioConfig(sample_rate=8000, channels=1, duration=1.0)
    odd, even = load_clip(tmp_path / "odd.wav", audio), load_clip(tmp_path / "even.wav", audio)
    assert _resampler(44101, 8000).kernel.numel() <= 2 * MAX_KERNEL
    assert odd.shape == (1, 8000) and np.array_equal(odd, even)


# ---- rates without a small torchaudio kernel: soxr, read a block at a time ----


def test_a_rate_without_a_small_kernel_is_resampled_at_its_own_rate(tmp_path, monkeypatch):
    """500 kHz -> 22,050 Hz has no small torchaudio kernel (441 x 10,000 taps) and no round
    neighbour with one: it used to fail ('Resample' object has no attribute 'width'). It is
    resampled by soxr at its own rate, reading only what the 4 s clip needs of a 10 s file."""
    from bench.data.audio import kernel_rate

    assert kernel_rate(500_000, 22050) is None and kernel_rate(44101, 22050) == 44100
    rate, t = 500_000, np.arange(10 * 500_000) / 500_000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "bat.wav"
    sf.write(path, np.stack([tone, -tone], axis=1).astype(np.float32), rate, subtype="FLOAT")
    audio = AudioConfig(sample_rate=22050, channels=2, duration=4.0)
    whole, _ = decode(path)
    expected = fit_length(resample(whole, rate, 22050), 4 * 22050)
    requested, real_read = [], sf.SoundFile.read
    monkeypatch.setattr(
        sf.SoundFile, "read", lambda self, frames=-1, **kw: requested.append(frames) or real_read(self, frames, **kw)
    )
    clip = load_clip(path, audio)
    assert clip.shape == (2, 4 * 22050) and np.array_equal(clip, expected)  # the whole file's start
    reference = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(4 * 22050) / 22050)
    assert np.abs(clip[0, 100:] - reference[100:]).max() < 1e-4  # a 1 kHz tone, not 1 kHz x 22.7
    assert np.array_equal(clip[1], -clip[0])
    assert 4 * rate <= sum(requested) < 4.1 * rate and max(requested) <= audio_mod.BLOCK


@pytest.mark.parametrize("rate", [22049, 1_000_003, 2_147_483_647])
def test_any_rate_a_header_holds_gives_a_clip_or_a_reason(tmp_path, rate):
    """22,049 Hz rounds to the target rate itself (no kernel: it also used to fail); 2^31 - 1 Hz
    is the most a WAV header can say to libsndfile. Few frames at 2 GHz make no sample at all."""
    path = tmp_path / "odd.wav"
    sf.write(path, np.full(30000, 0.25, np.float32), rate, subtype="PCM_16")
    audio = AudioConfig(sample_rate=22050, channels=1, duration=1.0)
    if rate < 10**9:
        clip = load_clip(path, audio)
        kept = int(30000 * 22050 / rate) - 100  # soxr's edge effects are over after 100 samples
        assert np.abs(clip[0, 100:kept] - 0.25).max() < 1e-3 and not clip[0, kept + 200 :].any()
    else:
        with pytest.raises(BadAudio, match=r"^no audio frames at 22050 Hz: 30000 frame\(s\) at 2147483647 Hz"):
            load_clip(path, audio)


def test_non_finite_samples_are_found_on_the_soxr_path_too(tmp_path):
    x = np.full(500_000, 0.25, np.float32)
    x[300_000] = np.inf
    sf.write(tmp_path / "inf.wav", x, 500_000, subtype="FLOAT")
    sf.write(tmp_path / "zero.wav", np.zeros(500_000, np.float32), 500_000, subtype="FLOAT")
    audio = AudioConfig(sample_rate=22050, channels=1, duration=1.0)
    with pytest.raises(BadAudio, match=r"^non-finite"):
        load_clip(tmp_path / "inf.wav", audio)
    with pytest.raises(BadAudio, match=r"^silent \(every sample is zero\)$"):
        load_clip(tmp_path / "zero.wav", audio)
