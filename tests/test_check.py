"""`datasets check` finds every planted fault; `datasets list`; the exit statuses."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bench.data.synth import source_params, synth_clip, write_folder_dataset
from cli import main

SPEAKERS = ("ann", "bob", "cid", "dan", "eve", "fay")


def clean_folder(root):
    spec = {c: [f"{s}_{j:02d}" for s in SPEAKERS for j in range(2)] for c in ("cat", "dog", "owl")}
    write_folder_dataset(root, spec, sr=8000, duration=0.5)
    return root


def clip(kind, seconds, sr=8000, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    return synth_clip(kind, int(seconds * sr), sr, rng, source_params(rng), channels=channels)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A clean folder dataset with one of each fault planted."""
    root = clean_folder(tmp_path_factory.mktemp("faulty") / "sounds")
    (root / "cat" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage, not audio")
    (root / "cat" / "empty.wav").write_bytes(b"")
    sf.write(root / "dog" / "quiet.wav", np.zeros(4000, np.float32), 8000)
    nan = clip(1, 0.5)
    nan[100] = np.nan
    sf.write(root / "dog" / "nan.wav", nan, 8000, subtype="FLOAT")
    sf.write(root / "owl" / "gus_00.wav", clip(2, 0.02, seed=1), 8000)  # very short
    sf.write(root / "owl" / "hal_00.wav", clip(2, 5.0, seed=2), 8000)  # very long
    sf.write(root / "owl" / "ivy_00.flac", clip(2, 0.5, sr=16000, seed=3, channels=2), 16000)
    shutil.copy(root / "cat" / "ann_00.wav", root / "cat" / "zed_00.wav")  # a copy, another fold
    shutil.copy(root / "dog" / "bob_01.wav", root / "owl" / "bob_09.wav")  # a copy, another class
    (root / "owl" / "notes.txt").write_text("field notes")
    (root / "dog" / ".DS_Store").write_bytes(b"x")
    return root


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_finds_every_planted_fault(faulty, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys,
        "datasets",
        "check",
        "--dataset",
        "folder",
        "--root",
        str(faulty),
        "--cache-dir",
        str(tmp_path),
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["n_clips"] == 45
    found = {f["check"]: f for f in report["findings"]}
    expected = {
        "undecodable": "cat/broken.wav",
        "empty": "cat/empty.wav",
        "silent": "dog/quiet.wav",
        "non-finite": "dog/nan.wav",
        "very-short": "owl/gus_00.wav",
        "very-long": "owl/hal_00.wav",
        "duplicate-labels": "owl/bob_09.wav",
        "duplicate-across-folds": "cat/zed_00.wav",
    }
    for check, clip_ in expected.items():
        assert check in found and clip_ in found[check]["clips"], check
    assert found["duplicate-labels"]["level"] == found["duplicate-across-folds"]["level"] == "error"
    assert found["undecodable"]["level"] == "warning"  # kfold quarantines it and goes on
    assert "cat/ann_00.wav (cat, fold" in found["duplicate-across-folds"]["message"]
    skipped = " ".join(f["message"] for f in report["findings"] if f["check"] == "skipped")
    assert "1 hidden file(s) or folder(s)" in skipped and "1 non-audio file(s)" in skipped
    assert report["formats"]["sample_rate"] == {"16000": 1, "8000": 42}
    assert report["formats"]["channels"] == {"1": 42, "2": 1}
    assert set(report["formats"]["format"]) == {"WAV PCM_16", "WAV FLOAT", "FLAC PCM_16"}
    assert report["counts"]["cat"] == {"1": 3, "2": 3, "3": 3, "4": 2, "5": 2}  # 13 usable cat clips


def test_check_table_for_people(faulty, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys,
        "datasets",
        "check",
        "--dataset",
        "folder",
        "--root",
        str(faulty),
        "--cache-dir",
        str(tmp_path),
        "--quiet",
    )
    assert code == 1
    assert "clips per class and fold" in out and "fold 5" in out
    assert "ERROR    duplicate-labels" in out and "WARNING  undecodable" in out
    assert "2 error(s), 6 warning(s): a kfold run on this dataset would be refused or wrong" in out


def test_structural_problems_and_file_faults_in_one_pass(tmp_path, capsys):
    root = clean_folder(tmp_path / "sounds")
    (root / "bat").mkdir()  # an empty class folder
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(root / "cat" / "ann_00.wav", outside)
    (root / "dog" / "zed_00.wav").symlink_to(outside)  # a link leaving the root
    (root / "owl" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage, not audio")
    code, out, _ = run_cli(
        capsys,
        "datasets",
        "check",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
    )
    report = json.loads(out)
    found = [(f["level"], f["check"], f["message"]) for f in report["findings"]]
    assert code == 1 and report["ok"] is False and report["n_clips"] == 37  # 36 clean + broken.wav
    assert [f[:2] for f in found if f[0] == "error"] == [("error", "structure")] * 2
    assert any("bat: class folder holds no audio files" in f[2] for f in found)
    assert any("zed_00.wav: symbolic link points outside the dataset root" in f[2] for f in found)
    assert any(f[:2] == ("warning", "undecodable") and "owl/broken.wav" in f[2] for f in found)
    # kfold refuses with one error naming both structural problems, before any run folder.
    code, _, err = run_cli(
        capsys,
        "kfold",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--no-mlflow",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert code == 2 and err.startswith("error: 2 problems in the dataset")
    assert "bat: class folder holds no audio files" in err and "symbolic link points outside" in err
    assert not (tmp_path / "runs").exists()


def test_clean_dataset_passes(tmp_path, capsys):
    root = clean_folder(tmp_path / "sounds")
    code, out, _ = run_cli(
        capsys,
        "datasets",
        "check",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--group-regex",
        "^(?P<group>[a-z]+)_",
        "--folds",
        "3",
        "--quiet",
    )
    assert code == 0 and "0 error(s), 0 warning(s): ready for kfold" in out
    assert "StratifiedFolds(n_folds=3, seed=0)" in out and "fold 3" in out and "fold 4" not in out


def test_groups_that_cross_folds(tiny_us8k, capsys):
    meta_csv = tiny_us8k / "metadata" / "UrbanSound8K.csv"
    meta = pd.read_csv(meta_csv)
    meta.loc[len(meta) - 1, "fsID"] = meta.loc[0, "fsID"]  # one source in fold 1 and fold 10
    meta.to_csv(meta_csv, index=False)
    code, out, _ = run_cli(capsys, "datasets", "check", "--dataset", "us8k", "--root", str(tiny_us8k), "--json")
    found = {f["check"]: f for f in json.loads(out)["findings"]}
    assert code == 1 and str(meta.loc[0, "fsID"]) in found["groups-cross-folds"]["message"]
    # The leaky protocol crosses groups by design, and the check says so.
    code, out, _ = run_cli(
        capsys, "datasets", "check", "--dataset", "us8k", "--root", str(tiny_us8k), "--protocol", "random", "--json"
    )
    assert code == 1 and "groups-cross-folds" in {f["check"] for f in json.loads(out)["findings"]}


def test_class_with_one_clip(tmp_path, capsys):
    root = clean_folder(tmp_path / "sounds")
    (root / "bat").mkdir()
    shutil.copy(root / "cat" / "ann_00.wav", root / "bat" / "solo.wav")
    (root / "cat" / "ann_00.wav").unlink()
    code, out, _ = run_cli(capsys, "datasets", "check", "--dataset", "folder", "--root", str(root), "--quiet")
    assert code == 1 and "ERROR    plan" in out and "bat (1 clip)" in out
    code, _, err = run_cli(
        capsys,
        "kfold",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--no-mlflow",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert code == 2 and "error: class(es) with fewer clips than the 5 folds: bat (1 clip)" in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder or decoding


def test_loader_errors_exit_2(tmp_path, capsys):
    root = clean_folder(tmp_path / "sounds")
    code, _, err = run_cli(
        capsys, "datasets", "check", "--dataset", "folder", "--root", str(root), "--group-regex", "^(?P<group>[A-Z]+)-"
    )
    assert code == 2 and "error: --group-regex" in err and "matches none" in err


def test_datasets_list(capsys):
    code, out, _ = run_cli(capsys, "datasets", "list")
    assert code == 0
    for text in (
        "us8k",
        "demo",
        "gtzan    default protocol stratified (10 folds)",
        "folder   default protocol stratified (5 folds)",
        "genres/<genre>/<genre>.000NN.{wav,au}",
        "<root>/<class>/**/*",
        "gtzan-filtered",
        "random          LEAKY",
    ):
        assert text in out, text


def test_check_refuses_what_kfold_refuses_before_decoding(tiny_us8k, tmp_path, capsys):
    """kfold plans every clip before decoding; check used to plan only the usable ones, and said
    'ready' when the clips the protocol refuses were all unreadable."""
    for fold in range(6, 11):
        shutil.rmtree(tiny_us8k / "audio" / f"fold{fold}")  # folds 6..10: every file missing
    args = ("--dataset", "us8k", "--root", str(tiny_us8k), "--folds", "5", "--cache-dir", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "kfold", *args, "--no-mlflow", "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "fold missing or outside 1..5" in err
    code, out, _ = run_cli(capsys, "datasets", "check", *args, "--quiet")
    assert code == 1 and "ERROR    plan" in out and "fold missing or outside 1..5" in out
    assert "ready for kfold" not in out


def test_a_500_khz_clip_is_usable_not_undecodable(tmp_path, capsys):
    """500 kHz -> 22,050 Hz (the default) has no small torchaudio kernel: the clip used to be
    listed undecodable ('Resample' object has no attribute 'width') and quarantined by kfold."""
    root = clean_folder(tmp_path / "sounds")
    sf.write(root / "owl" / "bat_00.wav", clip(2, 0.5, sr=500_000, seed=4), 500_000, subtype="PCM_16")
    code, out, _ = run_cli(
        capsys,
        "datasets",
        "check",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
    )
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["n_clips"] == 37
    assert report["formats"]["sample_rate"] == {"500000": 1, "8000": 36}
    assert not [f for f in report["findings"] if f["level"] != "info"], report["findings"]


def test_a_float_file_of_unusable_level_is_set_aside_with_its_reason(tmp_path, capsys, monkeypatch):
    """Samples of 1e30 are finite, but their spectrum overflows float32: kfold stopped on a NaN loss
    and blamed the learning rate. Such a file is non-finite in practice, on both resampling paths;
    a cache that kept one (made before the check) is rebuilt, not trusted."""
    from bench.data import audio as audio_mod
    from bench.data import cache as cache_mod

    root = clean_folder(tmp_path / "sounds")
    sf.write(root / "dog" / "loud.wav", np.full(4000, 1e30, np.float32), 8000, subtype="FLOAT")
    sf.write(root / "owl" / "loud.wav", np.full(250_000, 1e30, np.float32), 500_000, subtype="FLOAT")
    argv = [
        "datasets",
        "check",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
    ]
    with monkeypatch.context() as m:  # a cache built before the check: both files kept
        m.setattr(audio_mod, "MAX_PEAK", float("inf"))
        m.setattr(cache_mod, "MAX_PEAK", float("inf"))
        code, out, _ = run_cli(capsys, *argv)
        assert code == 0 and not [f for f in json.loads(out)["findings"] if f["check"] == "non-finite"]
    code, out, err = run_cli(capsys, *argv)
    report = json.loads(out)
    (finding,) = [f for f in report["findings"] if f["check"] == "non-finite"]
    assert code == 0 and sorted(finding["clips"]) == ["dog/loud.wav", "owl/loud.wav"]  # kfold quarantines them
    assert "sample values up to 1e+30" in finding["message"]
