"""Fixed train/validation/test lists: one split instead of k folds.

`gtzan-filtered` is the fault-filtered, artist-disjoint partition of GTZAN by Kereliuk, Sturm and
Larsen (2015), as torchaudio ships it (`torchaudio.datasets.gtzan`: `filtered_train`,
`filtered_valid`, `filtered_test`; 443 + 197 + 290 of the 1,000 excerpts). Such a protocol still
writes one fold id per clip (1 = test list, 2 = validation list, 3 = training list, 0 = in no list,
left out), and provides its own `splits`: the single split that tests fold 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import Protocol, ProtocolError, Split, register_protocol

TEST, VAL, TRAIN, LEFT_OUT = 1, 2, 3, 0


class FixedSplit(Protocol):
    """Base: `lists()` gives {TEST: ids, VAL: ids, TRAIN: ids}; a clip's id is its file stem."""

    cross_validated = False  # one split: each clip is in exactly one part, not tested once per fold

    def lists(self) -> dict[int, list[str]]:
        raise NotImplementedError

    def assign(self, table: pd.DataFrame) -> np.ndarray:
        role = {clip_id: fold for fold, ids in self.lists().items() for clip_id in ids}
        stems = [c.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower() for c in table["clip"]]
        folds = np.array([role.get(s, LEFT_OUT) for s in stems], dtype=int)
        if not (folds > 0).any():
            raise ProtocolError(
                f"protocol {self.name}: none of the {len(table)} clips is in its lists "
                f"(e.g. {', '.join(stems[:3])}): it needs the dataset it was made for"
            )
        for fold, part in ((TEST, "test"), (VAL, "validation"), (TRAIN, "training")):
            if not (folds == fold).any():
                raise ProtocolError(f"protocol {self.name}: no clip of its {part} list is in this dataset")
        return folds

    def splits(self, folds: np.ndarray, val: str = "next") -> list[Split]:
        if val not in ("next", "none"):
            raise ProtocolError(f"val must be 'next' or 'none', not {val!r}")
        folds = np.asarray(folds)
        test, valid, train = (np.flatnonzero(folds == f) for f in (TEST, VAL, TRAIN))
        if val == "none":  # train on the validation list too; the last epoch is kept
            return [Split(1, TEST, None, np.sort(np.concatenate([train, valid])), valid[:0], test)]
        return [Split(1, TEST, VAL, train, valid, test)]


@register_protocol("gtzan-filtered")
class GtzanFiltered(FixedSplit):
    """GTZAN only: one split, the artist-disjoint, fault-filtered lists of Kereliuk et al. (2015)
    (torchaudio's filtered_train/valid/test); the 70 faulty excerpts in no list are left out."""

    def lists(self) -> dict[int, list[str]]:
        from torchaudio.datasets import gtzan

        return {TEST: gtzan.filtered_test, VAL: gtzan.filtered_valid, TRAIN: gtzan.filtered_train}
