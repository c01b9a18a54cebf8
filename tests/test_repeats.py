"""Repeated cross-validation (`protocol.repeats`, `kfold --repeats R`): R fold plans in one run.

Plans are checked on manifests without audio; the run tests train a tiny model for one epoch.
"""

import json
import os
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core.config import ConfigError, merge
from bench.core.validation import validate
from bench.data.manifest import Dataset
from protocols.plan import copies_across_folds, duplicate_sets, make_plan
from bench.core.runfolder import RunFolder, RunFolderError, result_view
from bench.data.synth import write_folder_dataset
from protocols import PROTOCOLS
from protocols.checks import check_plan
from tests.conftest import fast_config

CLASSES = ["a", "b", "c"]


def dataset(kind="folder", clips=12, groups=None, fold=None) -> Dataset:
    """A manifest without audio (make_plan never reads files): `clips` per class."""
    rows = [(f"{c}/{c}_{i:03d}.wav", CLASSES.index(c), c) for c in CLASSES for i in range(clips)]
    t = pd.DataFrame(rows, columns=["clip", "label", "class"])
    t["path"], t["fold"], t["group"] = t["clip"], fold, groups
    protocol = "predefined" if kind == "us8k" else "stratified"
    return Dataset(kind, Path("/nonexistent"), t, CLASSES, protocol)


def plan_for(ds: Dataset, **settings):
    cfg = merge(fast_config(Path("/tmp/unused")), {"dataset.name": ds.name, **settings})
    return make_plan(validate(cfg), ds, np.ones(len(ds.table), dtype=bool))


def repeat_splits(plan, r):
    return [s for s in plan.splits if s.repeat == r]


def partition(plan, r) -> set:
    """Repeat r's test sets, as a set of clip sets (fold numbering does not matter)."""
    return {frozenset(s.test.tolist()) for s in repeat_splits(plan, r)}


def assert_valid_repeat(plan, r, n_folds):
    """Every fold invariant of repeat r, checked here directly and by `check_plan`."""
    folds, splits, labels = plan.repeat_folds[r - 1], repeat_splits(plan, r), plan.table["label"].to_numpy()
    check_plan(plan.table, folds, splits, CLASSES, groups_must_not_cross=plan.protocol.group_disjoint)
    assert [s.index for s in splits] == [(r - 1) * n_folds + k for k in range(1, n_folds + 1)]
    assert [s.test_fold for s in splits] == list(range(1, n_folds + 1))
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested.tolist()) == list(range(len(plan.table)))  # every clip tested once
    for s in splits:
        assert (np.flatnonzero(folds == s.test_fold) == np.sort(s.test)).all()
        assert (folds[s.val] == s.val_fold).all() and s.val_fold != s.test_fold
        parts = [set(s.train.tolist()), set(s.val.tolist()), set(s.test.tolist())]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(parts[0]) + len(parts[1]) + len(parts[2]) == len(plan.table)
        assert set(labels[s.train].tolist()) == {0, 1, 2}  # every class in every training set


# ---- plans ----


def test_protocols_say_whether_they_can_be_reshuffled():
    assert PROTOCOLS["stratified"].reshufflable and PROTOCOLS["random"].reshufflable
    assert not PROTOCOLS["predefined"].reshufflable and not PROTOCOLS["gtzan-filtered"].reshufflable


@pytest.mark.parametrize("protocol", ["stratified", "random"])
def test_reshufflable_repeats_are_different_valid_plans(protocol):
    plan = plan_for(dataset(), **{"protocol.name": protocol, "protocol.folds": 4, "protocol.repeats": 3})
    assert plan.repeats == 3 and plan.repeats_vary == "folds" and len(plan.splits) == 12
    assert [s.repeat for s in plan.splits] == [1] * 4 + [2] * 4 + [3] * 4
    for r in (1, 2, 3):
        assert_valid_repeat(plan, r, 4)
    for a, b in combinations((1, 2, 3), 2):
        assert partition(plan, a) != partition(plan, b), f"repeats {a} and {b} have the same folds"
    summary = plan.summary()
    assert summary["repeats"] == 3 and summary["repeats_vary"] == "folds"
    assert [s["repeat"] for s in summary["splits"]] == [1] * 4 + [2] * 4 + [3] * 4


def test_repeat_one_is_the_plan_without_repeats_and_repeat_r_reseeds():
    ds = dataset()
    one = plan_for(ds, **{"protocol.folds": 4, "protocol.seed": 5})
    three = plan_for(ds, **{"protocol.folds": 4, "protocol.seed": 5, "protocol.repeats": 3})
    assert one.repeats == 1 and len(one.splits) == 4
    assert np.array_equal(one.folds, three.folds) and np.array_equal(three.folds, three.repeat_folds[0])
    for a, b in zip(one.splits, three.splits[:4]):
        assert (a.index, a.repeat, a.test_fold, a.val_fold) == (b.index, b.repeat, b.test_fold, b.val_fold)
        assert all(np.array_equal(x, y) for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)))
    seed_7 = plan_for(ds, **{"protocol.folds": 4, "protocol.seed": 7})  # repeat 3: seed 5 + 3 - 1
    assert np.array_equal(three.repeat_folds[2], seed_7.folds)


def test_grouped_repeats_keep_every_group_in_one_fold():
    groups = [f"spk{i // 2:02d}" for i in range(36)]  # 18 speakers, 2 clips each, one class each
    plan = plan_for(dataset(groups=groups), **{"protocol.folds": 3, "protocol.repeats": 3})
    assert plan.protocol.group_disjoint
    for r in (1, 2, 3):
        assert_valid_repeat(plan, r, 3)
        per_group = pd.Series(plan.repeat_folds[r - 1]).groupby(plan.table["group"]).nunique()
        assert (per_group == 1).all(), f"repeat {r}: a speaker in two folds"
    assert len({frozenset(partition(plan, r)) for r in (1, 2, 3)}) == 3


def test_fixed_folds_are_kept_and_only_the_split_numbers_run_on():
    fold = np.tile(np.arange(1, 5), 9)  # 36 clips, predefined folds 1..4
    plan = plan_for(dataset("us8k", fold=fold), **{"protocol.repeats": 2})
    assert plan.repeats == 2 and plan.repeats_vary == "seed"
    assert np.array_equal(plan.repeat_folds[0], fold) and np.array_equal(plan.repeat_folds[1], fold)
    assert [s.index for s in plan.splits] == list(range(1, 9)) and plan.splits[4].repeat == 2
    for a, b in zip(repeat_splits(plan, 1), repeat_splits(plan, 2)):
        assert a.test_fold == b.test_fold and np.array_equal(a.test, b.test) and a.index + 4 == b.index


def test_fixed_lists_repeat_their_one_split():
    from torchaudio.datasets import gtzan as ta_gtzan

    genres = list(ta_gtzan.gtzan_genres)
    rows = [(f"{g}/{g}.{i:05d}.wav", k, g) for k, g in enumerate(genres) for i in range(100)]
    t = pd.DataFrame(rows, columns=["clip", "label", "class"]).assign(path=lambda d: d["clip"], group=None)
    ds = Dataset("gtzan", Path("/nonexistent"), t, genres, "stratified")
    plan = plan_for(ds, **{"protocol.name": "gtzan-filtered", "protocol.repeats": 3})
    assert plan.repeats_vary == "seed" and len(plan.left_out) == 70
    assert [(s.index, s.repeat, s.test_fold) for s in plan.splits] == [(1, 1, 1), (2, 2, 1), (3, 3, 1)]
    assert all(
        np.array_equal(s.test, plan.splits[0].test) and np.array_equal(s.train, plan.splits[0].train)
        for s in plan.splits
    )
    assert plan.warnings == plan_for(ds, **{"protocol.name": "gtzan-filtered"}).warnings  # said once


def test_copies_across_folds_in_a_later_repeat_are_found():
    table = dataset().table.head(4)
    hashes = ["h1", "h1", "h2", "h3"]
    dups = duplicate_sets(table, [np.array([1, 1, 2, 3]), np.array([1, 2, 2, 3])], hashes)
    assert list(dups.columns) == ["set", "clip", "class", "fold", "fold_2"]
    message = copies_across_folds(dups)
    assert message and "in repeat 2" in message and "fold 2" in message
    assert copies_across_folds(duplicate_sets(table, [np.array([1, 1, 2, 3])] * 2, hashes)) is None


def test_repeats_setting_is_checked_and_decides_results(tmp_path):
    for bad in (0, 101):
        with pytest.raises(ConfigError, match="protocol.repeats"):
            validate(fast_config(tmp_path, **{"protocol.repeats": bad}))
    assert "protocol.repeats" not in result_view(fast_config(tmp_path))  # as runs before repeats
    assert result_view(fast_config(tmp_path, **{"protocol.repeats": 3}))["protocol.repeats"] == 3
    from bench.commands.configs import build_config
    from cli import main, make_parser

    args = make_parser().parse_args(["kfold", "--repeats", "3"])
    assert build_config(args).protocol.repeats == 3
    speed = make_parser().parse_args(["speed", "--repeats", "5"])  # speed's own rounds, not CV repeats
    assert build_config(speed).protocol.repeats == 1
    assert main(["kfold", "--repeats", "0", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


# ---- runs ----


@pytest.fixture(scope="module")
def sounds_master(tmp_path_factory):
    """<root>/<class>/<speaker>_NN.wav: 3 classes x 6 speakers x 2 clips, 0.25 s at 8 kHz."""
    root = tmp_path_factory.mktemp("folder") / "sounds"
    spec = {
        c: [f"{s}_{j:02d}" for s in ("ann", "bob", "cy", "dee", "eve", "fay") for j in range(2)]
        for c in ("cat", "dog", "owl")
    }
    write_folder_dataset(root, spec, sr=8000, duration=0.25)
    return root


def test_repeated_run_verifies_reports_and_resumes(sounds_master, tmp_path):
    from bench.drivers.kfold import run_cv

    cfg = fast_config(
        tmp_path,
        sounds_master,
        name="rep",
        **{"dataset.name": "folder", "protocol.folds": 3, "protocol.repeats": 2, "train.epochs": 1},
    )
    result = run_cv(cfg, progress=False)
    run, folder = result.run_dir, RunFolder(result.run_dir)
    assert folder.done() == folder.verified() == [1, 2, 3, 4, 5, 6]

    folds = pd.read_csv(run / "folds.csv", dtype={"clip": str})
    assert list(folds.columns) == ["clip", "path", "label", "class", "fold", "group", "fold_2"]
    assert (folds["fold"] != folds["fold_2"]).any()
    plan = json.loads((run / "plan.json").read_text())
    assert plan["repeats"] == 2 and plan["repeats_vary"] == "folds"
    assert [s["repeat"] for s in plan["splits"]] == [1, 1, 1, 2, 2, 2]
    for k in range(1, 7):
        info = folder.read_split_info(k)
        assert info["repeat"] == (1 if k <= 3 else 2) and info["train_seed"] == cfg.train.seed + k
    for r, column in ((1, "fold"), (2, "fold_2")):  # every clip tested once per repeat
        tested = pd.concat(
            pd.read_csv(folder.split_dir(k) / "predictions.csv", dtype={"clip": str})
            for k in range(3 * r - 2, 3 * r + 1)
        )
        assert sorted(tested["clip"]) == sorted(folds["clip"])
        expected = folds.set_index("clip")[column].reindex(tested["clip"]).to_numpy()
        assert (tested["fold"].to_numpy() == expected).all()

    scores = result.scores
    assert scores["n_splits"] == 6 and scores["repeats"] == 2 and scores["repeats_vary"] == "folds"
    assert [r["splits"] for r in scores["per_repeat"]] == [3, 3]
    per_split = pd.read_csv(run / "per_fold.csv")
    assert per_split["split"].tolist() == list(range(1, 7)) and per_split["repeat"].tolist() == [1] * 3 + [2] * 3
    means = [per_split.loc[per_split["repeat"] == r, "accuracy"].mean() for r in (1, 2)]
    assert scores["acc_repeat_means"] == pytest.approx(means)
    assert scores["acc_repeat_std"] == pytest.approx(np.std(means, ddof=1))
    assert scores["acc_mean"] == pytest.approx(per_split["accuracy"].mean())
    md = (run / "report.md").read_text()
    assert "repeats vary: fold assignment" in md and "## Per repeat" in md
    assert "over 6 splits of 2 repeats pooled" in md and f"{scores['acc_repeat_std']:.3f}" in md

    # Split 4 tests fold 1 of repeat 2, which is not repeat 1's fold 1: its predictions verified
    # above against its own repeat's fold. A clip swapped in from another fold of repeat 2 is caught,
    # even re-sealed (a buggy writer).
    pred_path = folder.split_dir(4) / "predictions.csv"
    original = pred_path.read_bytes()
    assert set(folds.loc[folds["fold_2"] == 1, "clip"]) != set(folds.loc[folds["fold"] == 1, "clip"])
    pred = pd.read_csv(pred_path, dtype={"clip": str})
    other = folds[(folds["fold_2"] == 2) & (folds["label"] == pred.loc[0, "label"])].iloc[0]
    pred.loc[0, "clip"] = other["clip"]
    pred.to_csv(pred_path, index=False)
    folder.seal(4)
    with pytest.raises(
        RunFolderError,
        match="split 4 cannot be scored: predictions.csv holds 12 clips, not the 12 of test fold 1 of repeat 2",
    ):
        folder.verified()

    # Resume: the tampered split is trained again, a split without DONE is trained, the rest are kept.
    pred_path.write_bytes(original)
    folder.seal(4)
    (folder.split_dir(5) / "DONE").unlink()
    (folder.split_dir(2) / "predictions.csv").write_bytes(original)  # split 2 now holds split 4's clips
    kept = {k: os.stat(folder.split_dir(k) / "DONE").st_mtime_ns for k in (1, 3, 4, 6)}
    again = run_cv(cfg, resume=True, progress=False)
    assert list(again.retrained) == [2] and "changed after the split finished" in again.retrained[2]
    assert {k: os.stat(folder.split_dir(k) / "DONE").st_mtime_ns for k in (1, 3, 4, 6)} == kept
    assert folder.verified() == [1, 2, 3, 4, 5, 6] and again.scores["n_splits"] == 6


def test_predefined_folds_repeat_with_other_training_seeds(tiny_us8k_master, tmp_path):
    from bench.drivers.kfold import run_cv

    cfg = fast_config(
        tmp_path, tiny_us8k_master, name="us8k-rep", **{"protocol.repeats": 2, "train.epochs": 1, "splits": [1, 11]}
    )  # fold 1 of each repeat
    result = run_cv(cfg, progress=False)
    folder = RunFolder(result.run_dir)
    folds = pd.read_csv(result.run_dir / "folds.csv")
    assert (folds["fold"] == folds["fold_2"]).all()  # the dataset's own folds, kept
    one, eleven = folder.read_split_info(1), folder.read_split_info(11)
    assert (one["repeat"], eleven["repeat"]) == (1, 2) and one["test_fold"] == eleven["test_fold"] == 1
    assert one["train_seed"] != eleven["train_seed"]
    p1, p11 = (pd.read_csv(folder.split_dir(k) / "predictions.csv").set_index("clip").sort_index() for k in (1, 11))
    assert p1.index.equals(p11.index)  # the same test clips
    probs = [c for c in p1.columns if c.startswith("prob_")]
    assert not np.allclose(p1[probs].to_numpy(), p11[probs].to_numpy())  # another training seed
    scores = result.scores
    assert scores["repeats"] == 2 and scores["repeats_vary"] == "seed" and scores["n_splits"] == 2
    md = (result.run_dir / "report.md").read_text()
    assert "repeats vary: training seed only (predefined folds)" in md
    assert json.loads((result.run_dir / "plan.json").read_text())["repeats_vary"] == "seed"
