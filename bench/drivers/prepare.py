"""`prepare(cfg)`: everything a job needs, checked, with no side effects on runs/ or MLflow.

config validated (every field, the model, the device, the dataset kind) -> MLflow store reachable ->
manifest -> fold plan from the metadata (fails before any decoding) -> waveform cache (quarantine)
-> fold plan over the usable clips, with the identical-audio checks -> the splits asked for.
`kfold`, `tune`, `datasets check` and `speed` start here; only then is a `RunFolder` claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from protocols import Split

from bench.data.cache import Waveforms, load_waveforms
from bench.core.config import ConfigError, RunConfig
from bench.core.validation import validate
from bench.data.datasets import DATASETS, Dataset, DatasetError, create_dataset
from bench.features.bank import check_features, feature_bank
from bench.features.frontends import FRONTENDS, frontend_shape
from bench.models import check_model_config, create_model
from bench.models.registry import ModelError
from protocols.plan import Plan, copies_across_folds, label_conflicts, make_plan
from bench.tracking.tracker import Tracker
from bench.train.fit import resolve_device


def check_config(cfg: RunConfig) -> RunConfig:
    """`validate` plus what needs the registries and this machine: dataset kind, model, features,
    device (CUDA asked for but absent is an error here, not after the run folder exists)."""
    validate(cfg)
    if cfg.dataset.name not in DATASETS:
        raise ConfigError(f"--dataset {cfg.dataset.name!r}: unknown; known: {', '.join(sorted(DATASETS))}")
    if cfg.features.frontend not in FRONTENDS:
        raise ConfigError(
            f"features.frontend={cfg.features.frontend!r}: unknown front end; known: "
            f"{', '.join(sorted(FRONTENDS))}; fix it with --set features.frontend=<name>"
        )
    check_model_config(cfg.model)  # the name, and parameter names the model takes
    check_features(cfg.audio, cfg.features)
    try:  # the model on the front end's output shape (a ViT's image size, say), on no memory
        with torch.device("meta"):
            create_model(cfg.model.name, frontend_shape(cfg.audio, cfg.features), 2, **cfg.model.params)
    except ModelError as e:
        raise ConfigError(f"model {cfg.model.name} on {cfg.features.frontend} features: {e}") from None
    resolve_device(cfg.train.device)
    return cfg


def _chosen(plan_splits: list[Split], splits: list[int] | None) -> list[Split]:
    known = {s.index for s in plan_splits}
    unknown = sorted(set(splits or []) - known)
    if unknown:
        raise ConfigError(f"--splits: no split {', '.join(map(str, unknown))} in this plan (1..{len(known)})")
    return [s for s in plan_splits if splits is None or s.index in splits]


@dataclass
class Prepared:
    """What `prepare` checked and loaded, shared by every job on the same data (tune: every trial)."""

    dataset: Dataset
    waves: Waveforms
    plan: Plan
    quarantine: pd.DataFrame  # clip, reason
    device: torch.device
    tracker: Tracker | None = None

    @property
    def fingerprint(self) -> str:
        return self.dataset.fingerprint()

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.table["label"].to_numpy(copy=True)

    def chosen(self, splits: list[int] | None) -> list[Split]:
        """The plan's splits numbered in `splits` (all when None); unknown numbers are an error."""
        return _chosen(self.plan.splits, splits)

    def bank(self, cfg: RunConfig, progress: bool = True) -> torch.Tensor:
        """The feature bank of `cfg.features` on the device (computed once per feature config and
        kept by `features.feature_bank`)."""
        return feature_bank(self.waves, cfg.audio, cfg.features, self.device, progress=progress)

    def plan_record(self) -> dict:
        """What plan.json holds."""
        return {**self.plan.summary(), "notes": self.dataset.notes, "dataset_fingerprint": self.fingerprint}


def prepare(
    cfg: RunConfig,
    *,
    progress: bool = True,
    tracking: bool = True,
    dataset: Dataset | None = None,
    waves: Waveforms | None = None,
) -> Prepared:
    """Validate `cfg` and load its dataset, cache and fold plan; raise a user error otherwise.
    `dataset` and `waves`: the manifest and cache of `cfg` already loaded (`datasets check`)."""
    check_config(cfg)
    device = resolve_device(cfg.train.device)
    dataset = create_dataset(cfg.dataset, cfg.cache_dir) if dataset is None else dataset
    draft = make_plan(cfg, dataset, np.ones(len(dataset.table), dtype=bool))  # fail fast, before decoding
    _chosen(draft.splits, cfg.splits)
    tracker = Tracker(cfg.tracking, experiment=cfg.dataset.name) if tracking else None  # reachable?
    if waves is None:
        waves = load_waveforms(dataset, cfg.audio, cfg.cache_dir, progress=progress)
    quarantine = waves.quarantine.drop(columns="index")
    if len(quarantine) and cfg.dataset.strict:
        raise DatasetError(
            f"--strict: {len(quarantine)} file(s) cannot be used: "
            + "; ".join(f"{c}: {r}" for c, r in zip(quarantine["clip"].head(20), quarantine["reason"].head(20)))
        )
    plan = make_plan(cfg, dataset, waves.ok, waves.hashes)
    conflict = label_conflicts(plan.duplicates)
    if conflict:
        raise DatasetError(f"{conflict}; keep one copy, under its right class")
    across = copies_across_folds(plan.duplicates)
    if across and not cfg.dataset.allow_leaky:
        raise DatasetError(f"{across}; remove the copies, or pass --allow-leaky to record the run as leaky")
    prepared = Prepared(dataset, waves, plan, quarantine, device, tracker)
    prepared.chosen(cfg.splits)  # unknown split numbers are refused here
    for split in prepared.plan.splits:
        if len(split.train) < 2:
            raise DatasetError(f"split {split.index}: {len(split.train)} training clip(s); a model needs at least 2")
    return prepared
