"""tune's search space: config key -> choices (a list), a range ({low, high[, log][, step]}), or
None (off); the defaults, YAML overrides, checks before a study starts, and Optuna's suggestions.

`load_space(file)` -> `check_space(space, cfg)` (refuses what can never work, before anything is
written) -> per trial `suggest(trial, space)` -> `apply_params(cfg, params)` (the hop length resolved
against the trial's own n_fft).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import optuna
import yaml

from bench.core.config import ConfigError, RunConfig, flatten, merge
from bench.features.bank import FeatureError, check_features, max_mels
from bench.features.frontends import FRONTENDS, uses_mel
from bench.models import MODELS
from bench.core.runfolder import NOT_RESULT_KEYS

DEFAULT_SPACE: dict[str, Any] = {
    "features.n_mels": [32, 64, 96, 128],  # Mel bands
    "features.n_fft": [512, 1024, 2048],  # FFT size (samples)
    "features.hop_length": ["1/4", "1/2"],  # a fraction of n_fft ("1/4"), or samples (256)
    "augment.freq_masks": {"low": 0, "high": 3},  # SpecAugment frequency masks per clip
    "augment.freq_mask_width": {"low": 0.05, "high": 0.3},  # their max width, fraction of n_mels
    "augment.time_masks": {"low": 0, "high": 3},  # SpecAugment time masks per clip
    "augment.time_mask_width": {"low": 0.05, "high": 0.3},  # their max width, fraction of frames
    "augment.time_shift": {"low": 0.0, "high": 0.5},  # max circular shift, fraction of the clip
    "train.max_lr": None,  # off; e.g. {low: 1.0e-4, high: 1.0e-2, log: true} (OneCycleLR peak)
    "features.frontend": None,  # off; e.g. [logmel, logmel_max] (registered front ends)
}
SEARCHABLE = ("features", "augment", "model", "train")  # audio would rebuild the cache per trial


def load_space(path: str | Path | None = None) -> dict[str, Any]:
    """DEFAULT_SPACE with the entries of a YAML file (dotted keys or sections) replacing its own."""
    space = dict(DEFAULT_SPACE)
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"search space {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"search space {path}: expected a mapping of config keys")
        for key, spec in data.items():
            if isinstance(spec, dict) and "low" not in spec:  # a section: {features: {n_mels: [...]}}
                space.update({f"{key}.{k}": v for k, v in spec.items()})
            else:
                space[key] = spec
    for spec in space.values():
        if isinstance(spec, dict):  # PyYAML reads 1e-4 as a string
            spec.update({b: float(spec[b]) for b in ("low", "high") if isinstance(spec.get(b), str)})
    return {k: ([v] if not isinstance(v, (list, dict)) else v) for k, v in space.items() if v is not None}


def resolve_hop(hop: Any, n_fft: int) -> int:
    """ "1/4" -> n_fft // 4 samples; an int is samples already."""
    return max(1, int(n_fft * Fraction(hop))) if isinstance(hop, str) else int(hop)


def apply_params(cfg: RunConfig, params: dict[str, Any]) -> RunConfig:
    """`cfg` with a trial's suggestions set (the hop length resolved against the trial's n_fft)."""
    params = dict(params)
    hop = params.pop("features.hop_length", None)
    cfg = merge(cfg, params, "search space")
    if hop is not None:
        cfg = merge(cfg, {"features.hop_length": resolve_hop(hop, cfg.features.n_fft)}, "search space")
    return cfg


def check_space(space: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse unknown keys, malformed ranges, values the config rejects, unregistered front ends,
    Mel band counts that no FFT size (and Mel scale) in the space resolves when a Mel front end is
    searched or active, and front ends that cannot work even with the largest FFT; other bad pairs
    are excluded per trial, before training."""
    flat = flatten(cfg)
    for key, spec in space.items():
        if key not in flat or key.split(".")[0] not in SEARCHABLE or key in NOT_RESULT_KEYS:
            raise ConfigError(
                f"search space: {key!r} is not a searchable config key (sections {', '.join(SEARCHABLE)})"
            )
        if isinstance(spec, dict) and (
            set(spec) - {"low", "high", "log", "step"} or not spec.get("low", 0) < spec.get("high", 0)
        ):
            raise ConfigError(
                f"search space: {key}: a range is {{low, high[, log][, step]}} with low < high, got {spec}"
            )
        for value in [spec["low"], spec["high"]] if isinstance(spec, dict) else spec or [None]:
            if key == "features.hop_length":
                value = resolve_hop(value, cfg.features.n_fft)
            if value is None or (key == "model.name" and value not in MODELS):
                raise ConfigError(f"search space: {key}: {value!r} is not a valid choice")
            if key == "features.frontend" and value not in FRONTENDS:
                raise ConfigError(
                    f"search space: {key}: {value!r} is not a registered front end "
                    f"(known: {', '.join(sorted(FRONTENDS))})"
                )
            merge(cfg, {key: value}, f"search space: {key}")
    ffts = space.get("features.n_fft", [cfg.features.n_fft])
    frontends = space.get("features.frontend", [cfg.features.frontend])
    scales = space.get("features.mel_scale", [cfg.features.mel_scale])
    mel_bands = space.get("features.n_mels", [cfg.features.n_mels])
    for n_mels in mel_bands if any(uses_mel(name) for name in frontends) else []:  # else n_mels is unused
        if (
            max(
                max_mels(cfg.audio.sample_rate, n, cfg.features.f_min, cfg.features.f_max, scale)
                for n in ffts
                for scale in scales
            )
            < n_mels
        ):
            raise ConfigError(
                f"search space: features.n_mels={n_mels} leaves empty Mel filters with "
                f"every n_fft in {ffts} at {cfg.audio.sample_rate} Hz; remove it"
            )
    for name in frontends:  # each front end must work with at least one FFT size of the space
        problems = [_problem(cfg, {"features.frontend": name, "features.n_fft": n, "features.n_mels": 1}) for n in ffts]
        if all(problems):
            raise problems[-1]


def _problem(cfg: RunConfig, changes: dict[str, Any]) -> FeatureError | None:
    try:
        check_features(cfg.audio, merge(cfg, changes).features)
    except FeatureError as e:
        return e
    return None


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per space entry, under the config key's own name."""
    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = trial.suggest_categorical(key, spec)
        elif all(isinstance(spec[b], int) and not isinstance(spec[b], bool) for b in ("low", "high")):
            out[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            out[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=spec.get("log", False)
            )
    return out
