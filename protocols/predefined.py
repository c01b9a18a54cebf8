"""Folds that come with the data: UrbanSound8K's `fold` column (and any ESC-50-style fold column)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import Protocol, ProtocolError, register_protocol


@register_protocol("predefined")
class PredefinedFolds(Protocol):
    """Use the manifest's `fold` column as it is; refuse missing or out-of-range values."""

    def __init__(self, n_folds: int = 10, column: str = "fold"):
        if n_folds < 2:
            raise ProtocolError(f"n_folds must be at least 2, got {n_folds}")
        self.n_folds = n_folds
        self.column = column

    def assign(self, table: pd.DataFrame) -> np.ndarray:
        if self.column not in table.columns:
            raise ProtocolError(
                f"the manifest has no {self.column!r} column: this dataset has no "
                f"predefined folds; use --protocol stratified"
            )
        folds = pd.to_numeric(table[self.column], errors="coerce")
        bad = folds.isna() | ~folds.isin(range(1, self.n_folds + 1))
        if bad.any():
            rows = table.loc[bad, "clip"].head(5).tolist()
            values = table.loc[bad, self.column].head(5).tolist()
            raise ProtocolError(
                f"{int(bad.sum())} clip(s) have a fold missing or outside 1..{self.n_folds}, e.g. "
                + ", ".join(f"{c} (fold={v!r})" for c, v in zip(rows, values))
            )
        return folds.astype(int).to_numpy()
