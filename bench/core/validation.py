"""`validate`: every field of a `RunConfig` within its range, before anything is read or written.

One small check per section, run in a fixed order (the run's own fields, protocol, audio, features,
augment, training, schedule, model and device, tracking): the first field out of range is refused,
with its key, its value and the rule, said as the `--set` (or flag) that fixes it.
"""

from __future__ import annotations

from typing import Any

from bench.core.config import (
    AudioConfig,
    AugmentConfig,
    ConfigError,
    FeatureConfig,
    ProtocolConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
    plain_name,
)
from bench.core.redact import is_redacted

DEVICES = ("auto", "cpu", "cuda")
ANNEALS = ("linear", "cos")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "constant", "cosine", "plateau")
VALS = ("next", "none")
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")


class FieldError(ConfigError):
    """A field out of its range: the key, its value and the rule, said as a `--set` fix."""

    def __init__(self, key: str, value: Any, rule: str, fix: str | None = None):
        super().__init__(f"{key}={value!r}: {rule}; fix it with {fix or f'--set {key}='}<value>")
        self.key, self.value, self.rule = key, value, rule


def _need(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise FieldError(key, value, rule)


def validate(cfg: RunConfig, flags: dict[str, str] | None = None) -> RunConfig:
    """Refuse any field out of its range, with the key and the rule; returns `cfg`. `flags`: the
    fields the command line set by a flag ({"train.device": "--device"}): their refusal names the
    flag as the fix (`fix it with --device <value>`), not `--set`."""
    try:
        return _validate(cfg)
    except FieldError as e:
        flag = (flags or {}).get(e.key)
        if flag is None:
            raise
        raise FieldError(e.key, e.value, e.rule, f"{flag} ") from None


def _validate(cfg: RunConfig) -> RunConfig:
    _check_run(cfg)
    _check_protocol(cfg.protocol)
    _check_audio(cfg.audio)
    _check_features(cfg.features)
    _check_augment(cfg.augment)
    _check_training(cfg.train, cfg.protocol)
    _check_schedule(cfg.train, cfg.protocol)
    _check_model_and_device(cfg)
    _check_tracking(cfg.tracking)
    return cfg


def _check_run(cfg: RunConfig) -> None:
    """The run's own fields: its name, its folders, the splits to run."""
    if cfg.name is not None:
        plain_name(cfg.name, "--name")
    for key in ("runs_dir", "cache_dir"):
        _need(bool(str(getattr(cfg, key)).strip()), key, getattr(cfg, key), "must be a folder, not empty")
    if cfg.splits is not None:
        _need(
            len(cfg.splits) > 0
            and all(1 <= k <= 10_000 for k in cfg.splits)
            and len(set(cfg.splits)) == len(cfg.splits),
            "splits",
            cfg.splits,
            "give distinct split numbers from 1, or none for all",
        )


def _check_protocol(p: ProtocolConfig) -> None:
    """The fold plan (protocol.seed is checked beside train.seed, in `_check_training`)."""
    _need(p.val in VALS, "protocol.val", p.val, f"must be one of {', '.join(VALS)}")
    _need(p.folds is None or p.folds >= 2, "protocol.folds", p.folds, "needs at least 2 folds")
    _need(1 <= p.repeats <= 100, "protocol.repeats", p.repeats, "must be 1..100 (1: no repeats)")


def _check_audio(a: AudioConfig) -> None:
    _need(1000 <= a.sample_rate <= 384000, "audio.sample_rate", a.sample_rate, "must be 1000..384000 Hz")
    _need(1 <= a.channels <= 8, "audio.channels", a.channels, "must be 1..8")
    _need(0 < a.duration <= 600, "audio.duration", a.duration, "must be > 0 and at most 600 seconds")


def _check_features(f: FeatureConfig) -> None:
    _need(1 <= f.n_mels <= 1024, "features.n_mels", f.n_mels, "must be 1..1024")
    _need(16 <= f.n_fft <= 65536, "features.n_fft", f.n_fft, "must be 16..65536")
    _need(1 <= f.hop_length <= 65536, "features.hop_length", f.hop_length, "must be 1..65536")
    _need(f.f_min >= 0, "features.f_min", f.f_min, "must be >= 0")
    _need(f.f_max is None or f.f_max > f.f_min, "features.f_max", f.f_max, "must be above f_min")
    _need(f.top_db > 0, "features.top_db", f.top_db, "must be > 0 (dB below each clip's peak)")
    _need(f.mel_scale in MEL_SCALES, "features.mel_scale", f.mel_scale, "must be htk or slaney")
    _need(f.mel_norm in MEL_NORMS, "features.mel_norm", f.mel_norm, "must be none or slaney")
    _need(
        f.image_size is None or 8 <= f.image_size <= 1024,
        "features.image_size",
        f.image_size,
        "must be none (no resize) or 8..1024 pixels",
    )


def _check_augment(g: AugmentConfig) -> None:
    _need(0 <= g.time_shift < 1, "augment.time_shift", g.time_shift, "must be in [0, 1)")
    for key in ("freq_masks", "time_masks"):
        _need(0 <= getattr(g, key) <= 100, f"augment.{key}", getattr(g, key), "must be 0..100")
    for key in ("freq_mask_width", "time_mask_width"):
        _need(0 <= getattr(g, key) <= 1, f"augment.{key}", getattr(g, key), "must be in [0, 1]")


def _check_training(t: TrainConfig, p: ProtocolConfig) -> None:
    """Epochs, batch size, the two seeds, and the optimizer."""
    _need(1 <= t.epochs <= 100_000, "train.epochs", t.epochs, "must be 1..100000")
    _need(
        2 <= t.batch_size <= 65536,
        "train.batch_size",
        t.batch_size,
        "must be 2..65536 (BatchNorm cannot train on one clip)",
    )
    _need(0 <= t.seed < 2**31, "train.seed", t.seed, "must be 0..2147483647")
    _need(0 <= p.seed < 2**31, "protocol.seed", p.seed, "must be 0..2147483647")
    for key in ("lr", "max_lr"):
        value = getattr(t, key)
        _need(
            value > 0 and value == value and value != float("inf"), f"train.{key}", value, "must be a positive number"
        )
    _need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _need(t.anneal in ANNEALS, "train.anneal", t.anneal, f"must be one of {', '.join(ANNEALS)}")
    _need(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
    _need(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    _need(
        not t.nesterov or (t.optimizer == "sgd" and t.momentum > 0),
        "train.nesterov",
        t.nesterov,
        "needs train.optimizer=sgd and train.momentum > 0",
    )


def _check_schedule(t: TrainConfig, p: ProtocolConfig) -> None:
    """The learning-rate schedule (plateau needs a validation fold), then mixup."""
    _need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"must be one of {', '.join(SCHEDULES)}")
    _need(0 < t.plateau_factor < 1, "train.plateau_factor", t.plateau_factor, "must be in (0, 1)")
    _need(t.plateau_patience >= 0, "train.plateau_patience", t.plateau_patience, "must be >= 0")
    _need(
        t.schedule != "plateau" or p.val != "none",
        "train.schedule",
        t.schedule,
        "plateau steps on validation accuracy, and protocol.val=none has no validation fold; "
        "use constant, cosine or onecycle, or protocol.val=next",
    )
    _need(0 <= t.mixup <= 10, "train.mixup", t.mixup, "must be in [0, 10] (Beta(alpha, alpha); 0: off)")


def _check_model_and_device(cfg: RunConfig) -> None:
    """model.params' names, then where and on how many threads training runs."""
    t = cfg.train
    _need(
        isinstance(cfg.model.params, dict) and all(isinstance(k, str) and k.isidentifier() for k in cfg.model.params),
        "model.params",
        cfg.model.params,
        "must map parameter names to values",
    )
    _need(t.threads >= 0, "train.threads", t.threads, "must be >= 0 (0: auto, one per free core)")
    _need(
        t.device in DEVICES or t.device.startswith("cuda:") and t.device[5:].isdigit(),
        "train.device",
        t.device,
        "must be auto, cpu, cuda or cuda:N",
    )


def _check_tracking(tr: TrackingConfig) -> None:
    _need(bool(tr.tracking_uri), "tracking.tracking_uri", tr.tracking_uri, "must not be empty")
    _need(
        not (tr.mlflow and is_redacted(tr.tracking_uri)),
        "tracking.tracking_uri",
        tr.tracking_uri,
        "has its password masked (a saved config keeps none): give "
        "--tracking-uri with the password again, or --no-mlflow",
    )
    if tr.experiment is not None:
        _need(bool(tr.experiment.strip()), "tracking.experiment", tr.experiment, "must not be empty")
