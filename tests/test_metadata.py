"""UrbanSound8K metadata checked up front, every problem naming its CSV row (header = row 1):
classID <-> class one to one, one row per file, folds 1..10; all problems found in one pass."""

import json

import pandas as pd
import pytest

from bench.core.config import DatasetConfig
from bench.data.datasets import DatasetError, create_dataset
from cli import main


def meta_csv(root):
    return root / "metadata" / "UrbanSound8K.csv"


def edit(root, change):
    """Apply `change(meta)` to the metadata; returns the edited table."""
    meta = pd.read_csv(meta_csv(root))
    change(meta)
    meta.to_csv(meta_csv(root), index=False)
    return meta


def load(root, tmp_path, problems=None):
    return create_dataset(DatasetConfig("us8k", str(root)), tmp_path / "cache", problems)


def refused(root, tmp_path) -> str:
    with pytest.raises(DatasetError) as e:
        load(root, tmp_path)
    return str(e.value)


def kfold(root, tmp_path, capsys):
    code = main(
        [
            "kfold",
            "--dataset",
            "us8k",
            "--root",
            str(root),
            "--no-mlflow",
            "--quiet",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    return code, capsys.readouterr().err


def test_class_id_with_two_class_names_is_refused_before_anything(tiny_us8k, tmp_path, capsys):
    def change(meta):
        meta.loc[7, "class"] = meta.loc[meta["classID"] == 2, "class"].iloc[0]  # row 9: class of id 2

    meta = edit(tiny_us8k, change)
    cid, name = meta.loc[7, "classID"], meta.loc[7, "class"]
    assert cid != 2
    msg = refused(tiny_us8k, tmp_path)
    assert f"UrbanSound8K.csv row 9: classID {cid} with class '{name}', but classID {cid} is " in msg
    assert "is classID 2 in row" in msg and "fix this row" in msg and msg.count("\n") == 0
    code, err = kfold(tiny_us8k, tmp_path, capsys)
    assert code == 2 and "row 9: classID" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing decoded


def test_class_with_two_class_ids_is_refused(tiny_us8k, tmp_path):
    def change(meta):
        meta["classID"] = meta["classID"].astype(object)
        meta.loc[meta["class"] == "car_horn", "classID"] = 1
        meta.loc[20, "class"], meta.loc[20, "classID"] = "car_horn", 3  # a new id for car_horn

    edit(tiny_us8k, change)
    msg = refused(tiny_us8k, tmp_path)
    assert "row 22: classID 3 with class 'car_horn', but 'car_horn' is classID 1 in row" in msg


def test_two_rows_for_one_file_name_both_rows(tiny_us8k, tmp_path, capsys):
    def change(meta):
        meta.loc[len(meta)] = meta.loc[4]  # row 6 again, as the last row

    meta = edit(tiny_us8k, change)
    last = len(meta) + 1
    clip = f"fold{meta.loc[4, 'fold']}/{meta.loc[4, 'slice_file_name']}"
    msg = refused(tiny_us8k, tmp_path)
    assert msg.endswith(
        f"row {last}: {clip} is also row 6: one file reached from two metadata rows; remove one of them"
    )
    code, err = kfold(tiny_us8k, tmp_path, capsys)
    assert code == 2 and f"row {last}: {clip} is also row 6" in err and not (tmp_path / "runs").exists()


def test_path_that_reaches_the_same_file_another_way_is_one_file(tiny_us8k, tmp_path):
    def change(meta):
        meta.loc[9, "slice_file_name"] = f"../fold{meta.loc[3, 'fold']}/{meta.loc[3, 'slice_file_name']}"
        meta.loc[9, "fold"] = meta.loc[3, "fold"]

    edit(tiny_us8k, change)
    assert "row 11: " in refused(tiny_us8k, tmp_path) and "is also row 5" in refused(tiny_us8k, tmp_path)


@pytest.mark.parametrize(
    "value, reason",
    [
        (0, "fold 0 is not one of the folds 1..10"),
        (11, "fold 11 is not one of the folds 1..10"),
        (1.5, "fold 1.5 is not one of the folds 1..10"),
        ("x", "fold x is not one of the folds 1..10"),
        (None, "no fold; fill it in or remove the row"),
    ],
)
def test_fold_values_kfold_refuses_name_their_row(tiny_us8k, tmp_path, value, reason):
    def change(meta):
        meta["fold"] = meta["fold"].astype(object)
        meta.loc[12, "fold"] = value

    edit(tiny_us8k, change)
    assert refused(tiny_us8k, tmp_path).startswith(f"{meta_csv(tiny_us8k)} row 14: {reason}")


def test_fold_written_as_a_whole_float_is_accepted(tiny_us8k, tmp_path):
    edit(tiny_us8k, lambda meta: meta.__setitem__("fold", meta["fold"].astype(float)))
    ds = load(tiny_us8k, tmp_path)
    assert ds.table["fold"].dtype.kind == "i" and sorted(ds.table["fold"].unique()) == list(range(1, 11))


def test_row_numbers_count_blank_lines(tiny_us8k, tmp_path):
    lines = meta_csv(tiny_us8k).read_text().splitlines()
    first, second = lines[1].split(","), lines[2].split(",")
    second[5] = "12"  # the fold of data row 2
    meta_csv(tiny_us8k).write_text("\n".join([lines[0], ",".join(first), "", ",".join(second), *lines[3:]]) + "\n")
    assert refused(tiny_us8k, tmp_path).startswith(f"{meta_csv(tiny_us8k)} row 4: fold 12 ")


def test_every_problem_in_one_pass(tiny_us8k, tmp_path):
    def change(meta):
        meta["fold"] = meta["fold"].astype(object)
        for i in range(0, 24, 2):  # 12 rows with a bad fold
            meta.loc[i, "fold"] = 0
        meta.loc[len(meta)] = meta.loc[5]  # and one duplicate row

    meta = edit(tiny_us8k, change)
    msg = refused(tiny_us8k, tmp_path)
    lines = msg.splitlines()
    assert lines[0].startswith("13 problems in the dataset; fix them")
    assert (
        lines[1]
        .strip()
        .endswith("row 2: fold 0 is not one of the folds 1..10 that the predefined protocol requires; fix it")
    )
    assert lines[-1].strip() == "... and 3 more" and len(lines) == 12
    # With a list: every problem, and the manifest of the rest.
    problems = []
    ds = load(tiny_us8k, tmp_path, problems)
    assert len(problems) == 13 and f"row {len(meta) + 1}: " in problems[-1]
    assert len(ds.table) == len(meta) - 13 and ds.classes == ["air_conditioner", "car_horn", "children_playing"]


def test_check_is_not_ready_on_fold_values_kfold_refuses(tiny_us8k, tmp_path, capsys):
    """Before: the row's file (audio/fold0/...) was quarantined as missing and check said ready."""

    def change(meta):
        meta.loc[30, "fold"] = 0
        meta.loc[31, "class"] = "siren"  # classID 1 or 2 with another name

    meta = edit(tiny_us8k, change)
    code = main(
        [
            "datasets",
            "check",
            "--dataset",
            "us8k",
            "--root",
            str(tiny_us8k),
            "--quiet",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "ready for kfold" not in out and "would be refused or wrong" in out
    assert "ERROR    structure" in out and "row 32: fold 0 is not one of the folds" in out
    assert f"row 33: classID {meta.loc[31, 'classID']} with class 'siren'" in out
    code = main(
        [
            "datasets",
            "check",
            "--dataset",
            "us8k",
            "--root",
            str(tiny_us8k),
            "--json",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False and report["n_clips"] == len(meta) - 2
    assert [f["check"] for f in report["findings"] if f["level"] == "error"] == ["structure", "structure"]
