"""`run_cv`: the cross-validation driver that `kfold` runs and every `tune` trial calls.

manifest -> waveform cache (quarantine) -> fold plan (folds.csv, checked) -> feature bank ->
one `fit_split` per split (predictions, history, DONE) -> report from the saved predictions.
MLflow gets a parent run per job (or per tune trial) and a child run per split.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from protocols import Split
from reports.files import read_split_json

from . import runs
from .cache import load_waveforms
from .config import RunConfig, flatten
from .datasets import DatasetError, create_dataset
from .features import feature_bank
from .plan import label_conflicts, make_plan
from .tracking import Tracker
from .train import fit_split, resolve_device


@dataclass
class CVResult:
    run_dir: Path
    val_acc: dict[int, float | None]  # split index -> validation accuracy of the chosen epoch
    scores: dict | None  # the report's scores; None when test folds were not scored (tune)
    quarantine: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    @property
    def val_acc_mean(self) -> float:
        values = [v for v in self.val_acc.values() if v is not None]
        return float(np.mean(values)) if values else float("nan")


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_cv(cfg: RunConfig, on_split: Callable[[Split, dict], None] | None = None, *,
           score_test: bool = True, resume: bool = False, tracker: Tracker | None = None,
           parent_run: str | None = None, progress: bool = True) -> CVResult:
    """Cross-validate `cfg` into `runs_dir/name`; `on_split(split, info)` after each split.

    `score_test=False` (tune) never predicts a test fold: only validation accuracy is produced.
    `parent_run` nests the split runs under an MLflow run the caller owns; otherwise this job
    creates its own parent run (reopened by `resume`).
    """
    dataset = create_dataset(cfg.dataset, cfg.cache_dir)
    make_plan(cfg, dataset, np.ones(len(dataset.table), dtype=bool))  # fail fast, before decoding
    waves = load_waveforms(dataset, cfg.audio, cfg.cache_dir, progress=progress)
    quarantine = waves.quarantine.drop(columns="index")
    if len(quarantine) and cfg.dataset.strict:
        raise DatasetError(f"--strict: {len(quarantine)} file(s) cannot be used:\n  " + "\n  ".join(
            f"{c}: {r}" for c, r in zip(quarantine["clip"].head(20), quarantine["reason"].head(20))))
    # The cheap checks of `datasets check`: fold plan, invariants, identical audio in the cache.
    plan = make_plan(cfg, dataset, waves.ok, waves.hashes)
    conflict = label_conflicts(plan.duplicates)
    if conflict:
        raise DatasetError(f"{conflict}; keep one copy, under its right class")
    keep, table, folds, splits = plan.rows, plan.table, plan.folds, plan.splits  # splits index `table`
    warnings, protocol = plan.warnings, plan.protocol
    unknown = sorted(set(cfg.splits or []) - {s.index for s in splits})
    if unknown:
        raise DatasetError(f"--splits: no split {', '.join(map(str, unknown))} in this plan (1..{len(splits)})")
    run_dir = runs.claim(cfg, resume)  # only once the data and the plan are known to be usable
    fingerprint = dataset.fingerprint()
    if resume:
        runs.check_same_data(run_dir, table, folds, fingerprint)
    runs.atomic_write_csv(run_dir / "quarantine.csv", quarantine)
    runs.write_folds(run_dir, table, folds)
    runs.atomic_write_text(run_dir / "plan.json", json.dumps(
        {**plan.summary(), "notes": dataset.notes, "dataset_fingerprint": fingerprint}, indent=1) + "\n")
    chosen = [s for s in splits if cfg.splits is None or s.index in cfg.splits]

    device = resolve_device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    bank = feature_bank(waves, cfg.audio, cfg.features, device, progress=progress)
    labels = dataset.table["label"].to_numpy(copy=True)

    tracker = tracker or Tracker(cfg.tracking, experiment=dataset.name)
    own_parent = parent_run is None
    if own_parent:
        ids = runs.read_json(run_dir / "mlflow.json")
        parent_run = tracker.start(cfg.name, params=flatten(cfg), run_id=ids.get("parent"), tags={
            "dataset": dataset.name, "dataset_fingerprint": fingerprint,
            "protocol": repr(protocol), "leaky": plan.leaky, "code_version": code_version(),
            "run_folder": str(run_dir.resolve()), "quarantined": len(quarantine)})
        if parent_run:
            runs.atomic_write_text(run_dir / "mlflow.json", f'{{"parent": "{parent_run}"}}\n')

    val_acc: dict[int, float | None] = {}
    try:
        for split in tqdm(chosen, desc=f"splits ({cfg.name})", unit="split", disable=not progress):
            if resume and runs.is_done(run_dir, split.index):
                info = read_split_json(run_dir, split.index)
            else:
                info = _run_split(cfg, split, bank, labels, keep, table, dataset.classes, run_dir,
                                  score_test, tracker, parent_run, progress)
            val_acc[split.index] = info["val_acc"]
            if on_split is not None:
                on_split(split, info)
        scores = _report(run_dir, tracker, parent_run if own_parent else None) if score_test else None
    except BaseException as e:
        if own_parent:
            tracker.end(parent_run, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    if own_parent:
        tracker.end(parent_run)
    return CVResult(run_dir, val_acc, scores, quarantine, warnings)


def _run_split(cfg, split, bank, labels, keep, table, classes, run_dir, score_test, tracker,
               parent_run, progress) -> dict:
    """Fit one split, save its outputs with a DONE marker, mirror them to a child MLflow run."""
    params = {"split": split.index, "test_fold": split.test_fold, "val_fold": split.val_fold}
    with tracker.run(f"split-{split.index}", params=params, parent=parent_run,
                     tags={"split": split.index}) as child:
        def on_epoch(epoch, train_loss, val_acc):
            tracker.log_metrics(child, {"train_loss": train_loss, "val_acc": val_acc}, step=epoch)

        result = fit_split(bank, labels, keep[split.train], keep[split.val] if len(split.val) else None,
                           keep[split.test] if score_test else None, len(classes), cfg,
                           seed=cfg.train.seed + split.index, on_epoch=on_epoch, progress=progress)
        info = {**params, "best_epoch": result.best_epoch, "val_acc": result.val_acc,
                "test_acc": None, "n_train": len(split.train), "n_val": len(split.val),
                "n_test": len(split.test)}
        predictions = None
        if result.test_probs is not None:
            test = table.iloc[split.test]
            pred = result.test_probs.argmax(axis=1)
            info["test_acc"] = float((pred == test["label"].to_numpy()).mean())
            predictions = pd.DataFrame({"clip": test["clip"].to_numpy(), "fold": split.test_fold,
                                        "label": test["label"].to_numpy(), "pred": pred})
            for c, name in enumerate(classes):
                predictions[f"prob_{name}"] = result.test_probs[:, c].round(6)
        runs.write_split(run_dir, split.index, info, result.history, predictions)
        tracker.log_metrics(child, {"test_acc": info["test_acc"], "best_epoch": result.best_epoch,
                                    "best_val_acc": result.val_acc}, step=cfg.train.epochs)
        if predictions is not None:
            tracker.log_files(child, [runs.split_dir(run_dir, split.index) / "predictions.csv"])
            _log_split_confusion(tracker, child, predictions, run_dir, split.index)
    return info


def _log_split_confusion(tracker, child, predictions, run_dir, index) -> None:
    """The split's confusion matrix in its folder, mirrored to its MLflow run."""
    from reports.confusion import confusion_counts
    path = runs.split_dir(run_dir, index) / "confusion_counts.csv"
    runs.atomic_write_text(path, confusion_counts(predictions).to_csv())
    tracker.log_files(child, [path])


def _report(run_dir: Path, tracker: Tracker, parent_run: str | None) -> dict:
    from reports import build_report
    scores = build_report(run_dir)
    tracker.log_metrics(parent_run, {k: scores.get(k) for k in
                                     ("acc_mean", "acc_std", "macro_f1_mean", "acc_ci95_low",
                                      "acc_ci95_high")})
    tracker.log_files(parent_run, sorted(p for p in run_dir.iterdir() if p.is_file()
                                         and p.suffix in (".md", ".png", ".csv", ".json", ".yaml")
                                         and p.name != "mlflow.json"))
    return scores
