"""`suite`: several presets or configs cross-validated over the same fold plan, side by side.

Each entry is an ordinary kfold run (`run_cv`) in `<runs_dir>/suite-<name>/<entry>/`, with its own
MLflow parent run tagged `suite=<name>`, so the MLflow compare view lines the entries up. The table
(entry, model and its parameters, front end, accuracy mean ± std and 95 % interval, macro F1,
training time and training clips per second) is built from the entries' verified run folders and
written as suite.csv, suite.md and suite.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
from bench.core.config import ConfigError, RunConfig, merge, plain_name
from bench.drivers.kfold import run_cv
from bench.core.runfolder import RunFolder
from bench.tracking.tracker import Tracker


@dataclass
class Entry:
    label: str  # the preset's name, or the config file's stem
    cfg: RunConfig


def describe(cfg: RunConfig) -> str:
    """The settings that tell the entries apart, short: model + params, front end, optimiser."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(cfg.model.params.items()))
    f, t = cfg.features, cfg.train
    image = f" -> {f.image_size}x{f.image_size}" if f.image_size else ""
    return (
        f"{cfg.model.name}({params}); {f.frontend}{f' {f.n_mels}' if 'mel' in f.frontend else ''}"
        f"{image}; {t.optimizer} {t.schedule}, batch {t.batch_size}, {t.epochs} epochs"
        + (f", mixup {t.mixup:g}" if t.mixup else "")
    )


def run_suite(
    entries: list[Entry], name: str, *, resume: bool = False, progress: bool = True
) -> tuple[pd.DataFrame, Path]:
    """Cross-validate every entry into `<runs_dir>/suite-<name>/`; the table and that folder."""
    plain_name(name, "--name")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"suite: entries must have distinct names, got {', '.join(labels)}")
    folder = Path(entries[0].cfg.runs_dir).expanduser() / f"suite-{name}"
    rows, folds = [], {}
    for entry in entries:
        cfg = merge(entry.cfg, {"runs_dir": str(folder), "name": plain_name(entry.label, "entry")})
        tracker = Tracker(cfg.tracking, experiment=cfg.tracking.experiment or cfg.dataset.name)
        start = time.perf_counter()
        result = run_cv(
            cfg,
            resume=resume and (folder / entry.label / "config.yaml").exists(),
            tracker=tracker.tagged({"suite": name, "preset": entry.label}),
            progress=progress,
        )
        rows.append(_row(entry, cfg, result.scores, RunFolder(result.run_dir), time.perf_counter() - start))
        folds[entry.label] = pd.read_csv(result.run_dir / "folds.csv", usecols=["clip", "fold"])
    table = pd.DataFrame(rows)
    first = next(iter(folds.values()))
    same = all(f.equals(first) for f in folds.values())
    atomic_write_csv(folder / "suite.csv", table)
    atomic_write_json(
        folder / "suite.json", {"suite": name, "same_folds": same, "entries": table.to_dict(orient="records")}
    )
    atomic_write_text(folder / "suite.md", render(table, name, same))
    return table, folder


def _row(entry: Entry, cfg: RunConfig, scores: dict, folder: RunFolder, wall: float) -> dict:
    infos = [folder.read_split_info(k) for k in folder.verified()]
    fit = sum(i.get("fit_seconds") or 0.0 for i in infos)
    seen = sum(i["n_train"] * cfg.train.epochs for i in infos)
    return {
        "entry": entry.label,
        "settings": describe(cfg),
        "acc_mean": scores["acc_mean"],
        "acc_std": scores["acc_std"],
        "acc_ci95_low": scores["acc_ci95_low"],
        "acc_ci95_high": scores["acc_ci95_high"],
        "macro_f1_mean": scores["macro_f1_mean"],
        "n_splits": scores["n_splits"],
        "train_s": round(fit, 1),
        "train_clips_per_s": round(seen / fit, 1) if fit else None,
        "wall_s": round(wall, 1),
        "run_folder": str(folder.path),
    }


def render(table: pd.DataFrame, name: str, same_folds: bool) -> str:
    """suite.md (and what the command prints): best first."""
    from reports.aggregate import interval_text

    lines = [
        f"# suite {name}",
        "",
        "| entry | settings | accuracy (mean ± std) | 95 % CI | macro F1 | splits | train time | train clips/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table.sort_values("acc_mean", ascending=False).itertuples():
        lines.append(
            f"| {r.entry} | {r.settings} | {r.acc_mean:.3f} ± {r.acc_std:.3f} | "
            f"{interval_text(r.acc_ci95_low, r.acc_ci95_high)} | {r.macro_f1_mean:.3f} | "
            f"{r.n_splits} | {r.train_s:.0f} s | {r.train_clips_per_s or 0:.0f} |"
        )
    lines += [
        "",
        "Every entry ran on the same fold plan (same clips, same folds)."
        if same_folds
        else "WARNING: the entries' fold plans differ (other clips quarantined or another protocol): "
        "their scores are not paired.",
    ]
    return "\n".join(lines) + "\n"
