"""The `folder` and `gtzan` loaders, groups from a regex or a CSV, and every bad input of issue 3."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from bench.core.config import DatasetConfig
from bench.data.datasets import DatasetError, create_dataset
from bench.data.synth import GTZAN_GENRES, write_folder_dataset, write_gtzan

SPEAKERS = ("ann", "bob", "cid", "dan", "eve", "fay")


def load(root, tmp_path, name="folder", problems=None, **kw):
    return create_dataset(DatasetConfig(name, str(root), **kw), tmp_path / "cache", problems)


@pytest.fixture(scope="module")
def sounds_master(tmp_path_factory):
    """<root>/<class>/<speaker>_NN.wav: 3 classes x 6 speakers x 2 clips, 0.25 s at 8 kHz."""
    root = tmp_path_factory.mktemp("folder") / "sounds"
    spec = {c: [f"{s}_{j:02d}" for s in SPEAKERS for j in range(2)] for c in ("cat", "dog", "owl")}
    write_folder_dataset(root, spec, sr=8000, duration=0.25)
    return root


@pytest.fixture
def sounds(sounds_master, tmp_path):
    root = tmp_path / "sounds"
    shutil.copytree(sounds_master, root, symlinks=True)
    return root


def test_folder_manifest(sounds_master, tmp_path):
    ds = load(sounds_master, tmp_path)
    t = ds.table
    assert ds.classes == ["cat", "dog", "owl"] and ds.protocol == "stratified"
    assert list(t.columns) == ["clip", "path", "label", "class", "fold", "group"]
    assert len(t) == 36 and t["clip"].iloc[0] == "cat/ann_00.wav"
    assert (t["label"] == t["class"].map({"cat": 0, "dog": 1, "owl": 2})).all()
    assert t["fold"].isna().all() and t["group"].isna().all() and ds.notes == []
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in t["path"])


def test_nested_files_other_formats_and_skipped_files_are_counted(sounds, tmp_path):
    (sounds / "cat" / "indoor" / "deep").mkdir(parents=True)
    shutil.copy(sounds / "dog" / "ann_00.wav", sounds / "cat" / "indoor" / "deep" / "x.WAV")
    (sounds / "owl" / "ann_00.flac").write_bytes(b"not checked here: decoding is the cache's job")
    (sounds / "owl" / "notes.txt").write_text("field notes")
    (sounds / "owl" / "cover.jpg").write_bytes(b"\xff\xd8")
    (sounds / "dog" / ".DS_Store").write_bytes(b"x")
    (sounds / ".hidden_class").mkdir()
    (sounds / "README.md").write_text("about")
    ds = load(sounds, tmp_path)
    assert "cat/indoor/deep/x.WAV" in set(ds.table["clip"]) and "owl/ann_00.flac" in set(ds.table["clip"])
    assert ds.classes == ["cat", "dog", "owl"] and len(ds.table) == 38
    notes = "\n".join(ds.notes)
    assert "skipped 2 non-audio file(s)" in notes and "notes.txt" in notes
    assert "skipped 2 hidden file(s) or folder(s)" in notes and ".DS_Store" in notes
    assert "skipped 1 file(s) outside the class folders (e.g. README.md)" in notes


def test_empty_class_folder_is_an_error(sounds, tmp_path):
    (sounds / "bat").mkdir()
    (sounds / "bat" / "readme.txt").write_text("clips to come")
    with pytest.raises(DatasetError, match=r"bat: class folder holds no audio files"):
        load(sounds, tmp_path)


def test_no_class_folders_or_one_class(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class folders"):
        load(tmp_path / "flat", tmp_path)
    (tmp_path / "flat" / "only").mkdir()
    (tmp_path / "flat" / "only" / "a.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"one class folder \(only\)"):
        load(tmp_path / "flat", tmp_path)


def test_same_file_under_two_classes_is_an_error(sounds, tmp_path):
    os.link(sounds / "cat" / "ann_00.wav", sounds / "dog" / "zed_00.wav")  # one file, two names
    with pytest.raises(
        DatasetError,
        match=r"cat/ann_00.wav and dog/zed_00.wav are the same file "
        r"under two classes \(cat and dog\)",
    ):
        load(sounds, tmp_path)


def test_symlink_to_a_file_in_another_class_is_the_same_file(sounds, tmp_path):
    (sounds / "owl" / "zed_00.wav").symlink_to(sounds / "cat" / "bob_01.wav")
    with pytest.raises(DatasetError, match=r"same file under two classes \(cat and owl\)"):
        load(sounds, tmp_path)


def test_symlink_outside_the_root_is_an_error(sounds, tmp_path):
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(sounds / "cat" / "ann_00.wav", outside)
    (sounds / "cat" / "zed_00.wav").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"zed_00.wav: symbolic link points outside the dataset root"):
        load(sounds, tmp_path)


def test_symlink_loops_are_errors(sounds, tmp_path):
    (sounds / "cat" / "again").symlink_to(sounds / "cat", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"cat/again: symbolic link loop"):
        load(sounds, tmp_path)
    (sounds / "cat" / "again").unlink()
    (sounds / "dog" / "self.wav").symlink_to(sounds / "dog" / "self.wav")
    with pytest.raises(DatasetError, match=r"self.wav: symbolic link loop"):
        load(sounds, tmp_path)


def test_symlinked_folder_inside_the_root_is_followed(sounds, tmp_path):
    (sounds / ".store").mkdir()  # hidden: not a class itself
    shutil.move(sounds / "owl", sounds / ".store" / "owl")
    (sounds / "owl").symlink_to(sounds / ".store" / "owl", target_is_directory=True)
    ds = load(sounds, tmp_path)
    assert ds.classes == ["cat", "dog", "owl"] and (ds.table["class"] == "owl").sum() == 12


def test_group_regex(sounds_master, tmp_path):
    ds = load(sounds_master, tmp_path, group_regex=r"^(?P<group>[a-z]+)_")
    assert sorted(ds.table["group"].unique()) == sorted(SPEAKERS)
    assert any("--group-regex" in n for n in ds.notes)


def test_group_regex_that_matches_no_file(sounds_master, tmp_path):
    with pytest.raises(DatasetError, match=r"matches none of the 36 file names \(e.g. ann_00.wav"):
        load(sounds_master, tmp_path, group_regex=r"^(?P<group>spk\d+)-")


def test_group_regex_that_matches_only_some_files_lists_misses(sounds_master, tmp_path):
    with pytest.raises(DatasetError) as e:
        load(sounds_master, tmp_path, group_regex=r"^(?P<group>ann|bob)_")
    msg = str(e.value)
    assert "no match in 24 of 36 clip(s)" in msg and "cat/cid_00.wav" in msg and "ann" not in msg.split("e.g.")[1]


def test_group_regex_needs_a_named_group_and_valid_syntax(sounds_master, tmp_path):
    with pytest.raises(DatasetError, match="needs a named group 'group'"):
        load(sounds_master, tmp_path, group_regex=r"^([a-z]+)_")
    with pytest.raises(DatasetError, match="not a valid regular expression"):
        load(sounds_master, tmp_path, group_regex=r"^(?P<group>[a-z+_")


def test_groups_csv_at_the_root_and_given(sounds, tmp_path):
    ds = load(sounds, tmp_path)
    rows = pd.DataFrame({"path": ds.table["clip"], "group": ds.table["clip"].str[4:7] + "-x"})
    rows.to_csv(sounds / "groups.csv", index=False)
    auto = load(sounds, tmp_path)  # <root>/groups.csv is read by itself, and is not a clip
    assert auto.table["group"].tolist() == rows["group"].tolist() and len(auto.table) == 36
    assert not any("outside the class folders" in n for n in auto.notes)
    rows.iloc[:30].to_csv(tmp_path / "some.csv", index=False)
    with pytest.raises(DatasetError, match=r"no row for 6 of 36 clip\(s\), e.g. owl/dan_00.wav"):
        load(sounds, tmp_path, groups_csv=str(tmp_path / "some.csv"))
    with pytest.raises(DatasetError, match="not both"):
        load(sounds, tmp_path, groups_csv="groups.csv", group_regex="(?P<group>x)")


@pytest.fixture(scope="module")
def gtzan_master(tmp_path_factory):
    """GTZAN layout, 3 excerpts per genre (a fifth of them .au), 0.2 s at 8 kHz."""
    root = tmp_path_factory.mktemp("gtzan")
    write_gtzan(root, n_per_genre=3, sr=8000, duration=0.2, au_fraction=0.34)
    return root


def test_gtzan_manifest(gtzan_master, tmp_path):
    ds = load(gtzan_master, tmp_path, "gtzan")
    assert ds.classes == list(GTZAN_GENRES) and ds.protocol == "stratified" and len(ds.table) == 30
    assert ds.table["clip"].iloc[0] == "blues/blues.00000.wav"
    assert ds.table["clip"].str.endswith(".au").sum() == 10
    assert (ds.table.groupby("class").size() == 3).all()


def test_gtzan_redistribution_layout_and_stray_files(gtzan_master, tmp_path):
    root = tmp_path / "Data"
    shutil.copytree(gtzan_master / "genres", root / "genres_original")
    (root / "genres_original" / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF\x00\x00junk")
    (root / "genres_original" / "rock" / "cover.png").write_bytes(b"\x89PNG")
    (root / "genres_original" / "rock" / "rock.wav").write_bytes(b"")
    (root / "features_30_sec.csv").write_text("filename,label\n")
    ds = load(root, tmp_path, "gtzan")
    assert len(ds.table) == 31 and "jazz/jazz.00054.wav" in set(ds.table["clip"])
    notes = "\n".join(ds.notes)
    assert "1 non-audio file(s) not named" in notes and "1 audio file(s) not named" in notes


def test_gtzan_missing_genre_and_double_excerpt(gtzan_master, tmp_path):
    root = tmp_path / "gtzan"
    shutil.copytree(gtzan_master, root)
    pop = next((root / "genres" / "pop").glob("pop.00001.*"))
    shutil.copy(pop, pop.with_suffix(".au" if pop.suffix == ".wav" else ".wav"))
    with pytest.raises(DatasetError, match=r"two files for GTZAN clip pop.00001"):
        load(root, tmp_path, "gtzan")
    shutil.rmtree(root / "genres" / "metal")
    with pytest.raises(DatasetError, match=r"genre folder\(s\) missing: metal"):
        load(root, tmp_path, "gtzan")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no GTZAN genre folders"):
        load(tmp_path / "empty", tmp_path, "gtzan")


def test_groups_from_regex_apply_to_us8k_too(tiny_us8k_master, tmp_path):
    ds = load(tiny_us8k_master, tmp_path, "us8k", group_regex=r"^(?P<group>\d+)-")
    meta = pd.read_csv(tiny_us8k_master / "metadata" / "UrbanSound8K.csv")
    assert ds.table["group"].tolist() == meta["fsID"].astype(str).tolist()
    assert np.all(ds.table["fold"].to_numpy() == meta["fold"].to_numpy())


def test_every_structural_problem_in_one_pass(sounds, tmp_path):
    (sounds / "bat").mkdir()  # an empty class folder
    (sounds / "bat" / "readme.txt").write_text("clips to come")
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(sounds / "cat" / "ann_00.wav", outside)
    (sounds / "cat" / "zed_00.wav").symlink_to(outside)  # a link leaving the root
    (sounds / "dog" / "again").symlink_to(sounds / "dog", target_is_directory=True)  # a loop
    os.link(sounds / "cat" / "bob_00.wav", sounds / "owl" / "bob_09.wav")  # one file, two classes
    with pytest.raises(DatasetError) as e:
        load(sounds, tmp_path)
    lines = str(e.value).splitlines()
    assert lines[0] == "4 problems in the dataset; fix them (`datasets check` lists every finding):"
    for text in (
        "bat: class folder holds no audio files",
        "zed_00.wav: symbolic link points outside",
        "dog/again: symbolic link loop",
        "cat/bob_00.wav and owl/bob_09.wav are the same file",
    ):
        assert sum(text in line for line in lines[1:]) == 1, text
    problems = []
    ds = load(sounds, tmp_path, problems=problems)  # with a list: the manifest of the rest
    assert len(problems) == 4 and ds.classes == ["cat", "dog", "owl"] and len(ds.table) == 36
    assert not {"cat/zed_00.wav", "owl/bob_09.wav"} & set(ds.table["clip"])


def test_gtzan_problems_in_one_pass(gtzan_master, tmp_path):
    root = tmp_path / "gtzan"
    shutil.copytree(gtzan_master, root)
    shutil.rmtree(root / "genres" / "metal")
    pop = next((root / "genres" / "pop").glob("pop.00001.*"))
    shutil.copy(pop, pop.with_suffix(".au" if pop.suffix == ".wav" else ".wav"))
    with pytest.raises(DatasetError) as e:
        load(root, tmp_path, "gtzan")
    msg = str(e.value)
    assert msg.startswith("2 problems") and "genre folder(s) missing: metal" in msg
    assert "two files for GTZAN clip pop.00001" in msg
    problems = []
    ds = load(root, tmp_path, "gtzan", problems=problems)
    assert len(problems) == 2 and len(ds.table) == 27 and ds.classes == list(GTZAN_GENRES)
