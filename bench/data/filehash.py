"""Content hashes of the dataset's files, remembered between runs so that a second fingerprint of
an unchanged dataset reads no audio.

`content_hashes(paths, memo)` returns the blake2b of each file's bytes. The memo (`<cache_dir>/
file-hashes.tsv`) maps an absolute path to the hash it had when the file's size, modification
time, change time and inode were as recorded; any write to a file (even one that restores its size
and modification time) moves its change time, so the file is read again. A hash is remembered only
for a file whose times are more than `RACY_NS` before the read (as git does for its index): on a
file system with coarse timestamps, a rewrite within the same tick would otherwise keep its stamp.
Files that are missing, unreadable or not regular files (a FIFO, a folder) get a placeholder and
are never remembered: the waveform cache reports them. The memo is a cache: a damaged, edited or
unwritable one costs a re-read, never a wrong hash (each line carries a checksum of itself, so a
hash changed by hand is not used). A leaf module.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RACY_NS = 2_000_000_000  # a file changed this recently (ns) is hashed but its hash not remembered
BLOCK = 1 << 20


def file_digest(path: str) -> str:
    """blake2b (128 bits) of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)  # releases the GIL: threads hash several files at once
    return h.hexdigest()


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def _check(path: str, stamp: str, digest: str) -> str:
    """A memo line's own checksum: an edited or damaged line (a hash changed by hand) is skipped."""
    return hashlib.blake2b(f"{path}\t{stamp}\t{digest}".encode(), digest_size=8).hexdigest()


def read_memo(memo: Path | None) -> dict[str, tuple[str, str]]:
    """path -> (stamp, hash) from the memo file; an unreadable, damaged or edited line (its
    checksum does not match) is skipped, as are lines of a memo written before lines had one."""
    found: dict[str, tuple[str, str]] = {}
    if memo is None:
        return found
    try:
        text = memo.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return found
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and len(parts[2]) == 32 and parts[3] == _check(*parts[:3]):
            found[parts[0]] = (parts[1], parts[2])
    return found


def _write_memo(memo: Path, entries: dict[str, tuple[str, str]]) -> None:
    """Merge `entries` into the memo file (atomically; entries of other datasets are kept)."""
    from bench.core.atomic import atomic_write_text

    merged = {**read_memo(memo), **entries}
    text = "".join(
        f"{p}\t{s}\t{h}\t{_check(p, s, h)}\n" for p, (s, h) in sorted(merged.items()) if "\t" not in p and "\n" not in p
    )
    try:
        atomic_write_text(memo, text)
    except OSError:
        pass  # only a cache: the next fingerprint reads the files again


def content_hashes(paths: list[str], memo: Path | None = None, workers: int = 4) -> list[str]:
    """The content hash of each file (a placeholder for one that cannot be read), using and
    updating the memo file `memo` (None: hash every file)."""
    known = read_memo(memo)
    stamps: list[str | None] = []
    out: list[str | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            stamps.append(None)
            out.append(f"missing:{e.errno}")
            continue
        if not stat.S_ISREG(st.st_mode):
            stamps.append(None)
            out.append("not-a-file")  # a FIFO would block a read; the cache quarantines it
            continue
        stamp = _stamp(st)
        stamps.append(stamp)
        seen = known.get(os.path.abspath(path))
        out.append(seen[1] if seen and seen[0] == stamp else None)
    todo = [i for i, h in enumerate(out) if h is None]
    started = time.time_ns()

    def one(i: int) -> str | None:
        try:
            return file_digest(paths[i])
        except OSError as e:
            return f"unreadable:{e.errno}"

    with ThreadPoolExecutor(max(1, min(workers, len(todo) or 1))) as pool:
        for i, h in zip(todo, pool.map(one, todo)):
            out[i] = h
    fresh = {}
    for i in todo:
        mtime, ctime = (int(x) for x in stamps[i].split(":")[1:3])
        if len(out[i]) == 32 and started - max(mtime, ctime) > RACY_NS:
            try:  # the file must not have changed while it was read
                if _stamp(os.stat(paths[i])) == stamps[i]:
                    fresh[os.path.abspath(paths[i])] = (stamps[i], out[i])
            except OSError:
                pass
    if memo is not None and fresh:
        _write_memo(memo, fresh)
    return out
