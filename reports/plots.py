"""Run plots: learning curves per split, accuracy per fold. PNGs, written atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.files import atomic_path, done_splits, read_history, read_split_json  # noqa: E402

DPI = 120


def save_png(fig, path) -> None:
    """Save `fig` as PNG atomically and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)  # callers lay out with tight_layout
    finally:
        plt.close(fig)


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _best_row(history: pd.DataFrame, best_epoch) -> pd.DataFrame:
    """The history row of the selected epoch (matched on the `epoch` column), or an empty frame."""
    if best_epoch is None:
        return history.iloc[0:0]
    return history[history["epoch"] == best_epoch]


def plot_learning_curves(run_dir, path) -> None:
    """Two panels, train_loss and val_acc per epoch, one line per finished split; a star marks the
    epoch that split selected (split.json `best_epoch`)."""
    splits = done_splits(run_dir)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    no_val = []
    for k, color in zip(splits, _colors(len(splits))):
        hist = read_history(run_dir, k)
        info = read_split_json(run_dir, k)
        best = _best_row(hist, info.get("best_epoch"))
        label = f"split {k} (test fold {info.get('test_fold', '?')})"
        ax_loss.plot(hist["epoch"], hist["train_loss"], color=color, lw=1.2, label=label)
        ax_loss.plot(best["epoch"], best["train_loss"], "*", color=color, ms=12, mec="black", mew=0.6)
        val = pd.to_numeric(hist["val_acc"], errors="coerce")
        if val.isna().all():
            no_val.append(k)
        else:
            ax_val.plot(hist["epoch"], val, color=color, lw=1.2, label=label)
            ax_val.plot(
                best["epoch"],
                pd.to_numeric(best["val_acc"], errors="coerce"),
                "*",
                color=color,
                ms=12,
                mec="black",
                mew=0.6,
            )
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="train_loss")
    ax_val.set(title="validation accuracy (star: selected epoch)", xlabel="epoch", ylabel="val_acc")
    if no_val:
        note = (
            "no validation fold"
            if len(no_val) == len(splits)
            else f"no validation fold: split {', '.join(map(str, no_val))}"
        )
        ax_val.text(
            0.5,
            0.5 if len(no_val) == len(splits) else 0.03,
            note,
            ha="center",
            va="center" if len(no_val) == len(splits) else "bottom",
            transform=ax_val.transAxes,
            color="gray",
        )
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if splits:
        ax_loss.legend(fontsize=7, ncol=2 if len(splits) > 5 else 1)
    fig.tight_layout()
    save_png(fig, path)


def plot_fold_scores(
    fold_df: pd.DataFrame, path, n_classes: int | None = None, interval: tuple[float | None, float | None] | None = None
) -> None:
    """Accuracy per split as bars (labelled with the test fold), the mean as a dashed line, the 95 %
    interval of the mean as a band around it (none for one split), and chance (1 / n_classes)."""
    n = len(fold_df)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * n + 2), 4))
    x = np.arange(n)
    acc = fold_df["accuracy"].to_numpy(dtype=float)
    bars = ax.bar(x, acc, color="tab:blue", alpha=0.8, zorder=2)
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in acc], fontsize=8, padding=2)
    title = "test accuracy per fold"
    if n:
        ax.axhline(acc.mean(), color="tab:red", ls="--", lw=1.5, label=f"mean {acc.mean():.3f}")
    low, high = interval or (None, None)
    if low is not None and high is not None:
        ax.axhspan(
            low,
            high,
            color="tab:red",
            alpha=0.12,
            lw=0,
            zorder=0,
            label=f"95 % interval of the mean {low:.3f}–{high:.3f}",
        )
    elif n == 1:
        title += "\none split: no interval"
    if n_classes and n_classes > 1:
        ax.axhline(1 / n_classes, color="gray", ls=":", lw=1.5, label=f"chance (1/{n_classes})")
    repeated = "repeat" in fold_df.columns and fold_df["repeat"].nunique() > 1
    ax.set_xticks(
        x,
        [
            f"{int(r)}.{int(f)}" if repeated else f"{int(f)}"
            for r, f in zip(fold_df.get("repeat", fold_df["test_fold"]), fold_df["test_fold"])
        ],
    )
    ax.set(xlabel="repeat.test fold" if repeated else "test fold", ylabel="accuracy", ylim=(0, 1.3), title=title)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # above the bars, which end at 1 (and their labels)
        ax.legend(loc="upper left", ncol=2, fontsize=7, framealpha=0.9)
    fig.tight_layout()
    save_png(fig, path)


def plot_comparison(result: dict, path) -> None:
    """`compare`'s figure: accuracy per split of every run, one x position per run, best first; grey
    lines join a split across runs that were paired (same data, same folds; dotted where they pass
    a run of another fold plan); hollow markers: a run paired with no other; a black bar: the run's
    mean; dashed: chance (1 / classes)."""
    runs = result["runs"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(runs) + 2), 4.8))
    index = {r["run"]: i for i, r in enumerate(runs)}
    group = list(range(len(runs)))  # runs on one fold plan share the group of the run they pair with
    for i, r in enumerate(runs[1:], start=1):
        if r["vs_best"]["paired"]:
            group[i] = group[index[r["vs"]]]
    paired = [i for i in range(len(runs)) if group.count(group[i]) > 1]
    for g in set(group[i] for i in paired):
        by_split: dict[int, list[tuple[int, float]]] = {}
        for i in (i for i in paired if group[i] == g):
            for s in runs[i]["splits"]:
                by_split.setdefault(s["split"], []).append((i, s["accuracy"]))
        for points in by_split.values():
            points = sorted(points)
            for (x0, y0), (x1, y1) in zip(points, points[1:]):  # dotted where it passes another plan's run
                ax.plot([x0, x1], [y0, y1], color="gray", alpha=0.45, lw=1, zorder=1, ls="-" if x1 == x0 + 1 else ":")
    for i, (r, color) in enumerate(zip(runs, _colors(len(runs)))):
        acc = [s["accuracy"] for s in r["splits"]]
        jitter = np.linspace(-0.08, 0.08, len(acc)) if len(acc) > 1 and i not in paired else np.zeros(len(acc))
        ax.scatter(
            i + jitter, acc, s=28, zorder=2, color=color if i in paired else "none", edgecolors=color, linewidths=1.3
        )
        ax.hlines(r["acc_mean"], i - 0.25, i + 0.25, color="black", lw=2, zorder=3)
    n_classes = runs[0].get("n_classes") or 0
    if n_classes > 1:
        ax.axhline(1 / n_classes, color="tab:red", ls="--", lw=1, label=f"chance (1/{n_classes})")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xticks(
        range(len(runs)),
        [f"{r['rank']}. {r['run']}" + (" (LEAKY)" if r["leaky"] else "") for r in runs],
        rotation=20 if len(runs) > 3 else 0,
        ha="right" if len(runs) > 3 else "center",
    )
    title = "test accuracy per split, best first\n(bar: mean; grey lines: one split across runs on the same folds)"
    if len(paired) < len(runs):
        title += "\nhollow: paired with no other run (other folds or data)"
    ax.set(ylabel="accuracy", ylim=(0, 1.05), xlim=(-0.5, len(runs) - 0.5), title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
