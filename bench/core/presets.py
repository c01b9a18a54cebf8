"""Presets: the systems the common tutorials teach, reproduced faithfully, and a strong baseline.

A preset is a partial config applied over the defaults, before --config and --set. Each names its
source; `python cli.py presets` lists them. Every preset runs under foldbench's honest folds, so
their scores compare with each other, not with the tutorials' own (mostly random 80/20) figures.
"""

from __future__ import annotations

from typing import Any

from bench.core.config import ConfigError, RunConfig, merge

NO_AUGMENT = {"time_shift": 0.0, "freq_masks": 0, "time_masks": 0}

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "audio": {"sample_rate": 44100, "channels": 2, "duration": 4.0},
        "features": {"n_mels": 64, "n_fft": 1024, "hop_length": 512, "top_db": 80.0},
        "augment": {
            "time_shift": 0.4,
            "freq_masks": 2,
            "freq_mask_width": 0.1,
            "time_masks": 2,
            "time_mask_width": 0.1,
        },
        "model": {"name": "tutorial_cnn"},
        "train": {"lr": 1e-3, "max_lr": 1e-3, "anneal": "linear", "batch_size": 16},
    },
    "seed-librosa-cnn": {
        "audio": {"sample_rate": 22050, "channels": 1, "duration": 4.0},
        "features": {
            "frontend": "logmel_max",
            "n_mels": 128,
            "n_fft": 2048,
            "hop_length": 512,
            "top_db": 80.0,
            "mel_scale": "slaney",
            "mel_norm": "slaney",
        },
        "augment": NO_AUGMENT,
        "model": {"name": "librosa_cnn"},
        "train": {"optimizer": "adam", "schedule": "constant", "lr": 1e-3, "batch_size": 32, "epochs": 10},
    },
    "seed-gtzan-vit": {
        "audio": {"sample_rate": 22050, "channels": 1, "duration": 4.0},
        "features": {
            "frontend": "logmel_max",
            "n_mels": 128,
            "n_fft": 2048,
            "hop_length": 512,
            "top_db": 80.0,
            "image_size": 64,
        },
        "augment": NO_AUGMENT,
        "model": {"name": "vit", "params": {"image_size": 64, "patch_size": 16, "width": 128, "depth": 4, "heads": 4}},
        "train": {
            "optimizer": "adam",
            "schedule": "plateau",
            "lr": 1e-3,
            "plateau_factor": 0.3,
            "plateau_patience": 3,
            "batch_size": 32,
            "epochs": 30,
        },
    },
    "seed-gtzan-cnn": {
        "audio": {"sample_rate": 22050, "channels": 1, "duration": 5.0},
        "features": {"frontend": "linear_db", "n_fft": 2048, "hop_length": 2048 - 128, "image_size": 64},
        "augment": NO_AUGMENT,
        "model": {"name": "keras_cnn"},
        "train": {
            "optimizer": "sgd",
            "momentum": 0.9,
            "schedule": "constant",
            "lr": 0.01,
            "batch_size": 8,
            "epochs": 50,
        },
    },
    # Mixup is off and dropout light: at the seed's 20 epochs, mixup 0.2 with PANNs' dropout
    # (0.2/0.5) underfit (demo splits 1-2: 0.55 and 0.72 against 0.87 and 0.88 without).
    "strong": {
        "audio": {"sample_rate": 22050, "channels": 1, "duration": 4.0},
        "features": {"n_mels": 64, "n_fft": 1024, "hop_length": 512, "top_db": 80.0},
        "augment": {
            "time_shift": 0.4,
            "freq_masks": 2,
            "freq_mask_width": 0.15,
            "time_masks": 2,
            "time_mask_width": 0.1,
        },
        "model": {"name": "strong", "params": {"width": 16, "depth": 4, "dropout": 0.1, "head_dropout": 0.2}},
        "train": {
            "optimizer": "adamw",
            "weight_decay": 0.01,
            "schedule": "onecycle",
            "max_lr": 3e-3,
            "anneal": "cos",
            "batch_size": 32,
            "mixup": 0.0,
        },
    },
}

SOURCES: dict[str, str] = {
    "seed": "the torchaudio UrbanSound8K tutorial pipeline: 44.1 kHz stereo 4 s, 64 mels, time shift "
    "40 %, 2+2 SpecAugment masks of 10 %, a 4-block CNN, Adam + OneCycleLR",
    "seed-librosa-cnn": "the librosa folder-dataset tutorial: 22.05 kHz mono, 128 Slaney mels, "
    "power_to_db(ref=max), a 2-conv CNN, Adam 1e-3, batch 32, 10 epochs",
    "seed-gtzan-vit": "the ViT-on-Mel-images GTZAN tutorial, CPU-sized (the tutorial's: 480 px, patch "
    "16, width 768, depth 12; set model.params.*); ReduceLROnPlateau(0.3, 3) on "
    "validation accuracy (the tutorial steps it on training accuracy), 30 epochs",
    "seed-gtzan-cnn": "the Keras GTZAN spectrogram-image CNN: first 5 s mono, matplotlib specgram "
    "(NFFT 2048, overlap 128) in dB, 64x64, SGD 0.01 momentum 0.9, batch 8, 50 epochs",
    "strong": "a PANNs-style CNN (Kong et al. 2020) at CPU width (16-128 channels), AdamW + "
    "OneCycle (cosine, peak 3e-3), SpecAugment and time shift; mixup available (off)",
}


def apply_preset(cfg: RunConfig, name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return merge(cfg, PRESETS[name], f"preset {name}")


def render_presets() -> str:
    """`python cli.py presets`: each preset with its source."""
    return "presets (--preset, suite --presets):\n" + "\n".join(f"  {name:<17} {SOURCES[name]}" for name in PRESETS)
