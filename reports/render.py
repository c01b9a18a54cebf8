"""Build a run's report from its saved predictions: scores.json, CSV tables, PNGs, report.md/.html.

    scores = build_report("runs/us8k-seed")   # writes everything into the run folder
    print(summary_table(scores))              # what the CLI prints at the end
    scores = rebuild("runs/us8k-seed")        # `cli.py report`: the same, for a folder given by a user

report.md and report.html are two renderings of one list of blocks (reports.document): what was
run (reports.provenance), then the scores, plots and tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core.runfolder import RunFolder, RunFolderError
from reports.aggregate import (
    class_names,
    fold_scores,
    interval_text,
    load_predictions,
    per_class,
    repeat_scores,
    repeat_summary,
    summary,
)
from reports.confusion import confusion_counts, normalize_rows, plot_confusion
from reports.document import Block, Bullets, Heading, Image, Note, Para, Table, cell, to_html, to_markdown
from reports.files import (
    asked_splits,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    dataset_name,
    expected_splits,
    missing_splits,
    read_plan,
    read_quarantine,
    read_split_json,
    run_name,
)
from reports.plots import plot_fold_scores, plot_learning_curves
from reports.provenance import what_was_run


# What the repeats of a repeated run differ in (plan.json `repeats_vary`).
REPEATS_VARY = {"folds": "fold assignment", "seed": "training seed only (predefined folds)"}


def summary_line(scores: dict) -> str:
    n, repeats = scores["n_splits"], scores.get("repeats", 1)
    over = (
        f"over {n} fold{'s' if n != 1 else ''}"
        if repeats <= 1
        else f"over {n} split{'s' if n != 1 else ''} of {repeats} repeats pooled"
    )
    if scores.get("acc_ci95_low") is None:  # one split: no spread, so no ± and no interval
        return (
            f"accuracy {scores['acc_mean']:.3f} {over} ({interval_text(None, None)}), "
            f"macro F1 {scores['macro_f1_mean']:.3f}"
        )
    return (
        f"accuracy {scores['acc_mean']:.3f} ± {scores['acc_std']:.3f} "
        f"(95 % CI {interval_text(scores['acc_ci95_low'], scores['acc_ci95_high'])}) "
        f"{over}, macro F1 {scores['macro_f1_mean']:.3f} ± {scores['macro_f1_std']:.3f}"
    )


def repeats_line(scores: dict) -> str:
    """What the repeats vary and the mean accuracy of each, or '' for a run without repeats."""
    if scores.get("repeats", 1) <= 1:
        return ""
    vary = REPEATS_VARY.get(scores.get("repeats_vary"), str(scores.get("repeats_vary")))
    means = ", ".join(f"{m:.3f}" for m in scores["acc_repeat_means"])
    return (
        f"repeats vary: {vary}; mean accuracy per repeat {means}; std of the repeat means "
        f"{scores['acc_repeat_std']:.3f}"
    )


def missing_line(scores: dict) -> str:
    """A warning naming the unfinished splits the run was asked for, or '' when it is complete."""
    missing = scores["missing_splits"]
    if not missing:
        return ""
    total = scores["n_splits"] + len(missing)
    return (
        f"INCOMPLETE RUN: split(s) {', '.join(map(str, missing))} not finished (no DONE); "
        f"scores cover {scores['n_splits']} of {total} splits"
    )


def leaky_line(scores: dict) -> str:
    """A warning for runs whose protocol leaks (e.g. `random`), or '' for honest ones."""
    if not scores.get("leaky"):
        return ""
    return (
        f"LEAKY PROTOCOL {scores.get('protocol', '')}: {scores.get('leak_reason') or 'see plan.json'}. "
        f"This score measures leakage; do not report it as the model's accuracy"
    )


def summary_table(scores: dict) -> str:
    """Short plain-text table for the terminal: accuracy per fold, then the mean/std/CI line."""
    lines = [leaky_line(scores)] if scores.get("leaky") else []
    repeated = scores.get("repeats", 1) > 1
    lines += [
        f"{'split':>5}  "
        + (f"{'repeat':>6}  " if repeated else "")
        + f"{'test fold':>9}  {'n':>6}  {'accuracy':>8}  {'macro F1':>8}"
    ]
    for row in scores["per_fold"]:
        lines.append(
            f"{row['split']:>5}  "
            + (f"{row['repeat']:>6}  " if repeated else "")
            + f"{row['test_fold']:>9}  {row['n']:>6}  {row['accuracy']:>8.3f}  {row['macro_f1']:>8.3f}"
        )
    lines.append(summary_line(scores))
    if repeated:
        lines.append(repeats_line(scores))
    if scores["missing_splits"]:
        lines.append(missing_line(scores))
    if scores["quarantined"]:
        lines.append(f"{scores['quarantined']} file(s) quarantined (see report.md)")
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame, headers: list[str] | None = None) -> str:
    """A data frame as one Markdown table, through the report document's own table renderer."""
    return to_markdown([Table(headers or [str(c) for c in df.columns], _rows(df))]).rstrip("\n")


def _rows(df: pd.DataFrame) -> list[list[str]]:
    return [[cell(v) for v in row] for row in df.itertuples(index=False)]


def report_document(
    run_dir, scores: dict, fold_df: pd.DataFrame, class_df: pd.DataFrame, quarantine: pd.DataFrame, plan: dict
) -> list[Block]:
    """report.md and report.html, as one list of blocks: what was run, then the results."""
    nested = RunFolder(run_dir).kind() == "nested"
    dataset = f"dataset **{scores['dataset']}**, " if scores.get("dataset") else ""
    protocol = f"protocol `{plan['protocol']}`, " if plan.get("protocol") else ""
    doc: list[Block] = [Heading(1, scores["run"])]
    if scores.get("leaky"):
        doc.append(Note(f"**{leaky_line(scores)}.**", warning=True))
    doc += what_was_run(run_dir, plan, asked_splits(run_dir), nested)
    doc += [
        Heading(2, "Result"),
        Para(
            f"{dataset}{protocol}{len(scores['classes'])} classes, {int(fold_df['n'].sum())} test "
            f"predictions from {scores['n_splits']} finished split(s)."
        ),
        Para(f"**{summary_line(scores)}**"),
    ]
    if scores["missing_splits"]:
        doc.append(
            Note(
                f"**Warning: {missing_line(scores)}.** Mean, std and CI are over the finished splits only.",
                warning=True,
            )
        )
    repeated = scores.get("repeats", 1) > 1
    if repeated:
        doc += _repeats_section(scores)
    columns = ["split", *(["repeat"] if repeated else []), "test_fold", "n", "accuracy", "macro_f1", "best_epoch"]
    doc += [
        Heading(2, "Per fold"),
        Table(
            ["split", *(["repeat"] if repeated else []), "test fold", "n", "accuracy", "macro F1", "chosen epoch"],
            _rows(fold_df[columns]),
        ),
        Para(
            "Chosen epoch: the epoch each split kept (split.json `best_epoch`), chosen on its "
            "validation fold (the last epoch when it has none)."
        ),
        Image("accuracy per fold", "fold_scores.png"),
        Heading(2, "Learning curves"),
        Image("learning curves", "learning_curves.png"),
        Heading(2, "Confusion matrix"),
        Para(
            "Rows are true classes, columns predicted; summed over the test folds"
            + (" of every repeat (each clip counted once per repeat). " if repeated else ". ")
            + "Tables: [counts](confusion_counts.csv), [row-normalised](confusion_normalized.csv)."
        ),
        Image("confusion matrix, row-normalised", "confusion_normalized.png"),
        Image("confusion matrix, counts", "confusion_counts.png"),
        Heading(2, "Per class"),
        Para("Over all test predictions pooled ([per_class.csv](per_class.csv))."),
        Table(
            ["class", "precision", "recall", "F1", "support"],
            _rows(class_df[["class", "precision", "recall", "f1", "support"]]),
        ),
        Heading(2, "Quarantined files"),
    ]
    if quarantine is None:
        doc.append(
            Para(
                "Not shown: this run's DONE markers were written before they covered "
                "quarantine.csv. `cli.py datasets check` lists the files kfold sets aside."
            )
        )
    elif len(quarantine):
        doc += [
            Para(f"{len(quarantine)} file(s) were set aside and are not in any fold:"),
            Table(["clip", "reason"], _rows(quarantine[["clip", "reason"]])),
        ]
    else:
        doc.append(Para("None."))
    checks = [f"warning: {w}" for w in plan.get("warnings", [])] + [str(n) for n in plan.get("notes", [])]
    if checks:
        doc += [Heading(2, "Dataset checks"), Bullets(checks)]
    return doc


def _repeats_section(scores: dict) -> list[Block]:
    """The blocks on a repeated run: what repeats vary, the pooled and per-repeat figures."""
    how = (
        "repeat r draws its folds with protocol seed + r - 1"
        if scores.get("repeats_vary") == "folds"
        else "the folds are the same in every repeat; split k trains with seed + k"
    )
    per_repeat = pd.DataFrame(scores["per_repeat"])
    return [
        Para(f"**{scores['repeats']} repeats; {repeats_line(scores)}.** ({how})"),
        Para(
            f"Mean, std and interval above pool all {scores['n_splits']} splits. The repeats test the "
            "same clips again, so the splits are not independent and that interval is narrower than "
            "the uncertainty of the estimate; the std of the repeat means shows how far the estimate "
            "moves from one repeat to the next."
        ),
        Heading(2, "Per repeat"),
        Table(
            ["repeat", "splits", "accuracy mean", "accuracy std", "macro F1 mean"],
            _rows(per_repeat[["repeat", "splits", "acc_mean", "acc_std", "macro_f1_mean"]]),
        ),
    ]


def build_report(run_dir) -> dict:
    """Compute scores from the finished splits of `run_dir` and write every report file into it:
    scores.json, per_fold.csv, per_class.csv, confusion tables and PNGs, report.md, report.html.

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
        repeated = {
            "repeats": repeats,
            "repeats_vary": plan.get("repeats_vary"),
            **repeat_summary(fold_df),
            "per_repeat": repeat_scores(fold_df).to_dict(orient="records"),
        }
    else:  # a run without repeats: its tables as they were before repeated CV
        fold_df = fold_df.drop(columns="repeat")
    # The epoch each split kept: split.json, vouched for by its DONE (load_predictions verified it).
    fold_df["best_epoch"] = pd.Series(
        [read_split_json(run_dir, int(k)).get("best_epoch") for k in fold_df["split"]],
        index=fold_df.index,
        dtype=object,
    )

    scores = {
        "run": run_name(run_dir),
        "dataset": dataset_name(run_dir),
        "classes": class_names(pred),
        **summary(fold_df),
        "per_fold": fold_df.to_dict(orient="records"),
        "expected_splits": expected_splits(run_dir),
        "missing_splits": missing,
        "quarantined": None if quarantine is None else len(quarantine),  # None: not vouched for
        "protocol": plan.get("protocol"),
        "leaky": bool(plan.get("leaky", False)),
        "leak_reason": plan.get("leak_reason"),
        **repeated,
    }

    with RunFolder(run_dir).publishing() as out:  # no report file is replaced until every one is computed
        atomic_write_json(out / "scores.json", scores)
        atomic_write_csv(out / "per_fold.csv", fold_df)
        atomic_write_csv(out / "per_class.csv", class_df)
        atomic_write_csv(out / "confusion_counts.csv", counts, index=True)
        atomic_write_csv(out / "confusion_normalized.csv", normalized, index=True)
        plot_confusion(counts, out / "confusion_counts.png", f"{scores['run']}: confusion (counts)")
        plot_confusion(normalized, out / "confusion_normalized.png", f"{scores['run']}: confusion (row-normalised)")
        plot_learning_curves(run_dir, out / "learning_curves.png")
        plot_fold_scores(
            fold_df,
            out / "fold_scores.png",
            n_classes=len(scores["classes"]),
            interval=(scores["acc_ci95_low"], scores["acc_ci95_high"]),
        )
        doc = report_document(run_dir, scores, fold_df, class_df, quarantine, plan)
        atomic_write_text(out / "report.md", to_markdown(doc))
        atomic_write_text(out / "report.html", to_html(doc, out, f"{scores['run']}: foldbench report"))
    return scores


def rebuild(run_dir) -> dict:
    """`cli.py report RUN`: every report file of a run folder again, from its verified predictions.
    Refuses a folder that is not a run, one a job is writing, and a split that does not verify."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise RunFolderError(f"{folder.path}: no such folder")
    if not ((folder.path / "config.yaml").is_file() and (folder.path / "folds.csv").is_file()):
        raise RunFolderError(
            f"{folder.path} is not a foldbench run folder (it has no config.yaml and "
            f"folds.csv); give a folder under runs/, e.g. runs/<name>"
        )
    folder._lock()  # a job still writing this folder holds it: its own report follows
    try:
        if not folder.verified():  # each finished split checked; one that fails is named
            raise RunFolderError(f"{folder.path}: no finished split to report (no splits/<k>/DONE)")
        return build_report(folder.path)
    finally:
        folder.release()
