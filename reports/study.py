"""A tune study's report, from the Optuna study and its trial folders: the trials table, the plots
(from `optuna.visualization.matplotlib`) and report.md. `bench.tune` writes them into
runs/tune-<study>/ after every trial (the table) and at the end (everything).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from reports.files import atomic_write_csv, atomic_write_text, read_split_json, split_dirs  # noqa: E402
from reports.plots import save_png  # noqa: E402
from reports.render import markdown_table  # noqa: E402

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}
# title -> (file, optuna.visualization.matplotlib function, completed trials it needs)
PLOTS = {
    "optimization history": ("optimization_history.png", "plot_optimization_history", 1),
    "parameter importances": ("param_importances.png", "plot_param_importances", 2),
    "parallel coordinates": ("parallel_coordinate.png", "plot_parallel_coordinate", 1),
}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective, splits reported (with the last running mean), duration,
    the trial's settings under their config names (hop length in samples), and why it stopped."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        reports = list(t.intermediate_values.values())
        complete = t.state == optuna.trial.TrialState.COMPLETE  # a pruned trial's value is its last report
        rows.append({"number": t.number, "state": STATES[t.state.name],
                     "val_acc_mean": t.value if complete else None,
                     "splits_done": len(reports), "running_mean": reports[-1] if reports else None,
                     "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                     **t.user_attrs.get("config", {}), "reason": t.user_attrs.get("reason") or (
                         "no result: its process stopped (killed?) and its heartbeat ran out"
                         if t.state == optuna.trial.TrialState.FAIL else "")})
    return pd.DataFrame(rows, columns=None if rows else ["number", "state", "val_acc_mean", "reason"])


def plot_study(study: optuna.Study, folder: Path) -> dict[str, str]:
    """Draw each plot into `folder`; title -> its file name, or why it was not drawn."""
    from optuna.visualization import matplotlib as ovm
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    out = {}
    for title, (file, function, needs) in PLOTS.items():
        if complete < needs:
            out[title] = f"not drawn: needs {needs} completed trial(s), the study has {complete}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
                fig = getattr(ovm, function)(study).figure
            fig.set_size_inches(13 if "parallel" in title else 10, 5.5)
            fig.tight_layout()
            save_png(fig, Path(folder) / file)
            out[title] = file
        except Exception as e:  # e.g. importances when no parameter varies between trials
            plt.close("all")
            out[title] = f"not drawn: {type(e).__name__}: {e}"
    return out


def _folds(trial_dir: Path, key: str) -> list[int]:
    return sorted({read_split_json(trial_dir, k)[key] for k in split_dirs(trial_dir)
                   if (trial_dir / "splits" / str(k) / "split.json").exists()})


def render_study(study: optuna.Study, table: pd.DataFrame, images: dict[str, str], cfg,
                 folder: Path, best: optuna.trial.FrozenTrial | None) -> str:
    """report.md: the setup, counts, the best trial with the command that scores it, plots, trials."""
    states = table["state"].tolist()
    excluded = int(table["reason"].str.startswith("excluded").sum())
    splits = ", ".join(map(str, cfg.splits))
    lines = [f"# Study `{study.study_name}`", "",
             f"Dataset `{cfg.dataset.name}`, model `{cfg.model.name}`, {cfg.train.epochs} epochs, "
             f"splits {splits}. Objective: mean validation accuracy over those splits; the test "
             f"folds are never scored here.", "",
             f"Trials: {states.count('complete')} complete, {states.count('pruned') - excluded} pruned, "
             f"{states.count('failed')} failed, {excluded} excluded before training "
             f"(Mel bands the FFT size cannot resolve)"
             + (f", {states.count('running')} running" if "running" in states else "") + ".", ""]
    if best is None:
        lines += ["No trial has completed yet, so there is no best.yaml.", ""]
    else:
        settings = best.user_attrs.get("config", best.params)
        val_folds = _folds(Path(folder) / "trials" / str(best.number), "val_fold")
        lines += [f"## Best: trial {best.number}, val_acc_mean {best.value:.4f}", "",
                  markdown_table(pd.DataFrame({"setting": list(settings),
                                               "value": [str(v) for v in settings.values()]})), "",
                  "`best.yaml` holds the whole config. Score it on every test fold:", "",
                  f"    python cli.py kfold --config {Path(folder) / 'best.yaml'}", ""]
        if val_folds:
            lines += [f"These settings were chosen on validation fold(s) {', '.join(map(str, val_folds))} "
                      f"(and trained on the others), and that kfold run tests every fold, so its score "
                      f"is somewhat optimistic; an independent estimate needs nested cross-validation.", ""]
    lines += ["## Plots", ""]
    lines += [f"![{t}]({f})" if f.endswith(".png") else f"- {t}: {f}" for t, f in images.items()]
    shown = table.astype(object).where(table.notna(), "")
    lines += ["", "## Trials", "", "Also in `trials.csv`; each trial's run folder is `trials/<number>/`.",
              "", markdown_table(shown), ""]
    return "\n".join(lines)


def write_study(study: optuna.Study, folder: Path, cfg, best: optuna.trial.FrozenTrial | None,
                best_yaml: str | None, plots: bool) -> list[Path]:
    """trials.csv and best.yaml; with `plots`, the plots and report.md too. Returns the files."""
    folder = Path(folder)
    table = trials_table(study)
    atomic_write_csv(folder / "trials.csv", table)
    files = [folder / "trials.csv"]
    if best_yaml:
        atomic_write_text(folder / "best.yaml", best_yaml)
        files.append(folder / "best.yaml")
    if plots:
        images = plot_study(study, folder)
        atomic_write_text(folder / "report.md", render_study(study, table, images, cfg, folder, best))
        files += [folder / "report.md"] + [folder / f for f in images.values() if f.endswith(".png")]
    return files
