"""The waveform cache: every clip decoded, mixed, resampled and padded once, stored memory-mapped.

A cache entry is a folder `<cache_dir>/waves/<dataset>-<key>/` where the key hashes the manifest's
fingerprint and the audio settings. It holds `waves.npy` ([N, channels, samples] int16, each clip
scaled to its own peak, with the scale in `scales.npy`: half the disk and memory of float32, and a
quantisation floor 96 dB below each clip's peak, under AmplitudeToDB's 80 dB floor; the log-mel
features stay within 1e-4 of float32's, where float16 storage gave about 1e-3), `hashes.txt` (the
sha1 of each clip's stored samples and scale, also used to find copies), `quarantine.csv` (clips
that could not be used, with the reason) and `meta.json` (with a digest of the last two).

Built in a locked temporary folder `.<entry>.*`, after a free-space check, with waves.npy's blocks
reserved (a full disk is a message, not SIGBUS), then renamed into place; the folder goes on any
failure, and the next build removes those of killed builds (never a running one's). Every load
verifies the entry (sizes, every clip's hash) and rebuilds a damaged one. A failure that is not
the audio's fault (permission, I/O, memory, disk) raises `CacheError`, a fault in foldbench or a
library `DecodeFault`; either caches nothing, and only `BadAudio` quarantines a clip.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.core.atomic import DISK_FULL
from bench.data.audio import MAX_PEAK, BadAudio, load_clip, n_samples
from bench.core.config import AudioConfig
from bench.data.datasets import Dataset
from bench.core.errors import FoldbenchError

CACHE_VERSION = 4  # bump when the stored content changes meaning
STORE_DTYPE = np.int16
FULL_SCALE = 32767
LOCK = ".lock"  # in `waves/`: taken to create or clean temporary folders; in each one: held while it builds


class CacheError(FoldbenchError, RuntimeError):
    """The cache cannot be read or built for a reason that is not the audio's (permission, I/O,
    memory, disk); the message names the file or folder and what to do."""


class DecodeFault(RuntimeError):
    """Decoding a file failed for a reason that is not the file's (a bug, a missing library): never
    a quarantine entry, and not a one-line user error either: its traceback is what to report."""


class Corrupt(Exception):
    """An entry that is not what its build wrote; the message is the reason."""


class Stale(Corrupt):
    """An entry an older foldbench built with a reason this one no longer gives; rebuilt."""


# The older build's catch-all quarantined any exception as "cannot decode: <ExceptionType>: ...";
# decode's own reasons ("cannot decode: Error opening ...") never put a bare name before a colon.
CATCH_ALL_REASON = re.compile(r"^cannot decode: [A-Za-z_]\w*: ")


@dataclass
class Waveforms:
    data: np.ndarray  # [N, channels, samples] int16, memory-mapped; quarantined rows are zero
    scale: np.ndarray  # [N] float32: sample = data * scale
    hashes: list[str | None]  # sha1 of each clip's stored samples and scale; None when quarantined
    quarantine: pd.DataFrame  # index (row in the manifest), clip, reason
    key: str
    path: Path

    def __len__(self) -> int:
        return len(self.data)

    def get(self, start: int, stop: int) -> np.ndarray:
        """Clips start..stop as float32 [n, channels, samples]."""
        return dequantise(self.data[start:stop], self.scale[start:stop, None, None])

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.data), dtype=bool)
        mask[self.quarantine["index"].to_numpy(dtype=int)] = False
        return mask


def quantise(clip: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """How a clip is stored: int16 samples scaled to the clip's peak, and that scale (> 0: a silent
    clip never gets here, load_clip refuses it). `bench.train.predict` passes new files through it too."""
    scale = np.float32(np.abs(clip).max() / FULL_SCALE)
    return np.round(clip / scale).astype(STORE_DTYPE), scale


def dequantise(stored: np.ndarray, scale) -> np.ndarray:
    """The float32 samples a stored clip (or block of clips, `scale` broadcast) stands for."""
    return stored.astype(np.float32) * scale


def cache_key(dataset: Dataset, audio: AudioConfig) -> str:
    text = json.dumps({"v": CACHE_VERSION, "manifest": dataset.fingerprint(), "audio": asdict(audio)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_waveforms(
    dataset: Dataset, audio: AudioConfig, cache_dir: str | Path, workers: int | None = None, progress: bool = True
) -> Waveforms:
    """The cached waveforms for this manifest and audio config, verified, building them if needed."""
    key = cache_key(dataset, audio)
    folder = Path(cache_dir).expanduser() / "waves" / f"{dataset.name}-{key}"
    shape = (len(dataset.table), audio.channels, n_samples(audio))
    for attempt in range(2):
        if not (folder / "meta.json").is_file():
            _remove(folder, "is incomplete")  # not ours to trust: no meta.json, no entry
            _build(dataset, audio, folder, workers, progress)
        try:
            return _open_verified(folder, shape, key, workers)
        except Corrupt as e:
            if attempt:
                raise CacheError(
                    f"waveform cache {folder} is corrupt right after its build ({e}): "
                    f"delete {folder} and check the disk"
                ) from None
            what = "is out of date" if isinstance(e, Stale) else "is corrupt"
            print(f"waveform cache {folder} {what} ({e}): rebuilding", file=sys.stderr)
            _remove(folder, f"{what} ({e})")
    raise AssertionError("unreachable")


def _remove(folder: Path, why: str) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError as e:
        raise CacheError(
            f"waveform cache {folder} {why} and cannot be removed ({e.strerror or e}): delete {folder}"
        ) from None


def clip_hash(stored: np.ndarray, scale: np.float32) -> str:
    """sha1 of one clip's stored int16 samples and its float32 scale (as in hashes.txt)."""
    h = hashlib.sha1(np.ascontiguousarray(stored).data)  # hashes a memory-mapped row without a copy
    h.update(np.float32(scale).tobytes())
    return h.hexdigest()


def _digest(hashes: bytes, quarantine: bytes) -> str:
    return hashlib.sha1(hashes + b"\0" + quarantine).hexdigest()


def _open_verified(folder: Path, shape: tuple, key: str, workers: int | None) -> Waveforms:
    """The entry, each file checked against meta.json and every clip against its hash."""
    dtype = np.dtype(STORE_DTYPE).name
    try:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except ValueError:
            raise Corrupt("meta.json is not JSON") from None
        if [meta.get(k) for k in ("version", "shape", "dtype")] != [CACHE_VERSION, list(shape), dtype]:
            raise Corrupt(
                f"meta.json: version {meta.get('version')}, {meta.get('dtype')} "
                f"{meta.get('shape')}; expected version {CACHE_VERSION}, {dtype} {list(shape)}"
            )
        hashes_text = (folder / "hashes.txt").read_bytes()
        quarantine_csv = (folder / "quarantine.csv").read_bytes()
        if meta.get("digest") != _digest(hashes_text, quarantine_csv):
            raise Corrupt("hashes.txt or quarantine.csv differs from meta.json's digest")
        data = _open_waves(folder / "waves.npy", shape)
        scale = np.load(folder / "scales.npy", allow_pickle=False)
        if scale.shape != shape[:1] or scale.dtype != np.float32:
            raise Corrupt(f"scales.npy holds {scale.dtype} {scale.shape}, expected float32 {shape[:1]}")
        quarantine = pd.read_csv(io.BytesIO(quarantine_csv), dtype={"clip": str, "reason": str})
        lines = hashes_text.decode().split("\n")
        if len(lines) != shape[0] + 1 or lines[-1]:
            raise Corrupt(f"hashes.txt has {len(lines) - 1} lines, expected {shape[0]}")
        ok = [i for i, h in enumerate(lines[:-1]) if h]
        if sorted(quarantine["index"]) != sorted(set(range(shape[0])) - set(ok)):
            raise Corrupt("quarantine.csv does not match hashes.txt")
        stale = quarantine["reason"].str.match(CATCH_ALL_REASON.pattern)
        if stale.any():
            raise Stale(
                f"{stale.sum()} clip(s) set aside for a fault in foldbench, not in the file "
                f"(the first: {quarantine['clip'][stale].iloc[0]})"
            )
        loud = np.asarray(ok, dtype=int)[scale[ok] * FULL_SCALE > MAX_PEAK]  # cached before audio.MAX_PEAK
        if loud.size:
            raise Stale(f"{len(loud)} clip(s) kept whose level is not usable (the first: index {loud[0]})")
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:  # sha1 releases the GIL
            same = list(pool.map(lambda i: clip_hash(data[i], scale[i]) == lines[i], ok))
    except (ValueError, KeyError, TypeError, EOFError, FileNotFoundError) as e:
        raise Corrupt(f"{type(e).__name__}: {e}") from None
    except OSError as e:
        raise CacheError(f"cannot read waveform cache {folder}: {e.strerror or e}") from None
    if not all(same):
        wrong = [i for i, s in zip(ok, same) if not s]
        raise Corrupt(f"{len(wrong)} clip(s) differ from their hashes, the first at row {wrong[0]}")
    return Waveforms(data, scale, [h or None for h in lines[:-1]], quarantine, key, folder)


def _open_waves(path: Path, shape: tuple) -> np.ndarray:
    """waves.npy memory-mapped, after checking its header and its size against `shape`."""
    with open(path, "rb") as f:
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
        have, fortran, dtype = read(f)
        offset, size = f.tell(), os.fstat(f.fileno()).st_size
    if have != shape or fortran or dtype != STORE_DTYPE:
        raise Corrupt(f"waves.npy holds {dtype} {have}, expected {np.dtype(STORE_DTYPE).name} {shape}")
    need = offset + int(np.prod(shape)) * np.dtype(STORE_DTYPE).itemsize
    if size != need:
        raise Corrupt(f"waves.npy is {size:,} bytes, its shape needs {need:,}")
    return np.memmap(path, dtype=STORE_DTYPE, mode="r", offset=offset, shape=shape)


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def _build(dataset: Dataset, audio: AudioConfig, folder: Path, workers: int | None, progress: bool) -> None:
    parent = folder.parent
    paths = dataset.table["path"].tolist()
    shape = (len(paths), audio.channels, n_samples(audio))
    need = int(np.prod(shape)) * np.dtype(STORE_DTYPE).itemsize + 45 * len(paths) + (1 << 16)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(parent)
        free = shutil.disk_usage(parent).free
        if free < need:
            raise CacheError(
                f"the waveform cache needs {_size(need)} at {parent}, {_size(free)} free: "
                "free some space or choose another --cache-dir"
            )
        with _temp_folder(parent, folder.name) as tmp:
            out = _allocate(tmp / "waves.npy", shape)
            scales, hashes, bad = _decode_all(dataset, audio, out, workers, progress)
            out.flush()
            del out
            np.save(tmp / "scales.npy", scales)
            hashes_text = ("\n".join(hashes) + "\n").encode()
            (tmp / "hashes.txt").write_bytes(hashes_text)
            rows = sorted(bad)
            quarantine = (
                pd.DataFrame(
                    {"index": rows, "clip": dataset.table["clip"].iloc[rows].tolist(), "reason": [bad[i] for i in rows]}
                )
                .to_csv(index=False)
                .encode()
            )
            (tmp / "quarantine.csv").write_bytes(quarantine)
            meta = {
                "version": CACHE_VERSION,
                "dataset": dataset.name,
                "root": str(dataset.root),
                "audio": asdict(audio),
                "shape": list(shape),
                "dtype": np.dtype(STORE_DTYPE).name,
                "quarantined": len(rows),
                "digest": _digest(hashes_text, quarantine),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.rename(tmp, folder)
            except OSError:  # another process finished the same entry first: theirs is as good
                if not (folder / "meta.json").is_file():
                    raise
            else:
                (folder / LOCK).unlink(missing_ok=True)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise CacheError(
                f"the waveform cache needs {_size(need)} at {parent}, "
                f"{_size(shutil.disk_usage(parent).free)} free ({e.strerror}): free some "
                "space or choose another --cache-dir"
            ) from None
        raise CacheError(f"cannot write the waveform cache at {parent}: {e.strerror or e}") from None


def _allocate(path: Path, shape: tuple) -> np.memmap:
    """waves.npy created with its blocks reserved: a full disk fails here (ENOSPC), not as SIGBUS
    when the memory map is written."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=STORE_DTYPE, shape=shape)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system that cannot reserve
            raise
    finally:
        os.close(fd)
    return out


@contextlib.contextmanager
def _flock(path: Path, how: int):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_folder(parent: Path, name: str):
    """A new `.<name>.*` folder in `parent`, locked while in use and removed after (unless renamed)."""
    with _flock(parent / LOCK, fcntl.LOCK_SH):  # clean_stale never sees it before it is locked
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
        fd = os.open(tmp / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # before the lock goes: no one sees it unlocked
        os.close(fd)


def clean_stale(parent: Path) -> list[Path]:
    """Remove the temporary folders in `parent` that killed builds left (no process holds their
    lock), keeping those of builds still running. Returns the folders removed."""
    removed = []
    with _flock(parent / LOCK, fcntl.LOCK_EX):
        for tmp in parent.glob(".*"):
            if tmp.is_dir() and not tmp.is_symlink() and not _building(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    return removed


def _building(tmp: Path) -> bool:
    try:
        fd = os.open(tmp / LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # killed before it took its lock (made under the folder lock)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _decode_all(
    dataset: Dataset, audio: AudioConfig, out: np.ndarray, workers: int | None, progress: bool
) -> tuple[np.ndarray, list[str], dict[int, str]]:
    """Every clip into `out`; its scales, hashes ("" when quarantined) and quarantine reasons."""
    paths = dataset.table["path"].tolist()
    scales = np.zeros(len(paths), dtype=np.float32)
    hashes = [""] * len(paths)
    bad: dict[int, str] = {}
    stop = threading.Event()  # set on an error: the clips left are skipped, not decoded in vain

    def one(i: int) -> None:
        if stop.is_set():
            return
        try:
            clip = load_clip(paths[i], audio)
            stored, scales[i] = quantise(clip)
            out[i] = stored
            hashes[i] = clip_hash(stored, scales[i])
        except BadAudio as e:
            bad[i] = str(e)
        except OSError as e:  # the file or disk, not the audio: nothing is cached
            raise CacheError(f"cannot read {paths[i]}: {e.strerror or e} (not cached: fix it and run again)") from None
        except Exception as e:  # not the audio's fault: a bug, a missing library, memory
            if isinstance(e, MemoryError) or "can't allocate memory" in str(e):  # numpy's, torch's
                raise CacheError(f"out of memory decoding {paths[i]}: use fewer workers or free memory") from None
            raise DecodeFault(
                f"decoding {paths[i]} failed in foldbench or a library it uses, not "
                f"because of the file (not quarantined, nothing cached): "
                f"{type(e).__name__}: {e}"
            ) from e

    # Threads: libsndfile and torch's resampling release the GIL, and the memmap is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            try:
                list(
                    tqdm(
                        pool.map(one, range(len(paths))),
                        total=len(paths),
                        disable=not progress,
                        desc=f"decoding {dataset.name}",
                        unit="clip",
                    )
                )
            except BaseException:
                stop.set()
                raise
    finally:
        torch.set_num_threads(threads)
    return scales, hashes, bad
