"""Synthetic audio datasets in the real on-disk layouts, generated deterministically from a seed.

- `write_us8k`: UrbanSound8K (metadata/UrbanSound8K.csv, audio/fold1..fold10/{fsID}-{classID}-{occ}-{slice}.wav),
  clips cut from "source recordings" (one fsID, one fold, one class), in the real mix of file formats.
- `make_demo` / `make_replica`: the built-in `demo` dataset (600 clips) and a full-size replica (8,732 clips).
- `write_folder_dataset` (<root>/<class>/<stem>.wav) and `write_gtzan` (genres/<genre>/<genre>.000NN.wav|au).

Every writer renders its clips with `synth_clip`: ten class synthesizers that a log-mel CNN tells apart,
varied per source (pitch, rate, level) and per clip, over coloured background noise. `signature` (0..1)
adds a per-source fingerprint (a steady tone and a noise colour) shared by all slices of a source, so a
split that puts slices of one source on both sides (leakage) scores better than an honest one.
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

US8K_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
                "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")
US8K_FOLD_SIZES = (873, 888, 925, 990, 936, 823, 838, 806, 816, 837)
US8K_CLASS_SIZES = (1000, 429, 1000, 1000, 1000, 1000, 374, 1000, 929, 1000)
US8K_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

# The real UrbanSound8K format mix, as fractions of source recordings ("mixed" mode: demo and replica).
SAMPLE_RATE_MIX = {44100: 0.61, 48000: 0.29, 96000: 0.07, 8000: 0.005, 11025: 0.005, 16000: 0.005,
                   22050: 0.005, 32000: 0.005, 192000: 0.005}
CHANNEL_MIX = {2: 0.92, 1: 0.08}
SUBTYPE_MIX = {"PCM_16": 0.66, "PCM_24": 0.31, "FLOAT": 0.02, "PCM_U8": 0.007, "IMA_ADPCM": 0.003}
FULL_LENGTH_FRACTION = 0.8  # share of slices exactly max_duration long; the rest are shorter
SIMPLE_FORMAT = (22050, 1, "PCM_16")  # "simple" mode: sample rate, channels, subtype
DEMO_SETTINGS = dict(counts=6, seed=2024, formats="mixed", min_duration=1.0, max_duration=4.0,
                     clips_per_source=4, signature=0.5)


# --- signal building blocks (t: time in seconds within the source recording) -----------------

def _noise(rng, n, sr, colour=0.0, lo=20.0, hi=None):
    """Unit-variance float32 noise with power ~ f**-colour inside [lo, hi] Hz: random phases, one inverse FFT."""
    size = min(m << (-(-n // m) - 1).bit_length() for m in (1, 3, 5))  # 2**k, 3*2**k, 5*2**k: odd n is 50x slower
    f = np.arange(size // 2 + 1, dtype=np.float32) * np.float32(sr / size)
    gain = ((f >= lo) & (f <= (hi or sr / 2))).astype(np.float32)
    if colour:
        gain *= np.exp(np.log(np.maximum(f, np.float32(lo))) * np.float32(-colour / 2))
    phase = rng.random(f.size, dtype=np.float32) * np.float32(2 * np.pi)
    spec = np.empty(f.size, np.complex64)
    spec.real, spec.imag = gain * np.cos(phase), gain * np.sin(phase)
    x = np.fft.irfft(spec, size)[:n]
    return x / (x.std() + 1e-12)


def _tones(f0, sr, n_harm=1, tilt=1.0):
    """Harmonic series on a (time-varying) fundamental f0 [Hz]: amplitude k**-tilt, partials that reach 0.45*sr dropped."""
    f0 = np.asarray(f0, np.float32)
    cycles = np.cumsum(f0 * np.float32(1 / sr))  # float32 is plenty here, and fast
    phase = np.float32(2 * np.pi) * (cycles - np.floor(cycles))
    prev, cur, twice_cos = np.zeros_like(phase), np.sin(phase), 2 * np.cos(phase)
    out = cur.copy()
    for k in range(2, min(n_harm, int(0.45 * sr / f0.max())) + 1):  # sin(kx) = 2cos(x)sin((k-1)x) - sin((k-2)x)
        prev, cur = cur, twice_cos * cur - prev
        out += np.float32(k ** -tilt) * cur
    return out


def _onsets(rng, t, gap_lo, gap_hi):
    """Random event onsets [s] with gaps in [gap_lo, gap_hi], covering the span of t (and a bit before)."""
    gaps = rng.uniform(gap_lo, gap_hi, int((t[-1] - t[0]) / gap_lo) + 3)
    return t[0] - gap_hi + np.cumsum(gaps)


def _gate(t, onsets, lengths, attack=0.005, tau=None):
    """Envelope of events at `onsets`, each lengths[i] s long, linear attack, optional exponential decay.
    Returns (envelope, seconds since the latest onset)."""
    onsets = np.asarray(onsets, np.float32)
    i = np.maximum(np.searchsorted(onsets, t, side="right") - 1, 0)
    since = t - onsets[i]
    env = np.clip(since / attack, 0.0, 1.0) * (since < np.broadcast_to(lengths, onsets.shape)[i])
    return (env * np.exp(-since / tau) if tau else env), since


# --- the ten class synthesizers: (t, sr, params, rng) -> signal --------------------------------

def _air_conditioner(t, sr, p, rng):  # steady harmonic hum over low broadband noise
    f0 = 55 * p["pitch"] * (1 + 0.003 * np.sin(2 * np.pi * 0.2 * t))
    return _tones(f0, sr, 8, 1.0) + 0.7 * _noise(rng, t.size, sr, 1.0, 40, 1500 * p["pitch"])


def _car_horn(t, sr, p, rng):  # short two-note beeps
    on = _onsets(rng, t, 0.25 / p["rate"], 1.0 / p["rate"])
    env, _ = _gate(t, on, rng.uniform(0.12, 0.5, on.size))
    f0 = np.full(t.size, 400 * p["pitch"])
    return env * (_tones(f0, sr, 8, 0.7) + _tones(1.26 * f0, sr, 8, 0.7))


def _children_playing(t, sr, p, rng):  # babble: gliding voices and band noise, syllable-rate AM
    am = np.maximum(0, sum(np.sin(2 * np.pi * rng.uniform(2, 7) * p["rate"] * t + rng.uniform(0, 7))
                           for _ in range(3)))
    voices = sum(_tones(300 * p["pitch"] * 2 ** rng.uniform(-0.4, 0.4)
                        * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)), sr, 6, 1.2) for _ in range(3))
    return am * (voices + 0.5 * _noise(rng, t.size, sr, 0.5, 300, 4000))


def _dog_bark(t, sr, p, rng):  # short pitched noisy bursts with a falling pitch
    on = _onsets(rng, t, 0.3 / p["rate"], 1.2 / p["rate"])
    env, since = _gate(t, on, rng.uniform(0.08, 0.25, on.size), tau=0.08)
    f0 = 550 * p["pitch"] * (1 - 0.4 * np.minimum(since / 0.25, 1))
    return env * (_tones(f0, sr, 8, 1.0) + 0.6 * _noise(rng, t.size, sr, 0.0, 300, 3500))


def _drilling(t, sr, p, rng):  # high broadband noise and a whine, fast amplitude modulation
    am = 0.55 + 0.45 * np.sin(2 * np.pi * 45 * p["rate"] * t)
    return am * (_noise(rng, t.size, sr, 0.0, 1000 * p["pitch"], 12000)
                 + 0.5 * _tones(np.full(t.size, 1800 * p["pitch"]), sr, 3, 1.0))


def _engine_idling(t, sr, p, rng):  # low rumble: many harmonics of a firing rate, low noise
    f0 = np.full(t.size, 30 * p["pitch"])
    return (1 + 0.4 * np.sin(np.pi * f0 * t)) * _tones(f0, sr, 12, 0.6) + 0.8 * _noise(rng, t.size, sr, 2.0, 20, 800)


def _gun_shot(t, sr, p, rng):  # one or two impulsive bangs with a reverberant tail
    on = np.sort(t[0] + rng.uniform(0, 0.7, rng.integers(1, 3)) * (t[-1] - t[0]))
    bang, _ = _gate(t, on, 9.0, attack=0.001, tau=0.05 / p["rate"])
    tail, _ = _gate(t, on, 9.0, attack=0.01, tau=0.4)
    return (bang + 0.15 * tail) * _noise(rng, t.size, sr, 0.5, 50, 9000)


def _jackhammer(t, sr, p, rng):  # periodic impulses, switched on and off
    rate = 14 * p["rate"]
    on = np.sin(2 * np.pi * 0.3 * p["rate"] * t + 7 * p["variant"]) > -0.6
    return on * np.exp(-((t * rate) % 1.0) / (rate * 0.015)) * _noise(rng, t.size, sr, 0.3, 80, 6000)


def _siren(t, sr, p, rng):  # frequency sweeps: a wail or a hi-lo two-tone
    if p["variant"] < 0.5:
        f = 900 * p["pitch"] * (1 + 0.35 * np.sin(2 * np.pi * 0.4 * p["rate"] * t))
    else:
        f = 900 * p["pitch"] * np.where((1.5 * p["rate"] * t) % 1 < 0.5, 1.0, 0.75)
    return _tones(f, sr, 4, 1.5)


def _street_music(t, sr, p, rng):  # a chord sequence on the beat, with a kick drum
    beat, roots = 0.5 / p["rate"], np.array([0, 5, 7, 3, 10, 0, 8, 5])
    root = 220 * p["pitch"] * 2 ** (roots[(np.floor(t / (2 * beat)).astype(int) + int(8 * p["variant"])) % 8] / 12)
    since = t % beat
    chord = sum(_tones(root * 2 ** (s / 12), sr, 5, 1.5) for s in (0, 4, 7))
    return np.exp(-since / (0.6 * beat)) * chord + 1.5 * np.exp(-since / 0.05) * np.sin(2 * np.pi * 55 * t)


SYNTHS = (_air_conditioner, _car_horn, _children_playing, _dog_bark, _drilling,
          _engine_idling, _gun_shot, _jackhammer, _siren, _street_music)


def source_params(rng):
    """What all clips of one source recording share: variation (pitch, rate, level, SNR) and fingerprint (sig_*)."""
    return dict(pitch=2 ** rng.uniform(-0.5, 0.5), rate=2 ** rng.uniform(-0.4, 0.4), level=rng.uniform(0.1, 0.9),
                snr_db=rng.uniform(6, 24), variant=rng.random(), delay=int(rng.integers(0, 30)),
                side_gain=rng.uniform(0.6, 1.0), sig_freq=150 * 2 ** rng.uniform(0, 4.5),
                sig_colour=rng.uniform(-1, 2))


def synth_clip(kind, n, sr, rng, source, *, signature=0.0, start=0.0, channels=1, salience=1):
    """One clip of synthesizer `kind` (class index, taken mod 10): float32 [n] (mono) or [n, channels].
    `source` comes from `source_params`; `start` is the clip's time in the source recording; salience 2
    (background) lowers the SNR; `signature` in 0..1 mixes in the source's fingerprint."""
    t = np.float32(start) + np.arange(n, dtype=np.float32) * np.float32(1 / sr)
    p = dict(source, pitch=source["pitch"] * 2 ** rng.normal(0, 0.02))
    x = SYNTHS[kind % 10](t, sr, p, rng)
    x = x / (np.abs(x).max() + 1e-9)
    colour = (1 - signature) * rng.uniform(-1, 2) + signature * source["sig_colour"]
    x = x + 0.3 * 10 ** (-(source["snr_db"] - 10 * (salience - 1)) / 20) * _noise(rng, n, sr, colour)
    if signature:
        x = x + 0.1 * signature * np.sin(np.float32(2 * np.pi * min(source["sig_freq"], 0.4 * sr) / sr) * np.arange(n, dtype=np.float32))
    x = x / (np.abs(x).max() + 1e-9) * min(0.99, source["level"] * 2 ** rng.normal(0, 0.1))
    if channels == 2:
        d = min(source["delay"], n)
        x = np.stack([x, source["side_gain"] * np.concatenate([np.zeros(d), x[:n - d]])], axis=1)
    return x.astype(np.float32)


# --- writing ----------------------------------------------------------------------------------

def _frames(duration, sr, channels, subtype):
    """Frames for a clip; IMA ADPCM is cut to whole blocks (libsndfile pads the last block with decoder junk)."""
    n = max(1, round(duration * sr))
    if subtype == "IMA_ADPCM":  # libsndfile's block size: 256..2048 bytes by sr * channels
        align = 256 if sr * channels < 12000 else 512 if sr * channels < 23000 else 1024 if sr * channels < 44000 else 2048
        block = (align - 4 * channels) * 2 // channels + 1
        n = max(block, n // block * block)
    return n


def _write_clip(job):
    """Render one job (a dict made by the writers) and write it; FLOAT WAVs get their PEAK timestamp zeroed."""
    x = synth_clip(job["kind"], job["n"], job["sr"], np.random.default_rng(job["key"]), job["source"],
                   signature=job["signature"], start=job["start"], channels=job["channels"], salience=job["salience"])
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


def write_us8k(root, counts, *, seed=0, formats="mixed", max_duration=4.0, min_duration=1.0,
               clips_per_source=4, signature=0.0, classes=US8K_CLASSES, workers=1, progress=False):
    """Write an UrbanSound8K-layout dataset; counts: {(class_id, fold): clips} or an int for every cell.
    Returns the metadata DataFrame (also written to metadata/UrbanSound8K.csv)."""
    root, rng = Path(root), np.random.default_rng(seed)
    if isinstance(counts, int):
        counts = {(c, f): counts for c in range(len(classes)) for f in range(1, 11)}
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
            jobs.append(dict(path=str(root / "audio" / f"fold{fold}" / name), kind=c, n=n, sr=sr, channels=channels,
                             subtype=subtype, source=source, signature=signature, start=t, salience=salience,
                             key=[seed, int(fsid), j]))
            t += n / sr
    _write_all(jobs, workers, progress)
    meta = pd.DataFrame(rows, columns=US8K_COLUMNS)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    return meta


def _build_once(root, build):
    """Reuse root if it has .complete; else build(tmp) in a temporary sibling, rename it to root, mark .complete."""
    root = Path(root)
    if (root / ".complete").exists():
        return pd.read_csv(root / "metadata" / "UrbanSound8K.csv")
    for stale in root.parent.glob(f".{root.name}.partial-*"):  # left by a killed run: never trusted
        shutil.rmtree(stale)
    if root.exists():  # unfinished (killed between rename and marker): rebuild, but only our own layout
        if set(os.listdir(root)) - {"metadata", "audio"}:
            raise FileExistsError(f"{root} exists, is not a finished synthetic dataset and holds other files")
        shutil.rmtree(root)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    root.parent.mkdir(parents=True, exist_ok=True)
    meta = build(tmp)
    os.replace(tmp, root)
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
    """A full-size UrbanSound8K replica (8,732 clips, real fold/class sizes and format mix), built once like make_demo."""
    return _build_once(root, lambda tmp: write_us8k(tmp, replica_counts(seed), seed=seed, formats="mixed",
                                                    signature=signature, workers=workers or os.cpu_count() or 1,
                                                    progress=progress))


def _crc(text):
    return zlib.crc32(text.encode())


def write_folder_dataset(root, spec, *, seed=0, ext="wav", signature=0.0, sr=22050, duration=1.0):
    """Write <root>/<class>/<stem>.<ext> for spec {class: [stems]}; class i uses synthesizer i % 10.
    A stem's group is its prefix before "_" (alice_001 -> alice); a group shares one fingerprint across its
    files, mixed in with `signature` (a float, or {group: strength}). Returns DataFrame[path, label, group]."""
    rows, jobs = [], []
    for c, (label, stems) in enumerate(spec.items()):
        for stem in stems:
            group = stem.split("_")[0]
            source = source_params(np.random.default_rng([seed, c, _crc(group)]))
            fingerprint = source_params(np.random.default_rng([seed, _crc(group)]))
            source.update(sig_freq=fingerprint["sig_freq"], sig_colour=fingerprint["sig_colour"])
            path = str(Path(root) / label / f"{stem}.{ext}")
            strength = signature.get(group, 0.0) if isinstance(signature, Mapping) else signature
            jobs.append(dict(path=path, kind=c, n=round(duration * sr), sr=sr, channels=1, subtype=None, source=source,
                             signature=strength, start=0.0, salience=1, key=[seed, c, _crc(stem)]))
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
            jobs.append(dict(path=path, kind=g, n=round(duration * sr), sr=sr, channels=1, subtype=None,
                             source=source_params(rng), signature=0.0, start=0.0, salience=1, key=[seed, g, i]))
            rows.append((path, genre))
    _write_all(jobs)
    return pd.DataFrame(rows, columns=["path", "label"])
