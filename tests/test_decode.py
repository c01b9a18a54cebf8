"""`decode` reads integer PCM as integers and scales it itself (faster than libsndfile's float path):
the samples must be exactly libsndfile's float32 samples, in every format and subtype."""
import numpy as np
import pytest
import soundfile as sf

from bench.audio import INTEGER_READS, decode

CASES = [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_U8"), ("WAV", "IMA_ADPCM"), ("WAV", "FLOAT"),
         ("WAV", "PCM_32"), ("WAV", "ULAW"), ("AIFF", "PCM_S8"), ("AIFF", "PCM_24"), ("AU", "PCM_16"),
         ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")]


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
