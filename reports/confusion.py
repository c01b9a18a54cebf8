"""Confusion matrices from saved predictions: counts summed over folds, row-normalised, heatmaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from reports.aggregate import class_names  # noqa: E402
from reports.plots import save_png  # noqa: E402


def confusion_counts(pred_df: pd.DataFrame) -> pd.DataFrame:
    """Counts over all test predictions (= the per-fold matrices summed): rows true, columns predicted.

    Every class has a row and a column, in class-id order, even when never predicted or absent.
    """
    names = class_names(pred_df)
    counts = confusion_matrix(pred_df["label"], pred_df["pred"], labels=list(range(len(names))))
    return pd.DataFrame(counts, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


def normalize_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each row divided by its total (recall on the diagonal); a row with no support stays 0."""
    totals = df.sum(axis=1)
    return df.div(totals.where(totals > 0, 1), axis=0).astype(float)


def _cell_text(value, is_count: bool, n: int) -> str:
    many = n > 20  # at many classes: blank zeros, ".47" for 0.47, to keep cells readable
    if value == 0:
        return "" if many else "0"
    if is_count:
        return f"{int(value)}"
    text = f"{value:.2f}"
    return text[1:] if many and text.startswith("0.") else text


def plot_confusion(df: pd.DataFrame, path, title: str) -> None:
    """Heatmap of a confusion matrix (counts or normalised) with class names on both axes, the value
    in every cell (zeros left blank above 20 classes) and a colour bar. Figure and font sizes scale
    with the number of classes."""
    n = len(df)
    values = df.to_numpy()
    is_count = all(pd.api.types.is_integer_dtype(t) for t in df.dtypes)
    side = max(5.0, 0.4 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    vmax = values.max() if is_count else 1.0
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(vmax, 1e-12), interpolation="nearest")
    cbar = fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.03, shrink=0.8, label="count" if is_count else "fraction of row"
    )
    if is_count:
        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()

    fontsize = float(np.clip(130 / max(n, 1), 5, 10))
    for i in range(n):
        for j in range(values.shape[1]):
            text = _cell_text(values[i, j], is_count, n)
            if text:
                dark = values[i, j] > 0.5 * vmax
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if dark else "black",
                    in_layout=False,
                )

    label_size = float(np.clip(200 / max(n, 1), 7, 10))
    ax.set_xticks(
        range(values.shape[1]),
        [str(c) for c in df.columns],
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=label_size,
    )
    ax.set_yticks(range(n), [str(c) for c in df.index], fontsize=label_size)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    save_png(fig, path)
