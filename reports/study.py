"""A tune study's report, from the Optuna study and its trial folders: the trials table, the plots
(from `optuna.visualization.matplotlib`) and report.md. `bench.drivers.tune` writes them into
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

from bench.core.runfolder import RunFolder  # noqa: E402
from reports.files import read_split_json  # noqa: E402
from reports.plots import save_png  # noqa: E402
from reports.render import markdown_table  # noqa: E402

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
# title -> (file, optuna.visualization.matplotlib function, complete trials it needs, searched
# parameters that must vary among them). Importances (fANOVA, a random forest fitted to the trials)
# and parallel coordinates read as a pattern; from a handful of trials that pattern is noise, so
# they wait for 8 complete trials over at least 2 varying parameters. A history needs 2 points.
PLOTS = {
    "optimization history": ("optimization_history.png", "plot_optimization_history", 2, 0),
    "parameter importances": ("param_importances.png", "plot_param_importances", 8, 2),
    "parallel coordinates": ("parallel_coordinate.png", "plot_parallel_coordinate", 8, 2),
}
METRIC = "val_acc_mean"  # bench.drivers.study.METRIC (not imported: reports do not import the drivers)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective, the clips each split got right (`17/30 18/30`: the
    objective is their mean, exactly), splits reported (with the last running mean), duration, the
    trial's settings under their config names (hop length in samples), and why it stopped."""
    trials = study.get_trials(deepcopy=False)
    retries = {
        t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")
    }  # Optuna's retry of a killed trial
    rows = []
    for t in trials:
        reports = list(t.intermediate_values.values())
        complete = t.state == optuna.trial.TrialState.COMPLETE  # a pruned trial's value is its last report
        counts = t.user_attrs.get("val_counts") or []
        rows.append(
            {
                "number": t.number,
                "state": STATES[t.state.name],
                "val_acc_mean": t.value if complete else None,
                "val_correct": " ".join(f"{c}/{n}" for _, c, n in counts),  # per split, exact
                "splits_done": len(reports),
                "running_mean": reports[-1] if reports else None,
                "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                **t.user_attrs.get("config", {}),
                "reason": t.user_attrs.get("reason")
                or (
                    "no result: its process stopped (killed?) and its heartbeat ran out; not counted"
                    + (f", retried as trial {retries[t.number]}" if t.number in retries else "")
                    if t.state == optuna.trial.TrialState.FAIL
                    else ""
                ),
            }
        )
    return pd.DataFrame(rows, columns=None if rows else ["number", "state", "val_acc_mean", "reason"])


def varying_params(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The searched parameters that took more than one value among `trials`."""
    values: dict[str, set] = {}
    for t in trials:
        for k, v in t.params.items():
            values.setdefault(k, set()).add(repr(v))
    return sorted(k for k, v in values.items() if len(v) > 1)


def plot_study(study: optuna.Study, folder: Path) -> dict[str, str]:
    """Draw each plot that has enough trials into `folder` (an older copy of one that has not is
    removed); title -> its file name, or why it was not drawn."""
    from optuna.visualization import matplotlib as ovm

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varying = varying_params(trials)
    out = {}
    for title, (file, function, needs, params) in PLOTS.items():
        if len(trials) < needs or len(varying) < params:
            (Path(folder) / file).unlink(missing_ok=True)
            out[title] = (
                f"not drawn: needs at least {needs} complete trials"
                + (f" over at least {params} searched parameters that vary" if params else "")
                + f"; the study has {len(trials)} complete"
                + (f", {len(varying)} varying ({', '.join(varying) or 'none'})" if params else "")
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
                kwargs = {"target_name": METRIC} if "history" in title else {}  # the others: metric_names
                fig = getattr(ovm, function)(study, **kwargs).figure
            fig.set_size_inches(13 if "parallel" in title else 10, 5.5)
            fig.tight_layout()
            save_png(fig, Path(folder) / file)
            out[title] = file
        except Exception as e:  # e.g. importances when no parameter varies between trials
            plt.close("all")
            (Path(folder) / file).unlink(missing_ok=True)
            out[title] = f"not drawn: {type(e).__name__}: {e}"
    return out


def _folds(trial_dir: Path, key: str) -> list[int]:
    folder = RunFolder(trial_dir)
    return sorted(
        {read_split_json(trial_dir, k)[key] for k in folder.planned() if (folder.split_dir(k) / "split.json").exists()}
    )


def render_study(
    study: optuna.Study,
    table: pd.DataFrame,
    images: dict[str, str],
    cfg,
    folder: Path,
    best: optuna.trial.FrozenTrial | None,
) -> str:
    """report.md: the setup, counts, the best trial with the command that scores it, plots, trials."""
    states = table["state"].tolist()
    excluded = int(table["reason"].str.startswith("excluded").sum())
    not_run = int(table["reason"].str.startswith("not run").sum())  # pruned by name only: not counted
    stopped = int(table["reason"].str.startswith("no result: its process stopped").sum())
    splits = ", ".join(map(str, cfg.splits))
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"Dataset `{cfg.dataset.name}`, model `{cfg.model.name}`, {cfg.train.epochs} epochs, "
        f"splits {splits}. Objective `{METRIC}`: mean validation accuracy over those splits, "
        f"computed exactly from the clips each split got right (`val_correct`); the test folds "
        f"are never scored here. The best trial has the highest exact value; of equal ones, the "
        f"earlier trial.",
        "",
        f"Trials: {states.count('complete')} complete, {states.count('pruned') - excluded - not_run} "
        f"pruned, {states.count('failed') - stopped} failed, {excluded} excluded before training "
        f"(Mel bands the FFT size cannot resolve)"
        + (f", {states.count('running')} running" if "running" in states else "")
        + (f", {stopped} stopped with their worker (killed; not counted, retried)" if stopped else "")
        + (f", {not_run} not run (the study already had its trials)" if not_run else "")
        + ".",
        "",
    ]
    if best is None:
        lines += ["No trial has completed yet, so there is no best.yaml.", ""]
    else:
        settings = best.user_attrs.get("config", best.params)
        val_folds = _folds(Path(folder) / "trials" / str(best.number), "val_fold")
        counts = best.user_attrs.get("val_counts") or []
        exact = f" ({' '.join(f'{c}/{n}' for _, c, n in counts)} of the validation clips per split)" if counts else ""
        lines += [
            f"## Best: trial {best.number}, {METRIC} {best.value:.4f}{exact}",
            "",
            markdown_table(pd.DataFrame({"setting": list(settings), "value": [str(v) for v in settings.values()]})),
            "",
            "`best.yaml` holds the whole config. Score it on every test fold:",
            "",
            f"    python cli.py kfold --config {Path(folder) / 'best.yaml'}",
            "",
        ]
        if val_folds:
            lines += [
                f"These settings were chosen on validation fold(s) {', '.join(map(str, val_folds))} "
                f"(and trained on the others), and that kfold run tests every fold, so its score "
                f"is somewhat optimistic; an independent estimate needs nested cross-validation.",
                "",
            ]
    lines += ["## Plots", ""]
    lines += [f"![{t}]({f})" if f.endswith(".png") else f"- {t}: {f}" for t, f in images.items()]
    shown = table.astype(object).where(table.notna(), "")
    lines += [
        "",
        "## Trials",
        "",
        "Also in `trials.csv`; each trial's run folder is `trials/<number>/`.",
        "",
        markdown_table(shown),
        "",
    ]
    return "\n".join(lines)


def write_study(
    study: optuna.Study, folder: Path, cfg, best: optuna.trial.FrozenTrial | None, best_yaml: str | None, plots: bool
) -> list[Path]:
    """trials.csv and best.yaml; with `plots`, the plots and report.md too. Returns the files."""
    folder, out = Path(folder), RunFolder(folder)  # a study folder (its layout: bench/core/runfolder.py)
    table = trials_table(study)
    out.write_csv("trials.csv", table)
    files = [folder / "trials.csv"]
    if best_yaml:
        out.write_text("best.yaml", best_yaml)
        files.append(folder / "best.yaml")
    if plots:
        images = plot_study(study, folder)
        out.write_text("report.md", render_study(study, table, images, cfg, folder, best))
        files += [folder / "report.md"] + [folder / f for f in images.values() if f.endswith(".png")]
    return files
