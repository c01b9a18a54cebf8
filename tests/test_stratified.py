"""Protocols `stratified` (plain and group-aware), `random` and `gtzan-filtered`; config -> options."""

import numpy as np
import pandas as pd
import pytest
from torchaudio.datasets import gtzan as ta_gtzan

from bench.core.config import RunConfig, merge
from protocols.plan import make_plan, protocol_options
from protocols import ProtocolError, create_protocol, list_protocols, plan_splits
from protocols.checks import check_plan


def table(counts: dict[str, int], groups=None) -> pd.DataFrame:
    """A manifest without audio: `counts` clips per class, optional group per clip."""
    classes = list(counts)
    rows = [(f"{c}/{c}_{i:03d}.wav", classes.index(c), c) for c in classes for i in range(counts[c])]
    t = pd.DataFrame(rows, columns=["clip", "label", "class"])
    t["path"], t["fold"], t["group"] = t["clip"], np.nan, groups
    return t


def speaker_table(n_speakers=30, clips=2, classes=("a", "b", "c"), one_class_each=True):
    """Speaker-named clips: each speaker records one class (or every class), `clips` clips each."""
    rows = []
    for s in range(n_speakers):
        own = [classes[s % len(classes)]] if one_class_each else classes
        for c in own:
            rows += [(f"{c}/spk{s:02d}_{j}.wav", classes.index(c), c, f"spk{s:02d}") for j in range(clips)]
    return pd.DataFrame(rows, columns=["clip", "label", "class", "group"])


def within_one_of_ideal(t: pd.DataFrame, folds: np.ndarray, n_folds: int) -> bool:
    counts = pd.crosstab(t["class"], folds).reindex(columns=range(1, n_folds + 1), fill_value=0)
    ideal = t.groupby("class").size() / n_folds
    return bool((counts.sub(ideal, axis=0).abs() < 1).all().all())


def test_registry():
    assert {"stratified", "random", "gtzan-filtered", "predefined"} <= set(list_protocols())
    assert repr(create_protocol("stratified", n_folds=5, seed=3)) == "StratifiedFolds(n_folds=5, seed=3)"
    assert repr(create_protocol("random")) == "RandomFolds(n_folds=10, seed=0)"
    assert create_protocol("random").leaky and not getattr(create_protocol("stratified"), "leaky", False)


def test_stratified_counts_within_one_clip_and_seeded():
    t = table({"x": 23, "y": 17, "z": 11})
    p = create_protocol("stratified", n_folds=5, seed=7)
    folds = p.assign(t)
    assert sorted(set(folds)) == [1, 2, 3, 4, 5] and within_one_of_ideal(t, folds, 5)
    assert folds.tolist() == create_protocol("stratified", n_folds=5, seed=7).assign(t).tolist()
    assert folds.tolist() != create_protocol("stratified", n_folds=5, seed=8).assign(t).tolist()
    splits = plan_splits(p, folds)
    assert check_plan(t, folds, splits, ["x", "y", "z"]) == []


def test_class_with_fewer_clips_than_folds_names_it():
    t = table({"x": 10, "lonely": 1, "few": 4})
    with pytest.raises(ProtocolError, match=r"fewer clips than the 5 folds: few \(4 clips\), lonely \(1 clip\)"):
        create_protocol("stratified", n_folds=5).assign(t)
    with pytest.raises(ProtocolError, match=r"lonely \(1 clip\)"):
        create_protocol("random", n_folds=5).assign(t)


@pytest.mark.parametrize("one_class_each", [True, False])
def test_group_aware_folds_keep_speakers_together_and_classes_balanced(one_class_each):
    t = speaker_table(one_class_each=one_class_each)
    p = create_protocol("stratified", n_folds=5, seed=0)
    folds = p.assign(t)
    assert p.group_disjoint
    assert (pd.Series(folds).groupby(t["group"]).nunique() == 1).all()  # no speaker in two folds
    # Groups allow a perfect balance here (equal speakers, equal clips): within one clip of it.
    assert within_one_of_ideal(t, folds, 5)
    # A plain StratifiedKFold (what a groupless run does) would have split speakers.
    plain = create_protocol("stratified", n_folds=5, seed=0).assign(t.assign(group=None))
    assert (pd.Series(plain).groupby(t["group"]).nunique() > 1).any()


def test_random_ignores_groups():
    t = speaker_table()
    folds = create_protocol("random", n_folds=5, seed=0).assign(t)
    assert (pd.Series(folds).groupby(t["group"]).nunique() > 1).any() and within_one_of_ideal(t, folds, 5)


def test_too_few_groups_or_partial_groups():
    t = speaker_table(n_speakers=3, clips=6)
    with pytest.raises(ProtocolError, match="3 group.s. cannot fill 5 folds"):
        create_protocol("stratified", n_folds=5).assign(t)
    t = speaker_table()
    t.loc[[0, 5], "group"] = None
    with pytest.raises(ProtocolError, match="2 clip.s. have no group"):
        create_protocol("stratified", n_folds=5).assign(t)


def gtzan_table() -> pd.DataFrame:
    genres = ta_gtzan.gtzan_genres
    rows = [(f"{g}/{g}.{i:05d}.wav", k, g) for k, g in enumerate(genres) for i in range(100)]
    return pd.DataFrame(rows, columns=["clip", "label", "class"]).assign(group=None)


def test_gtzan_filtered_is_one_split_from_torchaudio_lists():
    t = gtzan_table()
    p = create_protocol("gtzan-filtered")
    folds = p.assign(t)
    stem = t["clip"].str.split("/").str[1].str[:-4]
    assert set(stem[folds == 1]) == set(ta_gtzan.filtered_test)
    assert set(stem[folds == 2]) == set(ta_gtzan.filtered_valid)
    assert set(stem[folds == 3]) == set(ta_gtzan.filtered_train)
    assert (folds == 0).sum() == 70  # the faulty excerpts in no list
    used = folds > 0
    (split,) = p.splits(folds[used])
    assert (split.test_fold, split.val_fold) == (1, 2)
    assert (len(split.train), len(split.val), len(split.test)) == (443, 197, 290)
    kept = t[used].reset_index(drop=True)
    assert check_plan(kept, folds[used], [split], list(ta_gtzan.gtzan_genres), every_clip_tested=False) == []
    with pytest.raises(ProtocolError, match="every clip must be tested exactly once"):
        check_plan(kept, folds[used], [split], list(ta_gtzan.gtzan_genres))
    (no_val,) = p.splits(folds[used], "none")
    assert len(no_val.train) == 640 and len(no_val.val) == 0 and no_val.val_fold is None


def test_gtzan_filtered_refuses_other_datasets():
    with pytest.raises(ProtocolError, match="none of the 6 clips is in its lists"):
        create_protocol("gtzan-filtered").assign(table({"x": 3, "y": 3}))
    only_train = gtzan_table()
    only_train = only_train[only_train["clip"].str.contains("blues.0003")]  # blues 30..39: training list
    with pytest.raises(ProtocolError, match="no clip of its test list"):
        create_protocol("gtzan-filtered").assign(only_train)


def cfg_for(dataset, **kw):
    return merge(RunConfig(), {"dataset.name": dataset, **kw})


def test_protocol_options_from_config():
    assert protocol_options(cfg_for("folder")) == {"n_folds": 5, "seed": 0}  # folder: 5 by default
    assert protocol_options(cfg_for("gtzan")) == {"n_folds": 10, "seed": 0}
    assert protocol_options(cfg_for("gtzan", **{"protocol.folds": 4, "protocol.seed": 2})) == {"n_folds": 4, "seed": 2}
    assert protocol_options(cfg_for("us8k")) == {"n_folds": 10}  # predefined takes no seed
    assert protocol_options(cfg_for("us8k", **{"protocol.name": "random"})) == {"n_folds": 10, "seed": 0}
    assert protocol_options(cfg_for("gtzan", **{"protocol.name": "gtzan-filtered"})) == {}
    with pytest.raises(ProtocolError, match="--folds 5: protocol gtzan-filtered has fixed lists"):
        protocol_options(cfg_for("gtzan", **{"protocol.name": "gtzan-filtered", "protocol.folds": 5}))


def test_make_plan_finds_identical_audio(tiny_us8k_master, tmp_path):
    from bench.data.datasets import create_dataset
    from protocols.plan import copies_across_folds, label_conflicts

    ds = create_dataset(
        merge(RunConfig(), {"dataset.name": "us8k", "dataset.root": str(tiny_us8k_master)}).dataset, tmp_path
    )
    hashes = [f"h{i}" for i in range(len(ds.table))]
    first, last = 0, len(ds.table) - 1  # fold 1 and fold 10, class 0 and class 2
    hashes[last] = hashes[first]
    cfg = merge(RunConfig(), {"dataset.name": "us8k"})
    plan = make_plan(cfg, ds, np.ones(len(ds.table), dtype=bool), hashes)
    assert plan.duplicates["clip"].tolist() == sorted([ds.table["clip"][first], ds.table["clip"][last]])
    assert "fold 1" in copies_across_folds(plan.duplicates) and "fold 10" in copies_across_folds(plan.duplicates)
    assert "different labels" in label_conflicts(plan.duplicates)
    assert any("more than one fold" in w for w in plan.warnings)
    ok = np.ones(len(ds.table), dtype=bool)
    ok[last] = False  # quarantined: no longer a copy
    assert make_plan(cfg, ds, ok, hashes).duplicates.empty
