"""The declarative loader for CSV-metadata corpora (`bench.data.csv_corpus`), on the example that
docs/extending.md gives: an ESC-50-layout corpus declared in a few lines, with predefined folds and
group = src_file. UrbanSound8K, the other declaration, is tested in test_metadata.py."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bench.core.config import DatasetConfig
from bench.data.csv_corpus import CsvCorpus
from bench.data.datasets import DATASETS, DatasetError, create_dataset
from bench.drivers.kfold import run_cv
from protocols.plan import make_plan
from tests.conftest import fast_config

NAME = "esc50-tiny"  # registered for one test at a time, never under bench/data (no real `esc50` kind)
CATEGORIES = ["dog", "rain", "crow"]

# The declaration docs/extending.md shows for ESC-50.
ESC50 = CsvCorpus(
    metadata="meta/esc50.csv",
    file="filename",
    label="target",
    class_name="category",
    fold="fold",
    group="src_file",
    n_folds=5,
    clip="{filename}",
)


def test_the_declaration_is_the_one_docs_extending_shows():
    """docs/extending.md's `bench/data/esc50.py`, run without its register line, declares ESC50."""
    doc = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    block = re.search(r"`bench/data/esc50\.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    assert 'ESC50.register("esc50")\n' in block
    scope: dict = {}
    exec(block.replace('ESC50.register("esc50")\n', ""), scope)
    assert scope["ESC50"] == ESC50


@pytest.fixture
def esc50(tmp_path):
    """ESC-50's layout in miniature: 3 classes x 5 folds x 2 clips cut from one source recording
    each, 0.5 s at 8 kHz, `meta/esc50.csv` with ESC-50's columns and `audio/<fold>-<src>-<take>-<target>.wav`."""
    root = tmp_path / "ESC-50"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, 6):
        for target, category in enumerate(CATEGORIES):
            src = f"{100000 + 10 * fold + target}"
            for take in "AB":
                filename = f"{fold}-{src}-{take}-{target}.wav"
                tone = np.sin(2 * np.pi * (300 + 400 * target) * np.arange(4000) / 8000)
                sf.write(root / "audio" / filename, (0.3 * tone + 0.05 * rng.standard_normal(4000)), 8000)
                rows.append((filename, fold, target, category, target == 0, src, take))
    columns = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "meta" / "esc50.csv", index=False)
    return root


@pytest.fixture
def registered():
    """ESC50 registered as `esc50-tiny` for this test only: the registries stay what names.py reads."""
    ESC50.register(NAME)
    yield NAME
    DATASETS.pop(NAME)


def test_the_declaration_loads_predefined_folds_and_src_file_groups(esc50, registered, tmp_path):
    kind = DATASETS[registered]
    assert (kind.protocol, kind.folds) == ("predefined", 5)
    assert kind.layout == "meta/esc50.csv (filename,src_file,fold,target,category) and audio/<filename>"
    ds = create_dataset(DatasetConfig(registered, str(esc50)), tmp_path / "cache")
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    assert ds.name == registered and ds.protocol == "predefined" and ds.classes == CATEGORIES
    assert ds.table["clip"].tolist() == meta["filename"].tolist()
    assert ds.table["path"].tolist() == [str(esc50.resolve() / "audio" / f) for f in meta["filename"]]
    assert ds.table["fold"].tolist() == meta["fold"].tolist() and ds.table["label"].tolist() == meta["target"].tolist()
    assert ds.table["group"].tolist() == meta["src_file"].astype(str).tolist()
    # The plan: the metadata's 5 folds as they are; split k tests fold k and validates on fold k+1.
    cfg = fast_config(tmp_path, esc50, **{"dataset.name": registered})
    plan = make_plan(cfg, ds, np.ones(len(ds.table), dtype=bool))
    assert repr(plan.protocol).startswith("PredefinedFolds(n_folds=5") and plan.folds.tolist() == meta["fold"].tolist()
    assert [(s.test_fold, s.val_fold) for s in plan.splits] == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 1)]


def test_a_bad_row_is_named_and_the_rest_loads(esc50, registered, tmp_path):
    csv = esc50 / "meta" / "esc50.csv"
    meta = pd.read_csv(csv)
    meta.loc[3, "fold"] = 6
    meta.loc[6, "category"] = "rain"  # target 0 is 'dog' in every other row
    meta.to_csv(csv, index=False)
    problems = []
    ds = create_dataset(DatasetConfig(registered, str(esc50)), tmp_path / "cache", problems)
    assert problems == [
        f"{csv} row 5: fold 6 is not one of the folds 1..5 that the predefined protocol requires; fix it",
        f"{csv} row 8: target 0 with category 'rain', but target 0 is 'dog' in row 2 and 8 other row(s) and "
        "'rain' is target 1 in row 4 and 9 other row(s) (one category per target, one target per category); "
        "fix this row",
    ]
    assert len(ds.table) == len(meta) - 2
    with pytest.raises(DatasetError, match=r"^2 problems in the dataset"):
        create_dataset(DatasetConfig(registered, str(esc50)), tmp_path / "cache")
    csv.unlink()
    with pytest.raises(DatasetError, match=r"esc50\.csv: metadata file not found \(expected layout: meta/esc50"):
        create_dataset(DatasetConfig(registered, str(esc50)), tmp_path / "cache")


def test_the_declared_corpus_cross_validates(esc50, registered, tmp_path):
    cfg = fast_config(tmp_path, esc50, **{"dataset.name": registered, "train.epochs": 1}, splits=[1])
    result = run_cv(cfg, progress=False)
    folds = pd.read_csv(result.run_dir / "folds.csv")
    assert sorted(folds["fold"].unique()) == [1, 2, 3, 4, 5] and len(folds) == 30
    assert result.scores["n_splits"] == 1 and result.quarantine.empty
