"""The waveform cache under faults: files that are not the audio's fault to fail (permission, I/O,
memory) raise CacheError, a fault in foldbench or a library DecodeFault, and cache nothing (an entry
an older build quarantined such a clip in is rebuilt); special and cut files are quarantined with the reason;
a damaged entry is rebuilt with one line on stderr; a full disk is a message; a killed build's
temporary folder is cleaned, a running build's is not."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.data import audio as audio_mod
from bench.data import cache as cache_mod
from bench.data.cache import CacheError, clean_stale, load_waveforms
from bench.core.config import AudioConfig, DatasetConfig
from bench.data.datasets import create_dataset
from tests.conftest import FailingDisk

AUDIO = AudioConfig(sample_rate=8000, channels=1, duration=1.0)
REPO = Path(__file__).resolve().parents[1]
# Builds the cache of the dataset at argv[1] into argv[2]; argv[3] seconds of sleep per clip.
BUILD = """
import sys, time
from bench.data import cache
from bench.core.config import AudioConfig, DatasetConfig
from bench.data.datasets import create_dataset
real, pause = cache.load_clip, float(sys.argv[3])
cache.load_clip = lambda *a: time.sleep(pause) or real(*a)
try:
    cache.load_waveforms(create_dataset(DatasetConfig("us8k", sys.argv[1]), sys.argv[2]),
                         AudioConfig(8000, 1, 1.0), sys.argv[2], workers=1, progress=False)
except cache.CacheError as e:
    print(e)
    sys.exit(3)
"""


def _dataset(root, cache):
    return create_dataset(DatasetConfig("us8k", str(root)), cache)


def _left(cache) -> list[str]:
    """What is in the cache's waves folder, besides its lock file."""
    return sorted(p.name for p in (Path(cache) / "waves").iterdir() if p.name != cache_mod.LOCK)


def _same(a, b):
    assert np.array_equal(a.data, b.data) and np.array_equal(a.scale, b.scale) and a.hashes == b.hashes


# ---- not the audio's fault: an error, nothing cached, decoded once fixed ----


def test_permission_denied_is_an_error_not_a_quarantine(tiny_us8k, tmp_path):
    dataset, cache = _dataset(tiny_us8k, tmp_path), tmp_path / "cache"
    clip = Path(dataset.table["path"][5])
    clip.chmod(0)
    command = [sys.executable, "-c", BUILD, str(tiny_us8k), str(cache), "0"]
    if os.geteuid() == 0:  # root reads anything: run the build without the capabilities that allow it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot take away read permission")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *command]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr[-2000:]
    assert run.stdout.strip().splitlines() == [
        f"cannot read {clip}: Permission denied (not cached: fix it and run again)"
    ]
    assert _left(cache) == []  # no entry, no temporary folder
    clip.chmod(0o644)
    waves = load_waveforms(dataset, AUDIO, cache, progress=False)
    assert waves.ok.all() and waves.hashes[5] is not None


def test_io_error_and_out_of_memory_are_errors_and_cache_nothing(tiny_us8k_master, tmp_path, monkeypatch):
    dataset = _dataset(tiny_us8k_master, tmp_path)
    sick = dataset.table["path"][7]
    real_open = audio_mod.open_regular
    monkeypatch.setattr(
        audio_mod,
        "open_regular",
        lambda path: FailingDisk(real_open(path), good_reads=1) if path == sick else real_open(path),
    )
    with pytest.raises(CacheError, match=rf"^cannot read {sick}: Input/output error \(not cached"):
        load_waveforms(dataset, AUDIO, tmp_path, progress=False)
    assert _left(tmp_path) == []
    monkeypatch.setattr(audio_mod, "open_regular", real_open)
    real_clip = cache_mod.load_clip

    def greedy(path, audio):  # numpy's "Unable to allocate" is a MemoryError
        if path == sick:
            raise MemoryError("Unable to allocate 8.0 EiB for an array")
        return real_clip(path, audio)

    monkeypatch.setattr(cache_mod, "load_clip", greedy)
    with pytest.raises(CacheError, match=rf"^out of memory decoding {sick}: "):
        load_waveforms(dataset, AUDIO, tmp_path, progress=False)
    assert _left(tmp_path) == []
    monkeypatch.setattr(cache_mod, "load_clip", real_clip)
    assert load_waveforms(dataset, AUDIO, tmp_path, progress=False).ok.all()  # the disk is back


def test_a_fault_in_foldbench_or_a_library_is_an_error_not_a_quarantine(tiny_us8k_master, tmp_path, monkeypatch):
    """A bug, or a library that will not load, is not the file's fault: it used to become a
    quarantine entry ("cannot decode: AttributeError: ...") and the clip was left out for good."""
    dataset = _dataset(tiny_us8k_master, tmp_path)
    sick = dataset.table["path"][7]
    real_clip = cache_mod.load_clip

    def buggy(path, audio):
        if path == sick:
            raise AttributeError("'Resample' object has no attribute 'width'")
        return real_clip(path, audio)

    monkeypatch.setattr(cache_mod, "load_clip", buggy)
    with pytest.raises(cache_mod.DecodeFault, match=rf"^decoding {sick} failed in foldbench or a library") as err:
        load_waveforms(dataset, AUDIO, tmp_path, progress=False)
    assert "AttributeError: 'Resample' object has no attribute 'width'" in str(err.value)
    assert isinstance(err.value.__cause__, AttributeError) and _left(tmp_path) == []
    monkeypatch.setattr(cache_mod, "load_clip", real_clip)
    assert load_waveforms(dataset, AUDIO, tmp_path, progress=False).ok.all()


def _set_aside(sick, reason, real_clip):
    def load_clip(path, audio):
        if path == sick:
            raise audio_mod.BadAudio(reason)
        return real_clip(path, audio)

    return load_clip


def test_an_entry_holding_the_old_catch_alls_quarantine_is_rebuilt(tiny_us8k_master, tmp_path, monkeypatch, capsys):
    """An entry that an older foldbench built, with a clip set aside for a fault of its own, has
    the same key: it is rebuilt, not trusted (reasons that are the file's stay trusted)."""
    dataset = _dataset(tiny_us8k_master, tmp_path)
    sick, real_clip = dataset.table["path"][7], cache_mod.load_clip
    for reason, rebuilt in (
        ("cannot decode: Error opening 'x.wav': Format not recognised.", False),
        ("cannot decode: AttributeError: 'Resample' object has no attribute 'width'", True),
    ):
        shutil.rmtree(tmp_path / "waves", ignore_errors=True)
        monkeypatch.setattr(cache_mod, "load_clip", _set_aside(sick, reason, real_clip))
        folder = tmp_path / "waves" / f"{dataset.name}-{cache_mod.cache_key(dataset, AUDIO)}"
        cache_mod._build(dataset, AUDIO, folder, None, False)  # as the older foldbench did
        assert (folder / "quarantine.csv").read_text().strip().endswith(reason)
        monkeypatch.setattr(cache_mod, "load_clip", real_clip)
        capsys.readouterr()
        again = load_waveforms(dataset, AUDIO, tmp_path, progress=False)
        assert again.path == folder and again.ok.all() == rebuilt
        assert ("is out of date (1 clip(s) set aside for a fault in foldbench" in capsys.readouterr().err) == rebuilt


def test_special_and_cut_files_are_quarantined_with_the_reason(tiny_us8k, tmp_path):
    dataset = _dataset(tiny_us8k, tmp_path)
    fifo, folder, cut = (Path(dataset.table["path"][i]) for i in (3, 30, 60))
    fifo.unlink()
    os.mkfifo(fifo)
    folder.unlink()
    folder.mkdir()
    sf.write(cut, np.full(8000, 0.5, np.float32), 8000, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[: 44 + 2 * 3000])  # the header and 3000 of its 8000 frames
    waves = load_waveforms(dataset, AUDIO, tmp_path, progress=False)  # returns: the FIFO is not opened
    reasons = dict(zip(waves.quarantine["index"], waves.quarantine["reason"]))
    assert reasons[3] == "not a regular file (a FIFO)" and reasons[30] == "not a regular file (a directory)"
    assert reasons[60] == "truncated: header says 8000 frames, file holds 3000"
    assert len(reasons) == 3


# ---- a damaged entry is rebuilt ----


def _overwrite(folder):
    with open(folder / "waves.npy", "r+b") as f:  # the case: part of waves.npy overwritten
        f.seek(200_000)
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


DAMAGE = {
    "waves overwritten": _overwrite,
    "waves truncated": lambda folder: os.truncate(folder / "waves.npy", 700_000),
    "meta garbage": lambda folder: (folder / "meta.json").write_text("{not json"),
    "scales changed": lambda folder: np.save(folder / "scales.npy", np.load(folder / "scales.npy") * 2),
    "hash line lost": lambda folder: (folder / "hashes.txt").write_text(
        "\n".join((folder / "hashes.txt").read_text().split("\n")[1:])
    ),
    "quarantine edited": lambda folder: (folder / "quarantine.csv").write_text("index,clip,reason\n4,x.wav,silent\n"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_is_rebuilt_with_a_message(tiny_us8k_master, tmp_path, capsys, damage):
    dataset = _dataset(tiny_us8k_master, tmp_path)
    first = load_waveforms(dataset, AUDIO, tmp_path / "a", progress=False)
    DAMAGE[damage](first.path)
    capsys.readouterr()
    again = load_waveforms(dataset, AUDIO, tmp_path / "a", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"waveform cache {first.path} is corrupt (")
    assert err[0].endswith("): rebuilding")
    _same(again, load_waveforms(dataset, AUDIO, tmp_path / "b", progress=False))  # a fresh build
    capsys.readouterr()
    load_waveforms(dataset, AUDIO, tmp_path / "a", progress=False)
    assert capsys.readouterr().err == ""  # the rebuilt entry is trusted


def test_a_damaged_cache_that_cannot_be_removed_is_refused(tiny_us8k_master, tmp_path, monkeypatch):
    dataset = _dataset(tiny_us8k_master, tmp_path)
    folder = load_waveforms(dataset, AUDIO, tmp_path, progress=False).path
    os.truncate(folder / "waves.npy", 1000)

    def refuse(path, *a, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(cache_mod.shutil, "rmtree", refuse)
    with pytest.raises(
        CacheError,
        match=rf"^waveform cache {folder} is corrupt \(.*\) and cannot be removed "
        rf"\(Permission denied\): delete {folder}$",
    ):
        load_waveforms(dataset, AUDIO, tmp_path, progress=False)


# ---- disk ----


def test_too_little_free_space_is_refused_before_the_build(tiny_us8k_master, tmp_path, monkeypatch):
    dataset = _dataset(tiny_us8k_master, tmp_path)
    monkeypatch.setattr(cache_mod, "load_clip", lambda *a: pytest.fail("decoded without the space"))
    usage = shutil.disk_usage(tmp_path)._replace(free=10**5)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(
        CacheError,
        match=rf"^the waveform cache needs 1\.5 MB at {tmp_path / 'waves'}, "
        r"0\.1 MB free: free some space or choose another --cache-dir$",
    ):
        load_waveforms(dataset, AUDIO, tmp_path, progress=False)
    assert _left(tmp_path) == []


def test_a_full_disk_is_a_message_not_sigbus(tiny_us8k_master, tmp_path, monkeypatch):
    dataset = _dataset(tiny_us8k_master, tmp_path)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod.os, "posix_fallocate", full)
    with pytest.raises(
        CacheError,
        match=r"^the waveform cache needs 1\.5 MB at .*, [\d.]+ [MG]B free "
        r"\(No space left on device\)",
    ):
        load_waveforms(dataset, AUDIO, tmp_path, progress=False)
    assert _left(tmp_path) == []  # the temporary folder is gone


def test_a_killed_build_is_cleaned_up_but_a_running_one_is_not(tiny_us8k_master, tmp_path):
    cache = tmp_path / "cache"
    build = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(tiny_us8k_master), str(cache), "0.1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob("waves/.us8k-*/waves.npy")):  # decoding has begun
            assert build.poll() is None and time.monotonic() < deadline, build.communicate()
            time.sleep(0.05)
        tmp = next(cache.glob("waves/.us8k-*"))
        assert clean_stale(cache / "waves") == [] and tmp.is_dir()  # alive: left alone
    finally:
        build.send_signal(signal.SIGKILL)
        build.communicate()
    assert build.returncode == -signal.SIGKILL and tmp.is_dir()
    dataset = _dataset(tiny_us8k_master, tmp_path)
    waves = load_waveforms(dataset, AUDIO, cache, progress=False)
    assert not tmp.exists() and _left(cache) == [waves.path.name]
    _same(waves, load_waveforms(dataset, AUDIO, tmp_path / "fresh", progress=False))


def test_concurrent_builds_of_one_entry_agree(tiny_us8k_master, tmp_path):
    dataset = _dataset(tiny_us8k_master, tmp_path)
    start, results = threading.Barrier(2), []

    def build():
        start.wait()
        results.append(load_waveforms(dataset, AUDIO, tmp_path, workers=1, progress=False))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2 and results[0].path == results[1].path
    _same(*results)
    assert _left(tmp_path) == [results[0].path.name]


def test_a_same_size_rewrite_with_its_mtime_restored_is_decoded_again(tiny_us8k, tmp_path):
    """The cache is keyed by each file's size, mtime and ctime: zeroing a clip's samples in place and
    setting its mtime back (same size, same mtime) still reaches the new audio."""
    cfg = DatasetConfig(name="us8k", root=str(tiny_us8k))
    dataset = create_dataset(cfg, tmp_path / "cache")
    assert load_waveforms(dataset, AUDIO, tmp_path / "cache", progress=False).ok.all()
    path = Path(dataset.table["path"][3])
    st = path.stat()
    data, rate = sf.read(path, always_2d=True)
    info = sf.info(path)
    sf.write(path, np.zeros_like(data), rate, subtype=info.subtype, format=info.format)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    again = load_waveforms(create_dataset(cfg, tmp_path / "cache"), AUDIO, tmp_path / "cache", progress=False)
    assert not again.ok[3] and "silent" in again.quarantine["reason"].iloc[0]
