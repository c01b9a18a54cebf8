"""Build a run's report from its saved predictions: scores.json, CSV tables, PNGs and report.md.

    scores = build_report("runs/us8k-seed")   # writes everything into the run folder
    print(summary_table(scores))              # what the CLI prints at the end
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.aggregate import (class_names, fold_scores, load_predictions, per_class, repeat_scores,
                               repeat_summary, summary)
from reports.confusion import confusion_counts, normalize_rows, plot_confusion
from reports.files import (atomic_write_csv, atomic_write_json, atomic_write_text, dataset_name,
                           expected_splits, missing_splits, read_plan, read_quarantine, run_name)
from reports.plots import plot_fold_scores, plot_learning_curves


# What the repeats of a repeated run differ in (plan.json `repeats_vary`).
REPEATS_VARY = {"folds": "fold assignment", "seed": "training seed only (predefined folds)"}


def summary_line(scores: dict) -> str:
    n, repeats = scores["n_splits"], scores.get("repeats", 1)
    over = (f"over {n} fold{'s' if n != 1 else ''}" if repeats <= 1 else
            f"over {n} split{'s' if n != 1 else ''} of {repeats} repeats pooled")
    return (f"accuracy {scores['acc_mean']:.3f} ± {scores['acc_std']:.3f} "
            f"(95 % CI {scores['acc_ci95_low']:.3f}–{scores['acc_ci95_high']:.3f}) "
            f"{over}, macro F1 {scores['macro_f1_mean']:.3f} ± {scores['macro_f1_std']:.3f}")


def repeats_line(scores: dict) -> str:
    """What the repeats vary and the mean accuracy of each, or '' for a run without repeats."""
    if scores.get("repeats", 1) <= 1:
        return ""
    vary = REPEATS_VARY.get(scores.get("repeats_vary"), str(scores.get("repeats_vary")))
    means = ", ".join(f"{m:.3f}" for m in scores["acc_repeat_means"])
    return (f"repeats vary: {vary}; mean accuracy per repeat {means}; std of the repeat means "
            f"{scores['acc_repeat_std']:.3f}")


def missing_line(scores: dict) -> str:
    """A warning naming the unfinished splits, or '' when the run is complete."""
    missing = scores["missing_splits"]
    if not missing:
        return ""
    total = scores["n_splits"] + len(missing)
    return (f"INCOMPLETE RUN: split(s) {', '.join(map(str, missing))} not finished (no DONE); "
            f"scores cover {scores['n_splits']} of {total} splits")


def leaky_line(scores: dict) -> str:
    """A warning for runs whose protocol leaks (e.g. `random`), or '' for honest ones."""
    if not scores.get("leaky"):
        return ""
    return (f"LEAKY PROTOCOL {scores.get('protocol', '')}: {scores.get('leak_reason') or 'see plan.json'}. "
            f"This score measures leakage; do not report it as the model's accuracy")


def summary_table(scores: dict) -> str:
    """Short plain-text table for the terminal: accuracy per fold, then the mean/std/CI line."""
    lines = [leaky_line(scores)] if scores.get("leaky") else []
    repeated = scores.get("repeats", 1) > 1
    lines += [f"{'split':>5}  " + (f"{'repeat':>6}  " if repeated else "")
              + f"{'test fold':>9}  {'n':>6}  {'accuracy':>8}  {'macro F1':>8}"]
    for row in scores["per_fold"]:
        lines.append(f"{row['split']:>5}  " + (f"{row['repeat']:>6}  " if repeated else "")
                     + f"{row['test_fold']:>9}  {row['n']:>6}  {row['accuracy']:>8.3f}  {row['macro_f1']:>8.3f}")
    lines.append(summary_line(scores))
    if repeated:
        lines.append(repeats_line(scores))
    if scores["missing_splits"]:
        lines.append(missing_line(scores))
    if scores["quarantined"]:
        lines.append(f"{scores['quarantined']} file(s) quarantined (see report.md)")
    return "\n".join(lines)


def _cell(value) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, headers: list[str] | None = None) -> str:
    headers = headers or [str(c) for c in df.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def render_markdown(scores: dict, fold_df: pd.DataFrame, class_df: pd.DataFrame,
                    quarantine: pd.DataFrame, plan: dict | None = None) -> str:
    plan = plan or {}
    dataset = f"dataset **{scores['dataset']}**, " if scores.get("dataset") else ""
    protocol = f"protocol `{plan['protocol']}`, " if plan.get("protocol") else ""
    md = [f"# {scores['run']}", ""]
    if scores.get("leaky"):
        md += [f"> **{leaky_line(scores)}.**", ""]
    md += [f"{dataset}{protocol}{len(scores['classes'])} classes, {int(fold_df['n'].sum())} test "
           f"predictions from {scores['n_splits']} finished split(s).", "",
           f"**{summary_line(scores)}**", ""]
    if scores["missing_splits"]:
        md += [f"> **Warning: {missing_line(scores)}.** Mean, std and CI are over the finished "
               "splits only.", ""]
    repeated = scores.get("repeats", 1) > 1
    if repeated:
        md += _repeats_section(scores)
    md += ["## Per fold", "",
           markdown_table(fold_df, ["split", *(["repeat"] if repeated else []), "test fold", "n",
                                    "accuracy", "macro F1"]), "",
           "![accuracy per fold](fold_scores.png)", "",
           "## Learning curves", "",
           "![learning curves](learning_curves.png)", "",
           "## Confusion matrix", "",
           "Rows are true classes, columns predicted; summed over the test folds"
           + (" of every repeat (each clip counted once per repeat). " if repeated else ". ") +
           "Tables: [counts](confusion_counts.csv), [row-normalised](confusion_normalized.csv).", "",
           "![confusion matrix, row-normalised](confusion_normalized.png)", "",
           "![confusion matrix, counts](confusion_counts.png)", "",
           "## Per class", "",
           "Over all test predictions pooled ([per_class.csv](per_class.csv)).", "",
           markdown_table(class_df[["class", "precision", "recall", "f1", "support"]],
                          ["class", "precision", "recall", "F1", "support"]), "",
           "## Quarantined files", ""]
    if len(quarantine):
        md += [f"{len(quarantine)} file(s) were set aside and are not in any fold:", "",
               markdown_table(quarantine[["clip", "reason"]]), ""]
    else:
        md += ["None.", ""]
    checks = [f"- warning: {w}" for w in plan.get("warnings", [])] + [f"- {n}" for n in plan.get("notes", [])]
    if checks:
        md += ["## Dataset checks", "", *checks, ""]
    return "\n".join(md)


def _repeats_section(scores: dict) -> list[str]:
    """report.md's lines on a repeated run: what repeats vary, the pooled and per-repeat figures."""
    how = ("repeat r draws its folds with protocol seed + r - 1" if scores.get("repeats_vary") == "folds"
           else "the folds are the same in every repeat; split k trains with seed + k")
    per_repeat = pd.DataFrame(scores["per_repeat"])
    return [f"**{scores['repeats']} repeats; {repeats_line(scores)}.** ({how})", "",
            f"Mean, std and interval above pool all {scores['n_splits']} splits. The repeats test the "
            "same clips again, so the splits are not independent and that interval is narrower than "
            "the uncertainty of the estimate; the std of the repeat means shows how far the estimate "
            "moves from one repeat to the next.", "",
            "## Per repeat", "",
            markdown_table(per_repeat, ["repeat", "splits", "accuracy mean", "accuracy std",
                                        "macro F1 mean"]), ""]


def build_report(run_dir) -> dict:
    """Compute scores from the finished splits of `run_dir` and write every report file into it.

    Returns the scores dict that is also written to scores.json.
    """
    run_dir = Path(run_dir)
    pred = load_predictions(run_dir)
    fold_df = fold_scores(pred)
    class_df = per_class(pred)
    counts = confusion_counts(pred)
    normalized = normalize_rows(counts)
    quarantine = read_quarantine(run_dir)
    missing = missing_splits(run_dir)
    plan = read_plan(run_dir)
    repeats = max(int(plan.get("repeats", 1)), fold_df["repeat"].nunique())
    repeated = {}
    if repeats > 1:
        repeated = {"repeats": repeats, "repeats_vary": plan.get("repeats_vary"),
                    **repeat_summary(fold_df),
                    "per_repeat": repeat_scores(fold_df).to_dict(orient="records")}
    else:  # a run without repeats: its tables as they were before repeated CV
        fold_df = fold_df.drop(columns="repeat")

    scores = {
        "run": run_name(run_dir),
        "dataset": dataset_name(run_dir),
        "classes": class_names(pred),
        **summary(fold_df),
        "per_fold": fold_df.to_dict(orient="records"),
        "expected_splits": expected_splits(run_dir),
        "missing_splits": missing,
        "quarantined": len(quarantine),
        "protocol": plan.get("protocol"),
        "leaky": bool(plan.get("leaky", False)),
        "leak_reason": plan.get("leak_reason"),
        **repeated,
    }

    atomic_write_json(run_dir / "scores.json", scores)
    atomic_write_csv(run_dir / "per_fold.csv", fold_df)
    atomic_write_csv(run_dir / "per_class.csv", class_df)
    atomic_write_csv(run_dir / "confusion_counts.csv", counts, index=True)
    atomic_write_csv(run_dir / "confusion_normalized.csv", normalized, index=True)
    plot_confusion(counts, run_dir / "confusion_counts.png", f"{scores['run']}: confusion (counts)")
    plot_confusion(normalized, run_dir / "confusion_normalized.png",
                   f"{scores['run']}: confusion (row-normalised)")
    plot_learning_curves(run_dir, run_dir / "learning_curves.png")
    plot_fold_scores(fold_df, run_dir / "fold_scores.png")
    atomic_write_text(run_dir / "report.md", render_markdown(scores, fold_df, class_df, quarantine, plan))
    return scores
