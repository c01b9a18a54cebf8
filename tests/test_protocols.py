"""Fold plans: the predefined protocol on UrbanSound8K-layout data, the split scheme, the invariants."""

import numpy as np
import pandas as pd
import pytest

from bench.core.config import DatasetConfig
from bench.data.datasets import create_dataset
from protocols import (
    PROTOCOLS,
    Protocol,
    ProtocolError,
    Split,
    create_protocol,
    list_protocols,
    make_splits,
    plan_splits,
    register_protocol,
)
from protocols.checks import check_plan


@pytest.fixture
def manifest(tiny_us8k_master, tmp_path):
    return create_dataset(DatasetConfig("us8k", str(tiny_us8k_master)), tmp_path)


def test_fold_ids_equal_the_metadata(manifest, tiny_us8k_master):
    folds = create_protocol("predefined").assign(manifest.table)
    meta = pd.read_csv(tiny_us8k_master / "metadata" / "UrbanSound8K.csv")
    assert folds.tolist() == meta["fold"].tolist()
    assert manifest.classes == ["air_conditioner", "car_horn", "children_playing"]
    assert manifest.table["group"].tolist() == meta["fsID"].astype(str).tolist()


def test_every_clip_tested_once_and_parts_disjoint(manifest):
    folds = create_protocol("predefined").assign(manifest.table)
    splits = make_splits(folds, "next")
    assert [s.test_fold for s in splits] == list(range(1, 11))
    assert [s.val_fold for s in splits] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 1]
    tested = np.sort(np.concatenate([s.test for s in splits]))
    assert tested.tolist() == list(range(len(manifest.table)))
    for s in splits:
        assert set(folds[s.test]) == {s.test_fold} and set(folds[s.val]) == {s.val_fold}
        assert not ({s.test_fold, s.val_fold} & set(folds[s.train]))
        assert len(s.train) + len(s.val) + len(s.test) == len(folds)
        assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
    assert check_plan(manifest.table, folds, splits, manifest.classes) == []


def test_val_none_trains_on_all_other_folds(manifest):
    folds = create_protocol("predefined").assign(manifest.table)
    for s in make_splits(folds, "none"):
        assert s.val_fold is None and len(s.val) == 0
        assert set(folds[s.train]) == set(range(1, 11)) - {s.test_fold}


@pytest.mark.parametrize("value", [0, 11, None, "x"])
def test_fold_missing_or_out_of_range_is_refused(manifest, value):
    table = manifest.table.copy()
    table["fold"] = table["fold"].astype(object)
    table.loc[3, "fold"] = value
    with pytest.raises(ProtocolError, match=r"outside 1\.\.10.*" + table.loc[3, "clip"]):
        create_protocol("predefined").assign(table)


def test_class_absent_from_a_training_set_is_refused(manifest):
    table = manifest.table
    keep = ~((table["label"] == 1) & ~table["fold"].isin([1, 2]))  # car_horn only in folds 1 and 2
    table = table[keep].reset_index(drop=True)
    folds = create_protocol("predefined").assign(table)
    with pytest.raises(ProtocolError, match="car_horn absent from the training set"):
        check_plan(table, folds, make_splits(folds), manifest.classes)


def test_groups_in_two_folds_warn_and_are_listed(manifest):
    table = manifest.table.copy()
    table.loc[0, "group"] = table.loc[len(table) - 1, "group"]  # same fsID in fold 1 and fold 10
    folds = create_protocol("predefined").assign(table)
    warnings = check_plan(table, folds, make_splits(folds), manifest.classes)
    assert len(warnings) == 1 and table.loc[0, "group"] in warnings[0]
    with pytest.raises(ProtocolError):
        check_plan(table, folds, make_splits(folds), manifest.classes, groups_must_not_cross=True)


def test_registry_and_repr():
    assert "predefined" in list_protocols()
    assert repr(create_protocol("predefined", n_folds=5)) == "PredefinedFolds(n_folds=5, column='fold')"
    with pytest.raises(ProtocolError, match="unknown protocol"):
        create_protocol("nope")


def test_every_protocol_subclasses_the_base_with_its_defaults():
    for name in list_protocols():
        p = create_protocol(name)
        assert isinstance(p, Protocol) and p.name == name, name
        assert isinstance(p.leaky, bool) and isinstance(p.cross_validated, bool)
        assert isinstance(p.group_disjoint, bool) and (p.leak_reason is None) == (not p.leaky)
    plain = create_protocol("predefined")
    assert (plain.leaky, plain.leak_reason, plain.cross_validated, plain.group_disjoint) == (False, None, True, False)
    assert create_protocol("random").leaky and not create_protocol("gtzan-filtered").cross_validated


def test_repr_shows_the_config_and_unknown_options_are_refused():
    assert repr(create_protocol("stratified")) == "StratifiedFolds(n_folds=10, seed=0)"
    assert repr(create_protocol("random", seed=7)) == "RandomFolds(n_folds=10, seed=7)"
    assert repr(create_protocol("gtzan-filtered")) == "GtzanFiltered()"
    with pytest.raises(ProtocolError, match="protocol predefined takes no option seed; its options: n_folds, column"):
        create_protocol("predefined", seed=1)


def test_splits_come_from_the_protocol():
    folds = np.repeat([1, 2, 3], 2)
    assert [s.test_fold for s in plan_splits(create_protocol("predefined"), folds)] == [1, 2, 3]
    assert len(plan_splits(create_protocol("gtzan-filtered"), folds)) == 1  # its own: one split

    @register_protocol("test-everything-tested-in-one")
    class OneSplit(Protocol):
        def assign(self, table):
            return np.ones(len(table), dtype=int)

        def splits(self, folds, val="next"):
            return [Split(1, 1, None, np.array([], int), np.array([], int), np.arange(len(folds)))]

    try:
        assert len(plan_splits(create_protocol("test-everything-tested-in-one"), folds)) == 1
        with pytest.raises(TypeError, match="must subclass protocols.Protocol"):
            register_protocol("not-a-protocol")(type("Loose", (), {}))
    finally:
        PROTOCOLS.pop("test-everything-tested-in-one")
