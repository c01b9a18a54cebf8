"""The dataset fingerprint comes from content (relative clip ids, labels, folds, file bytes), never
from where the files lie or when they were touched; a second fingerprint reads no file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.data import cache as cache_mod
from bench.data import filehash
from bench.core.config import AudioConfig, DatasetConfig
from bench.data.datasets import create_dataset

AUDIO = AudioConfig(8000, 1, 1.0)


def fingerprint(root: Path, cache: Path) -> str:
    return create_dataset(DatasetConfig("us8k", str(root)), cache).fingerprint()


@pytest.fixture
def digests(monkeypatch) -> list[str]:
    """The files whose content is hashed (every call of filehash.file_digest)."""
    seen: list[str] = []
    real = filehash.file_digest
    monkeypatch.setattr(filehash, "file_digest", lambda path: seen.append(path) or real(path))
    return seen


@pytest.fixture
def no_racy_window(monkeypatch):
    """The test's files were written a moment ago: remember their hashes anyway (the window for
    coarse file-system clocks is tested on its own below)."""
    monkeypatch.setattr(filehash, "RACY_NS", 0)


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a sample in the middle of the audio: same size, other content
    path.write_bytes(bytes(data))


def test_a_copy_in_another_folder_has_the_same_fingerprint(tiny_us8k_master, tmp_path):
    copy = tmp_path / "elsewhere" / "US8K-copy"
    shutil.copytree(tiny_us8k_master, copy, copy_function=shutil.copyfile)  # new inodes, new times
    a, b = fingerprint(tiny_us8k_master, tmp_path / "c1"), fingerprint(copy, tmp_path / "c2")
    assert a == b and a.startswith("c1-")


def test_one_changed_byte_changes_it_and_a_touch_does_not(tiny_us8k, tmp_path):
    before = fingerprint(tiny_us8k, tmp_path / "cache")
    path = next((tiny_us8k / "audio" / "fold3").iterdir())
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # mtime set back; content the same
    path.chmod(0o600)
    assert fingerprint(tiny_us8k, tmp_path / "cache") == before
    flip_one_byte(path)
    assert fingerprint(tiny_us8k, tmp_path / "cache") != before


def test_a_changed_label_changes_it_and_an_unused_column_does_not(tiny_us8k, tmp_path):
    import pandas as pd

    before = fingerprint(tiny_us8k, tmp_path / "cache")
    csv = tiny_us8k / "metadata" / "UrbanSound8K.csv"
    meta = pd.read_csv(csv)
    meta.loc[0, "salience"] = 3 - meta.loc[0, "salience"]  # a column foldbench does not use
    meta.to_csv(csv, index=False)
    assert fingerprint(tiny_us8k, tmp_path / "cache") == before
    other = meta[meta["classID"] != meta.loc[0, "classID"]].iloc[0]
    meta.loc[0, ["classID", "class"]] = [other["classID"], other["class"]]  # relabelled, consistently
    meta.to_csv(csv, index=False)
    assert fingerprint(tiny_us8k, tmp_path / "cache") != before


def test_the_second_fingerprint_reads_no_file(tiny_us8k, tmp_path, digests, no_racy_window):
    first = fingerprint(tiny_us8k, tmp_path / "cache")
    n = len(create_dataset(DatasetConfig("us8k", str(tiny_us8k)), tmp_path / "cache").table)
    assert len(digests) == n
    digests.clear()
    assert fingerprint(tiny_us8k, tmp_path / "cache") == first and digests == []
    assert (tmp_path / "cache" / "file-hashes.tsv").is_file()


def test_a_file_rewritten_in_place_is_read_again(tiny_us8k, tmp_path, digests, no_racy_window):
    """Same size, mtime set back: the change time still moves, so its remembered hash is not used."""
    first = fingerprint(tiny_us8k, tmp_path / "cache")
    path = next((tiny_us8k / "audio" / "fold5").iterdir())
    st = path.stat()
    flip_one_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    digests.clear()
    assert fingerprint(tiny_us8k, tmp_path / "cache") != first
    assert digests == [str(path.resolve())]


def test_files_changed_within_the_clock_window_are_not_remembered(tiny_us8k, tmp_path, digests, monkeypatch):
    monkeypatch.setattr(filehash, "RACY_NS", 10**18)  # every file counts as just written
    fingerprint(tiny_us8k, tmp_path / "cache")
    digests.clear()
    fingerprint(tiny_us8k, tmp_path / "cache")
    assert len(digests) > 0  # hashed again: a same-tick rewrite could have kept its stamp


def test_a_damaged_memo_costs_a_reread_not_a_wrong_hash(tiny_us8k, tmp_path, digests, no_racy_window):
    first = fingerprint(tiny_us8k, tmp_path / "cache")
    memo = tmp_path / "cache" / "file-hashes.tsv"
    lines = memo.read_text().splitlines()
    path, stamp, _, check = lines[0].split("\t")
    memo.write_text("\n".join([f"{path}\t{stamp}\t{'0' * 32}\t{check}", "junk", *lines[1:]]) + "\n")
    digests.clear()
    assert fingerprint(tiny_us8k, tmp_path / "cache") == first  # a forged hash is not used...
    assert digests == [path]  # ...its file is read again, and only it
    memo.write_text("".join(f"{line.rsplit(chr(9), 1)[0]}\n" for line in lines))  # no checksums
    digests.clear()
    assert fingerprint(tiny_us8k, tmp_path / "cache") == first and len(digests) == len(lines)
    memo.write_text("not\ta memo\n\x00")
    digests.clear()
    assert fingerprint(tiny_us8k, tmp_path / "cache") == first  # ...and an unreadable one re-read
    assert len(digests) > 0


def test_unreadable_and_odd_files_get_placeholders_without_blocking(tmp_path):
    fifo, folder = tmp_path / "fifo.wav", tmp_path / "dir.wav"
    os.mkfifo(fifo)
    folder.mkdir()
    hashes = filehash.content_hashes([str(fifo), str(folder), str(tmp_path / "missing.wav")], tmp_path / "memo.tsv")
    assert hashes[0] == hashes[1] == "not-a-file" and hashes[2].startswith("missing:")
    assert not (tmp_path / "memo.tsv").exists()  # nothing remembered for them


def test_a_content_equal_copy_shares_the_waveform_cache(tiny_us8k_master, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    copy = tmp_path / "copy"
    shutil.copytree(tiny_us8k_master, copy)
    first = cache_mod.load_waveforms(
        create_dataset(DatasetConfig("us8k", str(tiny_us8k_master)), cache), AUDIO, cache, progress=False
    )
    decoded = []
    real = cache_mod.load_clip
    monkeypatch.setattr(cache_mod, "load_clip", lambda *a: decoded.append(a) or real(*a))
    again = cache_mod.load_waveforms(
        create_dataset(DatasetConfig("us8k", str(copy)), cache), AUDIO, cache, progress=False
    )
    assert again.path == first.path and decoded == []
    flip_one_byte(next((copy / "audio" / "fold2").iterdir()))
    changed = cache_mod.load_waveforms(
        create_dataset(DatasetConfig("us8k", str(copy)), cache), AUDIO, cache, progress=False
    )
    assert changed.path != first.path and len(decoded) == len(changed)  # a changed file: a new entry
