"""`python cli.py speed`: how fast each stage of the pipeline runs on this machine, beside the targets.

The stages a kfold run meets: the waveform cache (built into a fresh temporary folder, so really
measured), the log-mel bank, training steps (the loop's own `training_batch` + `train_step`),
evaluation; then the same step on random tensors (the model alone, no data handling) and the
common tutorials' per-item pipeline (`PerItemDataset`, DataLoader batch 16) training the same model.
Loops are time-boxed and repeated, alternating, best kept. Figures and targets are printed side by
side with the full UrbanSound8K run times they imply; nothing here asserts a target.
"""

from __future__ import annotations

import functools
import itertools
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from bench.data.audio import n_samples
from bench.data.cache import load_waveforms
from bench.core.config import AudioConfig, AugmentConfig, FeatureConfig, RunConfig, merge
from bench.data.datasets import create_dataset
from bench.drivers.prepare import check_config
from bench.core.threads import apply as set_threads
from bench.features.bank import _BANKS, feature_bank, log_mel
from bench.train.fit import band_stats, predict, resolve_device, setup_training, train_step, training_batch

US8K_CLIPS, US8K_FOLDS = 8732, 10  # the full dataset the estimates are for
GB = 1e9


class PerItemDataset(torch.utils.data.Dataset):
    """The common tutorials' input pipeline, for comparison: at every step each clip is decoded
    (soundfile), rechannelled, resampled (the kernel rebuilt per clip, as `Resample(sr, new)(x)` in
    `__getitem__` does), padded/trimmed, rolled in time, turned into a log-mel and masked."""

    def __init__(self, paths, labels, audio: AudioConfig, feat: FeatureConfig, aug: AugmentConfig):
        self.paths, self.labels, self.audio = list(paths), list(labels), audio
        self.length = n_samples(audio)
        self.max_shift = int(aug.time_shift * self.length)
        self.mel = log_mel(audio, feat)
        frames = self.length // feat.hop_length + 1
        self.masks = [T.FrequencyMasking(max(1, int(aug.freq_mask_width * feat.n_mels)))] * aug.freq_masks + [
            T.TimeMasking(max(1, int(aug.time_mask_width * frames)))
        ] * aug.time_masks

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        data, rate = sf.read(self.paths[i], dtype="float32", always_2d=True)
        x = torch.from_numpy(data.T.copy())
        if x.shape[0] != self.audio.channels:
            x = x.mean(dim=0, keepdim=True).expand(self.audio.channels, -1).contiguous()
        if rate != self.audio.sample_rate:
            x = AF.resample(x, rate, self.audio.sample_rate)
        x = torch.nn.functional.pad(x[:, : self.length], (0, max(0, self.length - x.shape[1])))
        if self.max_shift:
            x = torch.roll(x, int(torch.randint(-self.max_shift, self.max_shift + 1, ())), dims=1)
        with torch.no_grad():
            spec = self.mel(x)
            for mask in self.masks:
                spec = mask(spec, mask_value=float(spec.mean()))
        return spec, self.labels[i]


class PeakMemory(threading.Thread):
    """Peak anonymous resident memory of this process (Linux: RssAnon + RssShmem, sampled every
    20 ms): what it holds beyond the memory-mapped cache, whose pages are file-backed."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = 0, threading.Event()

    def sample(self) -> None:
        try:
            with open("/proc/self/status") as f:
                now = sum(int(line.split()[1]) * 1024 for line in f if line.startswith(("RssAnon:", "RssShmem:")))
            self.peak = max(self.peak, now)
        except (OSError, ValueError, IndexError):
            pass

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.sample()

    def stop(self) -> int:
        self.done.set()
        self.join()
        self.sample()
        return self.peak


def max_rss() -> int:
    """Peak resident memory of this process, memory-mapped pages included (bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, device: torch.device, time_box: float, warmup: int = 1, min_calls: int = 2) -> float:
    """Items per second of `step()` (which returns how many items it handled), time-boxed."""
    for _ in range(warmup):
        step()
    _sync(device)
    items, calls, start = 0, 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < time_box:
        items += step()
        calls += 1
    _sync(device)
    return items / (time.perf_counter() - start)


def _cycle(idx: torch.Tensor, size: int):
    """Endless batches of `size` from shuffled passes over `idx`."""
    size = min(size, len(idx))
    while True:
        order = idx[torch.randperm(len(idx)).to(idx.device)]
        for s in range(0, len(order) - size + 1, size):
            yield order[s : s + size]


def _load() -> float:
    """The 1-minute load average: above the CPU count, other processes shared the machine."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine(device: torch.device, threads: str = "") -> dict:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), cpu
        )
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_setup": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "torch": torch.__version__,
        "device": str(device),
        "load_average": _load(),
        **gpu,
    }


def use_replica(cfg: RunConfig, root: str | Path) -> RunConfig:
    """`cfg` pointed at a full-size UrbanSound8K replica in `root`, generated there first if missing."""
    from bench.data.synth import make_replica

    if not (Path(root).expanduser() / ".complete").exists():
        print(f"generating the UrbanSound8K replica (8,732 clips, once) in {root}", file=sys.stderr)
    make_replica(Path(root).expanduser())
    return merge(cfg, {"dataset.name": "us8k", "dataset.root": str(Path(root).expanduser())}, "--replica")


def loop_bodies(cfg: RunConfig, dataset, waves, bank: torch.Tensor, device: torch.device) -> dict:
    """One call of each measured loop; each returns how many clips it handled. Each trains its own
    copy of the model, built by the training loop's own `setup_training`."""
    B, ok = cfg.train.batch_size, np.flatnonzero(waves.ok)
    labels = dataset.table["label"].to_numpy().copy()
    n_classes, shape = len(dataset.classes), tuple(bank.shape[1:])
    idx, y = torch.as_tensor(ok, device=device), torch.as_tensor(labels, device=device)
    mean, std = band_stats(bank, idx)
    torch.manual_seed(cfg.train.seed)
    model, augment, opt, sched = setup_training(cfg, shape, n_classes, 10**6, device)
    pure_model, _, pure_opt, pure_sched = setup_training(cfg, shape, n_classes, 10**6, device)
    tut_model, _, tut_opt, tut_sched = setup_training(cfg, shape, n_classes, 10**6, device)
    x_rand, y_rand = torch.randn(B, *shape, device=device), torch.randint(n_classes, (B,), device=device)
    items = PerItemDataset(dataset.table["path"].iloc[ok], labels[ok], cfg.audio, cfg.features, cfg.augment)
    loader = torch.utils.data.DataLoader(items, batch_size=16, shuffle=True, num_workers=0)
    train_batches, eval_batches, tut_batches = (
        _cycle(idx, B),
        _cycle(idx, 256),
        itertools.chain.from_iterable(itertools.repeat(loader)),
    )

    def training() -> int:  # the kfold loop's step: gather, normalise, augment; forward, backward, step
        batch = next(train_batches)
        train_step(model, opt, sched, training_batch(bank, batch, mean, std, augment), y[batch])
        return len(batch)

    def model_compute() -> int:  # the same step on a ready random batch: no data handling at all
        train_step(pure_model, pure_opt, pure_sched, x_rand, y_rand)
        return B

    def per_item() -> int:  # the tutorials' loop: a DataLoader batch, normalised by its own statistics
        x, target = next(tut_batches)
        x = x.to(device)
        train_step(tut_model, tut_opt, tut_sched, (x - x.mean()) / x.std(), target.to(device))
        return len(target)

    def evaluation() -> int:
        batch = next(eval_batches)
        predict(model, bank, batch, mean, std)
        return len(batch)

    return {"training": training, "model_compute": model_compute, "per_item": per_item, "evaluation": evaluation}


def run_speed(
    cfg: RunConfig,
    *,
    time_box: float = 10.0,
    repeats: int = 2,
    threads: int | None = None,
    progress: bool = True,
    log=None,
) -> dict:
    """Measure every stage on `cfg`'s dataset; the figures, targets and estimates as a dict.
    What it is doing goes to `log` (default: stderr, so that stdout holds the table only)."""
    log = log or functools.partial(print, file=sys.stderr, flush=True)
    check_config(cfg)  # speed builds its own cache in a fresh folder (that build is what it times)
    load_start, fig = _load(), {}
    setup = str(set_threads(threads or 0))  # as kfold: auto (0) takes the free cores, measured now
    device = resolve_device(cfg.train.device)
    dataset = create_dataset(cfg.dataset, cfg.cache_dir)
    Path(cfg.cache_dir).expanduser().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="speed-", dir=Path(cfg.cache_dir).expanduser()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    mem = PeakMemory()
    mem.start()
    try:
        log(f"cache build: {len(dataset.table):,} clips into a fresh {tmp}")
        start = time.perf_counter()
        waves = load_waveforms(dataset, cfg.audio, tmp, progress=progress)
        fig["cache_build_s"] = time.perf_counter() - start
        fig["cache_build"] = len(waves) / fig["cache_build_s"]
        fig["cache_gb"] = sum(f.stat().st_size for f in waves.path.glob("*.npy")) / GB

        log("feature bank")
        _BANKS.clear()  # a bank left by an earlier call in this process would not be measured
        start = time.perf_counter()
        bank = feature_bank(waves, cfg.audio, cfg.features, device, progress=progress)
        _sync(device)
        fig["feature_bank"] = len(waves) / (time.perf_counter() - start)

        loops = loop_bodies(cfg, dataset, waves, bank, device)
        for r in range(repeats):  # alternating, so that a busy neighbour slows them alike
            for name in ("training", "model_compute", "per_item"):
                log(f"{name} (round {r + 1}/{repeats}, {time_box:g} s)")
                fig[name] = max(fig.get(name, 0.0), rate(loops[name], device, time_box))
        log("evaluation")
        fig["evaluation"] = rate(loops["evaluation"], device, time_box / 2)
        fig["peak_host_anon_gb"] = (mem.stop() or max_rss()) / GB
        fig["peak_host_gb"] = max_rss() / GB
        if device.type == "cuda":
            fig["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / GB
    finally:
        mem.done.set()
        shutil.rmtree(tmp, ignore_errors=True)

    fig["per_item_ratio"] = fig["training"] / fig["per_item"]
    fig["compute_ratio"] = fig["training"] / fig["model_compute"]
    return {
        "dataset": dataset.name,
        "clips": len(dataset.table),
        "machine": machine(device, setup),
        "load_start": load_start,
        "config": {k: asdict(getattr(cfg, k)) for k in ("audio", "features", "augment", "model", "train")},
        "figures": fig,
        "targets": targets(fig, cfg, device, len(dataset.table)),
        "estimates": estimates(fig, cfg),
    }


def targets(fig: dict, cfg: RunConfig, device: torch.device, clips: int) -> dict:
    """The issue's targets that apply to this run: {figure: (target text, passed or None)}."""
    out = {
        "compute_ratio": (">= 0.75 (data handling not the bottleneck)", fig["compute_ratio"] >= 0.75),
        "per_item_ratio": (">= 5x", fig["per_item_ratio"] >= 5) if device.type == "cpu" else ("reported", None),
    }
    full = clips == US8K_CLIPS
    seconds = fig["cache_build_s"] * (1 if full else US8K_CLIPS / clips)
    out["cache_build"] = ("< 60 s for 8,732 clips" + ("" if full else f" (projected {seconds:.0f} s)"), seconds < 60)
    if (cfg.audio.sample_rate, cfg.audio.channels, cfg.audio.duration) == (22050, 1, 4.0):
        size = fig["cache_gb"] * (1 if full else US8K_CLIPS / clips)
        out["cache_gb"] = ("<= 1.6 GB for 8,732 clips" + ("" if full else f" (projected {size:.2f})"), size <= 1.6)
    out["peak_host_anon_gb"] = (
        "<= 4 GB beyond the map (full-size kfold)",
        fig["peak_host_anon_gb"] <= 4 if full else None,
    )
    if device.type == "cuda":
        out["training"] = (">= 20,000 clips/s (H100-class)", fig["training"] >= 20000)
    return out


def estimates(fig: dict, cfg: RunConfig, trials: int = 50) -> dict:
    """Hours for a full UrbanSound8K 10-fold run and a `trials`-trial tune, from the throughputs:
    per split, epochs x (8/10 of the clips trained + 1/10 validated), then 1/10 tested; plus one
    cache build and one feature bank. A tune without pruning trains `trials` such runs (no test
    fold) and builds one bank per trial (each may be a new feature config)."""
    train_s = cfg.train.epochs * (0.8 * US8K_CLIPS / fig["training"] + 0.1 * US8K_CLIPS / fig["evaluation"])
    test_s = 0.1 * US8K_CLIPS / fig["evaluation"]
    cache_s, bank_s = US8K_CLIPS / fig["cache_build"], US8K_CLIPS / fig["feature_bank"]
    return {
        "kfold_hours": (cache_s + bank_s + US8K_FOLDS * (train_s + test_s)) / 3600,
        "tune_hours": (cache_s + trials * (bank_s + US8K_FOLDS * train_s)) / 3600,
        "tune_trials": trials,
        "epochs": cfg.train.epochs,
    }


ROWS = [  # figure, label, unit, format
    ("cache_build", "cache build (decode+mix+resample+pad)", "clips/s", "{:,.0f}"),
    ("cache_build_s", "cache build, whole dataset", "s", "{:,.1f}"),
    ("cache_gb", "cache size", "GB", "{:.3f}"),
    ("feature_bank", "feature bank (log-mel)", "clips/s", "{:,.0f}"),
    ("training", "training (gather+augment+fwd+bwd+step)", "clips/s", "{:,.0f}"),
    ("evaluation", "evaluation", "clips/s", "{:,.0f}"),
    ("model_compute", "model compute (random input)", "clips/s", "{:,.0f}"),
    ("per_item", "per-item tutorial pipeline (batch 16)", "clips/s", "{:,.1f}"),
    ("per_item_ratio", "training / per-item", "x", "{:.1f}"),
    ("compute_ratio", "training / model compute", "", "{:.2f}"),
    ("peak_host_gb", "peak host memory (all resident)", "GB", "{:.2f}"),
    ("peak_host_anon_gb", "peak host memory beyond the map", "GB", "{:.2f}"),
    ("peak_gpu_gb", "peak GPU memory", "GB", "{:.2f}"),
]


def render(result: dict) -> str:
    m, c = result["machine"], result["config"]
    a, f, t = c["audio"], c["features"], c["train"]
    load = f"load average {result['load_start']:.1f} at the start, {m['load_average']:.1f} at the end"
    if max(result["load_start"], m["load_average"]) > m["cpus"]:
        load += " (more than the CPUs: a shared machine, so the figures are low and noisy)"
    lines = [
        f"foldbench speed: {result['dataset']} ({result['clips']:,} clips); {a['sample_rate']} Hz, "
        f"{a['channels']} ch, {a['duration']:g} s; {f['n_mels']} mels, n_fft {f['n_fft']}, hop "
        f"{f['hop_length']}; {c['model']['name']}, batch {t['batch_size']}",
        f"machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, device {m.get('gpu', m['device'])}",
        f"{m.get('thread_setup') or 'torch threads: ' + str(m['torch_threads'])}; {m.get('interop_threads', '?')} "
        f"inter-op; OMP_WAIT_POLICY {m.get('omp_wait_policy') or 'unset'}",
        load,
        "",
        f"{'figure':<42}{'value':>12}  {'unit':<8}{'target':<48}{'':>4}",
        "-" * 116,
    ]
    for key, label, unit, fmt in ROWS:
        if key not in result["figures"]:
            continue
        target, passed = result["targets"].get(key, ("", None))
        mark = "" if passed is None else ("ok" if passed else "MISS")
        lines.append(f"{label:<42}{fmt.format(result['figures'][key]):>12}  {unit:<8}{target:<48}{mark:>4}")
    e = result["estimates"]
    lines += [
        "",
        f"estimated on this machine, full UrbanSound8K ({US8K_CLIPS:,} clips, {e['epochs']} epochs "
        f"per split): 10-fold run {e['kfold_hours']:.1f} h; {e['tune_trials']}-trial tune over 10 "
        f"splits, no pruning: {e['tune_hours']:.1f} h",
    ]
    return "\n".join(lines)
