"""Synthetic audio datasets in real on-disk layouts, deterministic from a seed: UrbanSound8K (`write_us8k`,
`make_demo`, `make_replica`), folder-per-class (`write_folder_dataset`) and GTZAN (`write_gtzan`).

Every clip comes from `synth_clip`: ten class synthesizers a log-mel CNN tells apart, varied per source
recording (pitch, rate, level) and per clip, over coloured background noise. `signature` (0..1) adds a
per-source fingerprint (a steady tone, a noise colour) shared by all slices of a source, so a split that
puts slices of one source on both sides (leakage) scores better than an honest one.
"""

import multiprocessing as mp
import os
import shutil
import zlib
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from bench.data.sounds import source_params, synth_clip

US8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)
US8K_FOLD_SIZES = (873, 888, 925, 990, 936, 823, 838, 806, 816, 837)
US8K_CLASS_SIZES = (1000, 429, 1000, 1000, 1000, 1000, 374, 1000, 929, 1000)
US8K_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

# The real UrbanSound8K format mix, as fractions of source recordings ("mixed" mode: demo and replica).
SAMPLE_RATE_MIX = {
    44100: 0.61,
    48000: 0.29,
    96000: 0.07,
    8000: 0.005,
    11025: 0.005,
    16000: 0.005,
    22050: 0.005,
    32000: 0.005,
    192000: 0.005,
}
CHANNEL_MIX = {2: 0.92, 1: 0.08}
SUBTYPE_MIX = {"PCM_16": 0.66, "PCM_24": 0.31, "FLOAT": 0.02, "PCM_U8": 0.007, "IMA_ADPCM": 0.003}
FULL_LENGTH_FRACTION = 0.8  # share of slices exactly max_duration long; the rest are shorter
SIMPLE_FORMAT = (22050, 1, "PCM_16")  # "simple" mode: sample rate, channels, subtype
DEMO_SETTINGS = dict(
    counts=6, seed=2024, formats="mixed", min_duration=1.0, max_duration=4.0, clips_per_source=4, signature=0.5
)


# --- writing ----------------------------------------------------------------------------------


def _frames(duration, sr, channels, subtype):
    """Frames for a clip; IMA ADPCM is cut to whole blocks (libsndfile pads the last block with decoder junk)."""
    n = max(1, round(duration * sr))
    if subtype == "IMA_ADPCM":  # libsndfile's block size: 256..2048 bytes by sr * channels
        rate = sr * channels
        align = 256 if rate < 12000 else 512 if rate < 23000 else 1024 if rate < 44000 else 2048
        block = (align - 4 * channels) * 2 // channels + 1
        n = max(block, n // block * block)
    return n


def _write_clip(job):
    """Render one job (a dict made by the writers) and write it; FLOAT WAVs get their PEAK timestamp zeroed."""
    x = synth_clip(
        job["kind"],
        job["n"],
        job["sr"],
        np.random.default_rng(job["key"]),
        job["source"],
        signature=job["signature"],
        start=job["start"],
        channels=job["channels"],
        salience=job["salience"],
    )
    sf.write(job["path"], x, job["sr"], subtype=job["subtype"])
    if job["subtype"] == "FLOAT":  # libsndfile stamps time(NULL) into the PEAK chunk: same seed, different bytes
        with open(job["path"], "r+b") as f:
            at = f.read(512).find(b"PEAK")
            if at >= 0:
                f.seek(at + 12)
                f.write(bytes(4))


def _write_all(jobs, workers=1, progress=False):
    """Write all jobs, in a process pool when workers > 1 (each clip has its own seed: same files either way)."""
    for folder in {os.path.dirname(j["path"]) for j in jobs}:
        os.makedirs(folder, exist_ok=True)
    with tqdm(total=len(jobs), disable=not progress, unit="clip", desc="synth") as bar:
        if workers > 1:  # spawn: no fork of a threaded parent; a broken worker fails the pool instead of hanging
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for _ in pool.map(_write_clip, jobs, chunksize=16):
                    bar.update()
        else:
            for job in jobs:
                _write_clip(job)
                bar.update()


def _allocate(rng, mix, n):
    """n draws from a {value: share} mix: shares rounded to counts, every value at least once if n allows, shuffled."""
    values, p = list(mix), np.array(list(mix.values())) / sum(mix.values())
    k = np.floor(p * n).astype(int)
    if n >= len(values):
        k = np.maximum(k, 1)
    while k.sum() < n:  # largest remainders first
        k[np.argmax(p * n - k)] += 1
    while k.sum() > n:  # the forced minimum of 1 overshot: take back from the most over-served
        k[np.argmax(np.where(k > 1, k - p * n, -np.inf))] -= 1
    return [values[i] for i in rng.permutation(np.repeat(np.arange(len(values)), k))]


def write_us8k(
    root,
    counts,
    *,
    seed=0,
    formats="mixed",
    max_duration=4.0,
    min_duration=1.0,
    clips_per_source=4,
    signature=0.0,
    classes=US8K_CLASSES,
    workers=1,
    progress=False,
):
    """Write an UrbanSound8K-layout dataset; counts: {(class_id, fold): clips} or an int for every cell.
    Returns the metadata DataFrame (also written to metadata/UrbanSound8K.csv)."""
    root, rng = Path(root), np.random.default_rng(seed)
    if isinstance(counts, (int, np.integer)):
        counts = {(c, f): int(counts) for c in range(len(classes)) for f in range(1, 11)}
    bad = [key for key in counts if not (0 <= key[0] < len(classes) and 1 <= key[1] <= 10)]
    if bad:
        raise ValueError(f"counts keys must be (class_id in 0..{len(classes) - 1}, fold in 1..10); got {bad[:3]}")
    sources = []  # (class_id, fold, number of slices): every source lies in one fold and one class
    for (c, fold), k in sorted(counts.items()):
        while k > 0:
            m = min(k, int(rng.integers(1, 2 * clips_per_source)))
            sources.append((c, fold, m))
            k -= m
    fsids = rng.choice(np.arange(100, 200_000), len(sources), replace=False)
    if formats == "mixed":
        fmts = zip(*(_allocate(rng, mix, len(sources)) for mix in (SAMPLE_RATE_MIX, CHANNEL_MIX, SUBTYPE_MIX)))
    elif formats == "simple":
        fmts = [SIMPLE_FORMAT] * len(sources)
    else:
        raise ValueError(f"formats must be 'mixed' or 'simple', got {formats!r}")
    rows, jobs = [], []
    for (c, fold, m), fsid, (sr, channels, subtype) in zip(sources, fsids, fmts):
        source, salience = source_params(rng), int(rng.choice([1, 2], p=[0.65, 0.35]))
        split, t = int(rng.integers(1, m + 1)), rng.uniform(0, 10)  # slices >= split are a second occurrence
        for j in range(m):
            if j == split:
                t += rng.uniform(1, 20)
            dur = max_duration if rng.random() < FULL_LENGTH_FRACTION else rng.uniform(min_duration, max_duration)
            n = _frames(dur, sr, channels, subtype)
            name = f"{fsid}-{c}-{int(j >= split)}-{j - split if j >= split else j}.wav"
            rows.append((name, int(fsid), round(t, 6), round(t + n / sr, 6), salience, fold, c, classes[c]))
            jobs.append(
                dict(
                    path=str(root / "audio" / f"fold{fold}" / name),
                    kind=c,
                    n=n,
                    sr=sr,
                    channels=channels,
                    subtype=subtype,
                    source=source,
                    signature=signature,
                    start=t,
                    salience=salience,
                    key=[seed, int(fsid), j],
                )
            )
            t += n / sr
    _write_all(jobs, workers, progress)
    meta = pd.DataFrame(rows, columns=US8K_COLUMNS)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    return meta


def _alive(pid):
    """Whether a process with this id is running (partial folders are named after their builder's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _build_once(root, build):
    """Reuse root if it has .complete; else build(tmp) in a temporary sibling, rename it to root, mark .complete."""
    root = Path(root)
    if (root / ".complete").exists():
        return pd.read_csv(root / "metadata" / "UrbanSound8K.csv")
    for stale in root.parent.glob(f".{root.name}.partial-*"):  # a killed run's (or our own earlier) leftovers
        pid = stale.name.rsplit("-", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):  # else: another live build
            shutil.rmtree(stale)
    if root.exists():  # unfinished (killed between rename and marker): rebuild, but only our own layout
        if set(os.listdir(root)) - {"metadata", "audio"}:
            raise FileExistsError(f"{root} exists, is not a finished synthetic dataset and holds other files")
        shutil.rmtree(root)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    root.parent.mkdir(parents=True, exist_ok=True)
    meta = build(tmp)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished the same dataset first: keep theirs
        if not (root / ".complete").exists():
            raise
        shutil.rmtree(tmp)
    (root / ".complete").write_text("ok\n")
    return meta


def make_demo(root, *, workers=None):
    """The built-in `demo` dataset (DEMO_SETTINGS: 600 clips, mixed formats); reused once root/.complete exists."""
    workers = workers or min(4, os.cpu_count() or 1)
    return _build_once(root, lambda tmp: write_us8k(tmp, workers=workers, **DEMO_SETTINGS))


def replica_counts(seed=0):
    """{(class_id, fold): clips} with fold totals US8K_FOLD_SIZES and class totals US8K_CLASS_SIZES exactly."""
    rows, cols = np.array(US8K_CLASS_SIZES), np.array(US8K_FOLD_SIZES)
    m = np.outer(rows, cols) / rows.sum() * np.random.default_rng(seed).lognormal(0, 0.15, (10, 10))
    for _ in range(200):  # iterative proportional fitting to both margins
        m *= (rows / m.sum(1))[:, None]
        m *= cols / m.sum(0)
    out = np.floor(m).astype(int)
    need = cols - out.sum(0)
    for i in range(10):  # Ryser's greedy: a class's missing units go to the folds missing the most
        j = np.lexsort((out[i] - m[i], -need))[: rows[i] - out[i].sum()]
        out[i, j] += 1
        need[j] -= 1
    if (out.sum(0) != cols).any() or (out.sum(1) != rows).any() or (out < 0).any():
        raise RuntimeError("replica_counts: could not match the UrbanSound8K margins")
    return {(c, f + 1): int(out[c, f]) for c in range(10) for f in range(10)}


def make_replica(root, seed=0, *, signature=0.5, workers=None, progress=True):
    """A full-size UrbanSound8K replica (8,732 clips, real fold/class sizes and format mix), built once
    like make_demo."""
    return _build_once(
        root,
        lambda tmp: write_us8k(
            tmp,
            replica_counts(seed),
            seed=seed,
            formats="mixed",
            signature=signature,
            workers=workers or os.cpu_count() or 1,
            progress=progress,
        ),
    )


def write_folder_dataset(root, spec, *, seed=0, ext="wav", signature=0.0, sr=22050, duration=1.0):
    """Write <root>/<class>/<stem>.<ext> for spec {class: [stems]}; class i uses synthesizer i % 10.
    A stem's group is its prefix before "_" (alice_001 -> alice); a group shares one fingerprint across its
    files, mixed in with `signature` (a float, or {group: strength}). Returns DataFrame[path, label, group]."""
    rows, jobs = [], []
    for c, (label, stems) in enumerate(spec.items()):
        for stem in stems:
            group = stem.split("_")[0]
            group_key = zlib.crc32(group.encode())
            source = source_params(np.random.default_rng([seed, c, group_key]))
            fingerprint = source_params(np.random.default_rng([seed, group_key]))
            source.update(sig_freq=fingerprint["sig_freq"], sig_colour=fingerprint["sig_colour"])
            path = str(Path(root) / label / f"{stem}.{ext}")
            strength = signature.get(group, 0.0) if isinstance(signature, Mapping) else signature
            jobs.append(
                dict(
                    path=path,
                    kind=c,
                    n=round(duration * sr),
                    sr=sr,
                    channels=1,
                    subtype=None,
                    source=source,
                    signature=strength,
                    start=0.0,
                    salience=1,
                    key=[seed, c, zlib.crc32(stem.encode())],
                )
            )
            rows.append((path, label, group))
    _write_all(jobs)
    return pd.DataFrame(rows, columns=["path", "label", "group"])


def write_gtzan(root, n_per_genre=10, *, seed=0, au_fraction=0.2, duration=3.0, sr=22050):
    """Write GTZAN's layout, root/genres/<genre>/<genre>.000NN.wav, round(au_fraction * n) per genre as
    Sun .au; 22050 Hz mono. Returns DataFrame[path, label]."""
    rng, rows, jobs = np.random.default_rng(seed), [], []
    for g, genre in enumerate(GTZAN_GENRES):
        as_au = set(rng.choice(n_per_genre, round(au_fraction * n_per_genre), replace=False).tolist())
        for i in range(n_per_genre):
            path = str(Path(root) / "genres" / genre / f"{genre}.{i:05d}.{'au' if i in as_au else 'wav'}")
            jobs.append(
                dict(
                    path=path,
                    kind=g,
                    n=round(duration * sr),
                    sr=sr,
                    channels=1,
                    subtype=None,
                    source=source_params(rng),
                    signature=0.0,
                    start=0.0,
                    salience=1,
                    key=[seed, g, i],
                )
            )
            rows.append((path, genre))
    _write_all(jobs)
    return pd.DataFrame(rows, columns=["path", "label"])
