"""The waveform cache: every clip decoded, mixed, resampled and padded once, stored memory-mapped.

A cache entry is a folder `<cache_dir>/waves/<dataset>-<key>/` where the key hashes the manifest's
fingerprint and the audio settings. It holds `waves.npy` ([N, channels, samples] int16, each clip scaled to its own peak, with
the scale in `scales.npy`: half the disk and memory of float32, and a quantisation floor 96 dB
below each clip's peak, under AmplitudeToDB's 80 dB floor; the log-mel features stay within 1e-4
of float32's, where float16 storage gave about 1e-3),
`scales.npy`, `hashes.txt` (one hash of each clip's decoded samples, to find copies), `quarantine.csv` (clips that could not be used, with the reason) and `meta.json`. It is built in a
temporary folder and renamed into place, so a build killed half way leaves nothing a later run
trusts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .audio import BadAudio, load_clip, n_samples
from .config import AudioConfig
from .datasets import Dataset

CACHE_VERSION = 3  # bump when the stored content changes meaning
STORE_DTYPE = np.int16
FULL_SCALE = 32767


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
        return self.data[start:stop].astype(np.float32) * self.scale[start:stop, None, None]

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.data), dtype=bool)
        mask[self.quarantine["index"].to_numpy(dtype=int)] = False
        return mask


def cache_key(dataset: Dataset, audio: AudioConfig) -> str:
    text = json.dumps({"v": CACHE_VERSION, "manifest": dataset.fingerprint(), "audio": asdict(audio)},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_waveforms(dataset: Dataset, audio: AudioConfig, cache_dir: str | Path,
                   workers: int | None = None, progress: bool = True) -> Waveforms:
    """The cached waveforms for this manifest and audio config, building them if needed."""
    key = cache_key(dataset, audio)
    folder = Path(cache_dir).expanduser() / "waves" / f"{dataset.name}-{key}"
    if not (folder / "meta.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # not ours to trust: no meta.json, no entry
        _build(dataset, audio, folder, workers, progress)
    data = np.load(folder / "waves.npy", mmap_mode="r")
    scale = np.load(folder / "scales.npy")
    quarantine = pd.read_csv(folder / "quarantine.csv", dtype={"clip": str, "reason": str})
    hashes = [h or None for h in (folder / "hashes.txt").read_text().split("\n")[:len(data)]]
    return Waveforms(data, scale, hashes, quarantine, key, folder)


def _build(dataset: Dataset, audio: AudioConfig, folder: Path, workers: int | None,
           progress: bool) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        paths = dataset.table["path"].tolist()
        shape = (len(paths), audio.channels, n_samples(audio))
        out = np.lib.format.open_memmap(tmp / "waves.npy", mode="w+", dtype=STORE_DTYPE, shape=shape)
        scales = np.zeros(len(paths), dtype=np.float32)
        hashes = [""] * len(paths)
        bad: dict[int, str] = {}

        def one(i: int) -> None:
            try:
                clip = load_clip(paths[i], audio)
                scales[i] = np.abs(clip).max() / FULL_SCALE  # > 0: silent clips raise BadAudio
                stored = np.round(clip / scales[i]).astype(STORE_DTYPE)
                out[i] = stored
                hashes[i] = hashlib.sha1(stored.tobytes() + scales[i].tobytes()).hexdigest()
            except BadAudio as e:
                bad[i] = str(e)
            except MemoryError:
                raise
            except Exception as e:  # a decoder bug on one file must not kill a 9,000-file build
                bad[i] = f"cannot decode: {type(e).__name__}: {e}"

        # Threads: libsndfile and torch's resampling release the GIL, and the memmap is shared.
        workers = workers or os.cpu_count() or 1
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(tqdm(pool.map(one, range(len(paths))), total=len(paths), disable=not progress,
                          desc=f"decoding {dataset.name}", unit="clip"))
        finally:
            torch.set_num_threads(threads)
        out.flush()
        np.save(tmp / "scales.npy", scales)
        (tmp / "hashes.txt").write_text("\n".join(hashes) + "\n")
        rows = sorted(bad)
        pd.DataFrame({"index": rows, "clip": dataset.table["clip"].iloc[rows].tolist(),
                      "reason": [bad[i] for i in rows]}).to_csv(tmp / "quarantine.csv", index=False)
        meta = {"version": CACHE_VERSION, "dataset": dataset.name, "root": str(dataset.root),
                "audio": asdict(audio), "shape": list(shape), "dtype": np.dtype(STORE_DTYPE).name,
                "quarantined": len(rows)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same entry first: theirs is as good
            if not (folder / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
