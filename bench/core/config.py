"""The run configuration: dataclasses with commented defaults, YAML in and out, overrides, presets.

One `RunConfig` holds everything a run depends on. It is saved as `config.yaml` in the run folder,
flattened (`features.n_mels`, ...) into MLflow params, and loaded back with `--config`. Every
field's range is checked by `bench.core.validation.validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bench.core.redact import redact
from bench.core.errors import FoldbenchError


@dataclass
class DatasetConfig:
    name: str = "demo"  # a registered dataset kind: see `python cli.py datasets list`
    root: str | None = None  # dataset folder; `demo` generates its own under cache_dir
    strict: bool = False  # True: a bad file is an error instead of being quarantined
    group_regex: str | None = None  # groups from file names: a regex with a named group `group`
    groups_csv: str | None = None  # groups from a CSV (path,group), path relative to root
    allow_leaky: bool = False  # True: identical audio in two folds is recorded as leaky, not refused


@dataclass
class ProtocolConfig:
    name: str | None = None  # None: the dataset's own protocol (us8k/demo: predefined folds)
    val: str = "next"  # "next": split k validates on fold k+1 mod n; "none": train on all other folds
    folds: int | None = None  # folds for generated protocols; None: the dataset's default (10, folder: 5)
    seed: int = 0  # seed of generated fold assignments (stratified, random)
    # repeated CV: R fold plans in one run, split (r-1)*n + k = repeat r, fold k; a reshufflable
    # protocol (stratified, random) draws repeat r with seed + r - 1 (repeat 1 = the plan of R=1);
    # fixed folds (predefined, fixed lists) are kept, and only the training seed (seed + split) varies
    repeats: int = 1


@dataclass
class AudioConfig:
    sample_rate: int = 22050  # every clip is resampled to this rate (Hz)
    channels: int = 1  # mixed down (mean) or duplicated to this many channels
    duration: float = 4.0  # seconds; shorter clips are zero-padded, longer ones trimmed


@dataclass
class FeatureConfig:
    n_mels: int = 64  # Mel bands
    n_fft: int = 1024  # FFT size (samples)
    hop_length: int = 512  # hop between frames (samples)
    f_min: float = 0.0  # lowest Mel filter edge (Hz)
    f_max: float | None = None  # highest edge; None = sample_rate / 2
    top_db: float = 80.0  # dB floor below each clip's peak
    frontend: str = "logmel"  # a registered front end: logmel, logmel_max, linear_db (bench/features/frontends.py)
    mel_scale: str = "htk"  # Mel filterbank scale: "htk" (torchaudio's default) or "slaney" (librosa's)
    mel_norm: str | None = None  # Mel filter normalisation: None, or "slaney" (area 1, librosa's default)
    image_size: int | None = None  # None: the map as computed; N: resized to N x N (bilinear), an image


@dataclass
class AugmentConfig:
    time_shift: float = 0.0  # roll each training clip by up to this fraction of its length
    freq_masks: int = 2  # SpecAugment frequency masks per clip
    freq_mask_width: float = 0.1  # max width of each, as a fraction of n_mels
    time_masks: int = 2  # SpecAugment time masks per clip
    time_mask_width: float = 0.1  # max width of each, as a fraction of the frames


@dataclass
class ModelConfig:
    name: str = "tutorial_cnn"  # a registered model: see `python cli.py kfold --help`
    # the model's parameters, e.g. {depth: 6} (`--set model.params.depth=6`); a mapping adds to the
    # entries set so far, an empty one ({}) clears them; unknown names are refused for the model
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training folds
    batch_size: int = 16  # clips per step
    optimizer: str = "adam"  # "adam", "adamw" (decoupled weight decay) or "sgd"
    momentum: float = 0.0  # sgd momentum (torch's and Keras' default 0)
    nesterov: bool = False  # sgd: Nesterov momentum (needs momentum > 0)
    schedule: str = "onecycle"  # onecycle (max_lr, anneal), constant (lr), cosine (lr to 0 over the
    #   run, per step), plateau (lr, times plateau_factor when validation accuracy stalls)
    lr: float = 1e-3  # learning rate of the constant, cosine and plateau schedules (onecycle: max_lr)
    max_lr: float = 1e-3  # OneCycleLR peak learning rate
    anneal: str = "linear"  # OneCycleLR annealing: "linear" or "cos"
    plateau_factor: float = 0.1  # plateau: lr multiplier when validation accuracy stalls (torch's default)
    plateau_patience: int = 10  # plateau: epochs without a better validation accuracy before a drop
    weight_decay: float = 0.0  # weight decay (L2 for adam and sgd, decoupled for adamw)
    mixup: float = 0.0  # alpha of Beta(alpha, alpha) mixup of each training batch; 0: off
    seed: int = 0  # split k trains with seed + k
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    threads: int = 0  # torch CPU threads; 0 (auto): one per core free when training starts (bench/core/threads.py)


@dataclass
class TrackingConfig:
    mlflow: bool = True  # log to MLflow (the run folder is written either way)
    tracking_uri: str = "sqlite:///mlflow.db"  # MLflow's own default store
    experiment: str | None = None  # None: the dataset's name


@dataclass
class RunConfig:
    name: str | None = None  # run folder name under runs_dir; None: <dataset>-<timestamp>
    runs_dir: str = "runs"  # where run folders go
    cache_dir: str = field(
        default_factory=lambda: os.environ.get("FOLDBENCH_CACHE", str(Path.home() / ".cache" / "foldbench"))
    )  # waveform cache, demo data
    splits: list[int] | None = None  # run only these splits (1-based); None: all
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


class ConfigError(FoldbenchError, ValueError):
    """A config key or value that does not fit the schema."""


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """`{"features.n_mels": 64, ...}`: the names MLflow params and `--set` use."""

    def walk(prefix: str, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):  # a section, or model.params: one key per entry
                out.update(walk(f"{prefix}{key}.", value))
            else:
                out[prefix + key] = value
        return out

    return walk("", to_dict(cfg))


def merge(cfg: RunConfig, data: dict[str, Any], where: str = "config") -> RunConfig:
    """A copy of `cfg` with the (possibly nested, possibly dotted) keys of `data` replaced."""
    cfg = copy.deepcopy(cfg)  # deep: model.params is a dict, changed in place below
    for key, value in (data or {}).items():
        _set(cfg, key, value, where)
    return cfg


def _set(obj: Any, key: str, value: Any, where: str) -> None:
    if "." in key:
        head, rest = key.split(".", 1)
        return _set(obj, head, {rest: value}, where)
    names = {f.name: f for f in fields(obj)}
    if key not in names:
        near = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ";"
        raise ConfigError(f"{where}: unknown key {key!r} in {type(obj).__name__}{hint} known: {', '.join(names)}")
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} is a section; give {key}.<field>=value")
        for k, v in value.items():
            _set(current, k, v, f"{where}: {key}")
        return
    if names[key].type.startswith("dict"):
        return _set_entries(current, value, f"{where}: {key}")
    setattr(obj, key, _coerce(value, names[key].type, current, f"{where}: {key}"))


def _set_entries(entries: dict[str, Any], value: Any, where: str) -> None:
    """A mapping field (model.params): `{name: value}` sets entries ({} clears them); values given as
    text are read as YAML (`depth=6` is the int 6, `channels=[32,64]` a list)."""
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip() else None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of parameters, or {where.split(': ')[-1]}.<name>=value")
    if not value:
        entries.clear()
    for name, v in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"{where}: {name!r} is not a parameter name")
        if isinstance(v, str):
            v = yaml.safe_load(v) if v.strip() else v
        if isinstance(v, dict):
            raise ConfigError(f"{where}.{name}: a parameter value is a number, text, bool or list")
        entries[name] = list(v) if isinstance(v, tuple) else copy.deepcopy(v)


def _int(value: Any) -> int:
    """An integer, strictly: not a bool, not 1.5, not "x"."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value.strip()) if isinstance(value, str) else int(value)


def _coerce(value: Any, annotation: str, current: Any, where: str) -> Any:
    """Values from YAML or the command line, checked against the field's type. Text fields take
    command-line text as written (a '#', a ':' or '010' are not read as YAML)."""
    base, optional = annotation.split("|")[0].strip(), "None" in annotation
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", "~") and not where.startswith("command line"):
            return None  # --set key=none; a flag's text (--name null) stays text
        if base == "str":
            return value
        if base.startswith("list"):
            value = [v for v in text.split(",")] if text else []
        else:
            try:
                value = yaml.safe_load(text) if text else text
            except yaml.YAMLError:
                raise ConfigError(f"{where}: {text!r} is not a valid {annotation}") from None
    if value is None and optional:
        return None
    try:
        if base == "bool" and isinstance(value, bool):
            return value
        if base == "int":
            return _int(value)
        if base == "float" and not isinstance(value, (bool, str)):
            return float(value)
        if base == "str" and isinstance(value, str):
            return value
        if base.startswith("list") and isinstance(value, list):
            return [_int(v) for v in value]
    except (TypeError, ValueError, OverflowError):
        pass
    hint = " (quote it in YAML)" if base == "str" else ""
    raise ConfigError(f"{where}: {value!r} is not a valid {annotation}{hint}")


def load_yaml(path: str | os.PathLike, base: RunConfig | None = None, *, with_name: bool = True) -> RunConfig:
    """The config in `path` over `base` (default: the defaults). `with_name=False` (a `--config`
    file): a `name` in the file is ignored, so a run's saved config.yaml starts a new run (the
    name given with --name, or a fresh default) instead of pointing at the run it came from."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid YAML config: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    if not with_name:
        data.pop("name", None)
    return merge(base or RunConfig(), data, str(path))


def dump_yaml(cfg: RunConfig) -> str:
    """The config as YAML (config.yaml, best.yaml), the tracking URI's password replaced by ***:
    a run resumed from it is given --tracking-uri again (`validate` asks for it)."""
    data = to_dict(cfg)
    data["tracking"]["tracking_uri"] = redact(data["tracking"]["tracking_uri"])
    return yaml.safe_dump(data, sort_keys=False)


def plain_name(value: str, what: str) -> str:
    """`value` if it is one plain path component (no separator, not `.`/`..`, not hidden)."""
    bad = (
        not value
        or value in (".", "..")
        or value.startswith(".")
        or "/" in value
        or "\\" in value
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or len(value.encode("utf-8", "replace")) > 200
    )
    if bad:
        raise ConfigError(
            f"{what} {value!r}: must be a plain name (letters, digits, '-', '_', '.'; "
            f"no '/', not starting with '.'), e.g. {what} us8k-seed"
        )
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["train.epochs=5", ...]` -> `{"train.epochs": "5"}`."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = value
    return out
