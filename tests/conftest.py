"""Shared fixtures: small generated datasets in the real layouts, and a fast config for them."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from bench.core.config import RunConfig, merge
from bench.data.synth import US8K_CLASSES, write_us8k

# Small and quick: 8 kHz, 1 s clips, 32 Mel bands, a few epochs.
FAST = {
    "audio.sample_rate": 8000,
    "audio.duration": 1.0,
    "features.n_fft": 256,
    "features.hop_length": 128,
    "features.n_mels": 32,
    "train.epochs": 3,
    "train.batch_size": 8,
    "train.device": "cpu",
    "tracking.mlflow": False,
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Generated data and waveform caches go under the test's tmp_path, never ~/.cache."""
    monkeypatch.setenv("FOLDBENCH_CACHE", str(tmp_path / "foldbench-cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' models are tiny: one torch thread is as fast, and steady when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fast_config(tmp_path: Path, root: Path | None = None, name: str = "test", **overrides) -> RunConfig:
    """A RunConfig for the tiny datasets, with its runs and cache inside `tmp_path`."""
    cfg = merge(
        RunConfig(),
        {
            **FAST,
            "name": name,
            "runs_dir": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"),
            "dataset.name": "us8k",
            "dataset.root": str(root) if root else None,
        },
    )
    return merge(cfg, overrides)


@pytest.fixture(scope="session")
def tiny_us8k_master(tmp_path_factory) -> Path:
    """UrbanSound8K layout, 3 classes x 10 folds x 3 clips, the real format mix, 0.5-1 s clips."""
    root = tmp_path_factory.mktemp("us8k") / "UrbanSound8K"
    write_us8k(
        root,
        3,
        seed=1,
        formats="mixed",
        min_duration=0.5,
        max_duration=1.0,
        classes=US8K_CLASSES[:3],
        clips_per_source=2,
    )
    return root


@pytest.fixture
def tiny_us8k(tiny_us8k_master, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    root = tmp_path / "UrbanSound8K"
    shutil.copytree(tiny_us8k_master, root)
    return root


class FailingDisk:
    """A file whose reads fail with EIO after `good_reads` reads (the header), as a dying disk's do."""

    def __init__(self, raw, good_reads: int):
        self.raw, self.reads, self.good_reads = raw, 0, good_reads

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.raw.close()

    def readinto(self, buf):
        self.reads += 1
        if self.reads > self.good_reads:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self.raw.readinto(buf)
