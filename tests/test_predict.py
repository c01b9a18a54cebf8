"""Kept split models and `predict`: model.pt reproduces the split's saved predictions, the ensemble is
the mean of the split models, tampered or missing models are refused, bad files are named."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cli
from bench.drivers.kfold import run_cv
from bench.core.runfolder import RunFolder
from tests.conftest import fast_config

SPLITS = [1, 2, 3]


@pytest.fixture(scope="module")
def run(tiny_us8k_master, tmp_path_factory):
    """A kfold run of three splits of the tiny UrbanSound8K, MLflow on (a SQLite store)."""
    tmp = tmp_path_factory.mktemp("predict")
    threads = torch.get_num_threads()
    cfg = fast_config(
        tmp,
        tiny_us8k_master,
        name="kept",
        splits=SPLITS,
        **{
            "tracking.mlflow": True,
            "tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "tracking.experiment": "predict",
            "train.threads": 1,
        },
    )
    try:
        result = run_cv(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result.run_dir, f"sqlite:///{tmp / 'mlflow.db'}"


def clips_of(run_dir: Path, k: int) -> tuple[list[str], pd.DataFrame]:
    """Split k's test clips as file paths, in predictions.csv's order, and predictions.csv."""
    saved = pd.read_csv(run_dir / "splits" / str(k) / "predictions.csv", dtype={"clip": str})
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"clip": str}).set_index("clip")
    return [str(folds.loc[c, "path"]) for c in saved["clip"]], saved


def predict(*args) -> int:
    return cli.main(["predict", *map(str, args)])


def probs(table: pd.DataFrame) -> np.ndarray:
    return table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()


def test_model_pt_holds_what_predicting_needs_and_is_in_done(run):
    run_dir, _ = run
    for k in SPLITS:
        folder = run_dir / "splits" / str(k)
        done = json.loads((folder / "DONE").read_text())
        assert done["files"]["model.pt"] == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
        d = torch.load(folder / "model.pt", weights_only=True)
        assert d["classes"] == ["air_conditioner", "car_horn", "children_playing"]
        assert d["audio"] == {"sample_rate": 8000, "channels": 1, "duration": 1.0}
        assert d["features"]["n_mels"] == 32 and d["model"]["name"] == "tutorial_cnn"
        assert d["mean"].shape == d["std"].shape == (1, 1, 32, 1)
        assert d["best_epoch"] == json.loads((folder / "split.json").read_text())["best_epoch"]
    assert RunFolder(run_dir).verified() == SPLITS


@pytest.mark.parametrize("k", SPLITS)
def test_split_model_reproduces_the_saved_predictions(run, k, tmp_path, capsys):
    run_dir, _ = run
    files, saved = clips_of(run_dir, k)
    out = tmp_path / "preds.csv"
    assert predict("--run", run_dir, *files, "--split", k, "--out", out, "--threads", 1) == 0
    assert f"split {k}'s model" in capsys.readouterr().out
    got = pd.read_csv(out)
    classes = [c[len("prob_") :] for c in saved.columns if c.startswith("prob_")]
    assert got["path"].tolist() == files
    assert got["predicted"].tolist() == [classes[i] for i in saved["pred"]]
    assert list(got.columns[2:]) == [f"prob_{c}" for c in classes]
    np.testing.assert_array_equal(probs(got), probs(saved))


def test_default_is_the_ensemble_mean_of_the_split_models(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    files = clips_of(run_dir, 1)[0] + clips_of(run_dir, 2)[0]
    per_split = []
    for k in SPLITS:
        assert predict("--run", run_dir, *files, "--split", k, "--out", tmp_path / f"{k}.csv") == 0
        per_split.append(probs(pd.read_csv(tmp_path / f"{k}.csv")))
    capsys.readouterr()
    import bench.train.predict as predict_mod

    featurised = []  # the splits share one feature config: the files are featurised once, not per model
    real_maps = predict_mod.frontend_maps
    monkeypatch.setattr(predict_mod, "frontend_maps", lambda *a, **kw: featurised.append(a[1]) or real_maps(*a, **kw))
    assert predict("--run", run_dir, *files, "--out", tmp_path / "all.csv") == 0
    assert featurised == [len(files)]
    assert "ensemble of 3 split models (splits 1..3)" in capsys.readouterr().out
    got = pd.read_csv(tmp_path / "all.csv")
    mean = np.mean(per_split, axis=0)  # of 6-decimal values: within 1e-6 of the exact mean's rounding
    np.testing.assert_allclose(probs(got), mean, rtol=0, atol=1.01e-6)
    assert not np.allclose(per_split[0], per_split[1], atol=1e-3)  # the models differ: a real mean
    clear = np.sort(mean, axis=1)[:, -1] - np.sort(mean, axis=1)[:, -2] > 1e-5
    classes = [c[len("prob_") :] for c in got.columns if c.startswith("prob_")]
    assert (got["predicted"][clear] == [classes[i] for i in mean.argmax(axis=1)[clear]]).all()


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, dest)
    return dest


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_the_ensemble_of_an_unfinished_run_says_which_splits_it_lacks(run, tmp_path, capsys):
    run_dir = copy_run(run[0], tmp_path)
    (run_dir / "splits" / "2" / "DONE").unlink()  # killed (or still training) in split 2
    files, _ = clips_of(run_dir, 1)
    assert predict("--run", run_dir, files[0]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("ensemble of 2 split models (splits 1, 3)")
    assert "unfinished: no model yet for split(s) 2 " in head
    assert predict("--run", run[0], files[0]) == 0
    assert "unfinished" not in capsys.readouterr().out


def test_a_file_longer_than_the_runs_clips_is_noted(run, tmp_path, capsys):
    import soundfile as sf

    run_dir, _ = run
    files, _ = clips_of(run_dir, 1)
    long = tmp_path / "long.wav"  # 3 s; the run's clips are 1 s: its start alone is classified
    sf.write(long, np.random.default_rng(0).uniform(-0.5, 0.5, 3 * 8000).astype(np.float32), 8000)
    assert predict("--run", run_dir, long, files[0], "--out", tmp_path / "p.csv") == 0
    out = capsys.readouterr().out
    assert f"note: 1 file(s) longer than the run's 1 s clips (e.g. {long})" in out
    assert "note" not in pd.read_csv(tmp_path / "p.csv").to_string()
    assert predict("--run", run_dir, *files) == 0  # the run's own clips (at most 1 s): no note
    assert "note:" not in capsys.readouterr().out


def test_the_lines_fit_the_terminal(run, tmp_path, monkeypatch, capsys):
    """Each file's line fits the terminal's width (COLUMNS); paths are shortened, not the CSV's."""
    run_dir, _ = run
    files, _ = clips_of(run_dir, 1)
    monkeypatch.setenv("COLUMNS", "80")
    assert predict("--run", run_dir, *files, "--split", 1) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "split 1's model" and max(map(len, lines)) <= 80, [x for x in lines if len(x) > 80]
    assert all(Path(f).name in "\n".join(lines) for f in files)  # the file names stay whole
    assert predict("--run", run_dir, *files, "--split", 1, "--out", tmp_path / "p.csv") == 0
    assert pd.read_csv(tmp_path / "p.csv")["path"].tolist() == files  # the CSV: the paths in full
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "400")  # room for every class's probability: the full table
    assert predict("--run", run_dir, *files, "--split", 1) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in files) and "air_conditioner" in out.splitlines()[1]


def test_a_tampered_model_is_refused(run, tmp_path, capsys):
    run_dir = copy_run(run[0], tmp_path)
    files, _ = clips_of(run_dir, 2)
    model = run_dir / "splits" / "2" / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    out = tmp_path / "preds.csv"
    for extra in (["--split", "2"], []):  # alone, and inside the ensemble
        assert predict("--run", run_dir, files[0], *extra, "--out", out) == 2
        line = one_error(capsys)
        assert "split 2" in line and "model.pt changed" in line
    assert predict("--run", run_dir, files[0], "--split", "1") == 0  # the others still serve
    assert not out.exists()


def test_a_run_made_before_models_were_kept_verifies_and_is_refused(run, tmp_path, capsys):
    run_dir = copy_run(run[0], tmp_path)
    folder = RunFolder(run_dir)
    for k in SPLITS:  # what an older foldbench left: no model.pt, and none in DONE
        (folder.split_dir(k) / "model.pt").unlink()
        folder.seal(k)
        assert "model.pt" not in json.loads((folder.split_dir(k) / "DONE").read_text())["files"]
    assert folder.verified() == SPLITS
    files, _ = clips_of(run_dir, 1)
    assert predict("--run", run_dir, files[0]) == 2
    assert "no saved models" in one_error(capsys)
    assert predict("--run", run_dir, files[0], "--split", "1") == 2
    assert "kept no model" in one_error(capsys)


def test_a_deleted_model_fails_its_split(run, tmp_path, capsys):
    run_dir = copy_run(run[0], tmp_path)
    (run_dir / "splits" / "3" / "model.pt").unlink()
    assert predict("--run", run_dir, clips_of(run_dir, 3)[0][0]) == 2
    line = one_error(capsys)
    assert "split 3" in line and "model.pt is missing" in line


def test_unknown_and_unfinished_splits_are_refused(run, tmp_path, capsys):
    run_dir, _ = run
    files, _ = clips_of(run_dir, 1)
    assert predict("--run", run_dir, files[0], "--split", "99") == 2
    assert "--split 99: no such split" in one_error(capsys)
    assert predict("--run", run_dir, files[0], "--split", "4") == 2  # planned, not run (--splits 1,2,3)
    err = one_error(capsys)  # not "finish it with --resume": a resume trains splits 1..3 only
    assert "--split 4" in err and "splits 1..3 only" in err and "--resume" not in err
    unfinished = copy_run(run_dir, tmp_path)
    (unfinished / "splits" / "3" / "DONE").unlink()  # asked for, killed before it finished
    assert predict("--run", unfinished, files[0], "--split", "3") == 2
    assert "not finished" in one_error(capsys)
    assert predict("--run", tmp_path / "nothing", files[0]) == 2
    assert "not a run folder" in one_error(capsys)


def test_bad_files_are_named_and_nothing_is_written(run, tmp_path, capsys):
    run_dir, _ = run
    good = clips_of(run_dir, 1)[0][0]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF this is not audio at all")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "preds.csv"
    assert predict("--run", run_dir, good, broken, empty, "--out", out) == 2
    line = one_error(capsys)
    assert f"{broken} (cannot decode" in line and f"{empty} (empty file" in line and good not in line
    assert not out.exists()
    assert predict("--run", run_dir, tmp_path / "missing.wav") == 2
    assert "missing.wav: no such file" in one_error(capsys)
    assert predict("--run", run_dir, good, "--out", tmp_path / "no" / "dir" / "x.csv") == 2
    assert "--out" in one_error(capsys)


def test_directories_expand_to_their_audio_files_one_row_each(run, tmp_path, capsys):
    run_dir, _ = run
    files = clips_of(run_dir, 2)[0][:3]
    folder = tmp_path / "new"
    (folder / "deeper").mkdir(parents=True)
    suffix = Path(files[0]).suffix.lower()
    copies = [folder / f"b{suffix}", folder / "deeper" / f"a{suffix}", folder / f"c{suffix.upper()}"]
    for src, dst in zip(files, copies):
        dst.write_bytes(Path(src).read_bytes())
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "preds.csv"
    assert predict("--run", run_dir, folder, files[0], "--out", out) == 0
    got = pd.read_csv(out)
    assert got["path"].tolist() == sorted(map(str, copies)) + [files[0]]
    assert len(got) == len(copies) + 1 and got["predicted"].notna().all()
    np.testing.assert_allclose(probs(got).sum(axis=1), 1, atol=1e-5)


def test_tune_trials_keep_no_model(tiny_us8k_master, tmp_path):
    cfg = fast_config(tmp_path, tiny_us8k_master, name="trial", splits=[1], **{"train.epochs": 1})
    result = run_cv(cfg, score_test=False, progress=False)
    split = result.run_dir / "splits" / "1"
    assert (split / "DONE").is_file() and (split / "history.csv").is_file()
    assert not (split / "model.pt").exists()


def test_each_split_run_lists_its_model_in_mlflow(run, tmp_path):
    import mlflow
    from mlflow.entities import LoggedModelStatus

    run_dir, uri = run
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("predict")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(int(r.data.tags["split"]) for r in children) == SPLITS
    for r in children:
        outputs = r.outputs.model_outputs
        assert len(outputs) == 1
        model = client.get_logged_model(outputs[0].model_id)
        assert model.source_run_id == r.info.run_id and model.status == LoggedModelStatus.READY
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location}/model.pt", dst_path=str(tmp_path / r.info.run_id)
            )
        )
        assert local.read_bytes() == (run_dir / "splits" / r.data.tags["split"] / "model.pt").read_bytes()


def test_without_validation_the_last_epoch_is_kept_and_reproduces(tiny_us8k_master, tmp_path):
    cfg = fast_config(tmp_path, tiny_us8k_master, name="noval", splits=[5], **{"protocol.val": "none"})
    run_dir = run_cv(cfg, progress=False).run_dir
    assert torch.load(run_dir / "splits" / "5" / "model.pt", weights_only=True)["best_epoch"] == 3
    files, saved = clips_of(run_dir, 5)
    assert predict("--run", run_dir, *files, "--out", tmp_path / "p.csv") == 0  # one model: the ensemble
    np.testing.assert_array_equal(probs(pd.read_csv(tmp_path / "p.csv")), probs(saved))


def test_a_500_khz_clip_trains_and_is_predicted(tiny_us8k, tmp_path, capsys):
    """500 kHz -> 22,050 Hz has no small torchaudio kernel: kfold used to quarantine the clip
    ('cannot decode: AttributeError') and predict to end in a traceback."""
    import soundfile as sf

    meta = pd.read_csv(tiny_us8k / "metadata" / "UrbanSound8K.csv")
    row = meta[(meta["fold"] == 1) & meta["slice_file_name"].str.endswith(".wav")].iloc[0]
    bat = tiny_us8k / "audio" / "fold1" / row["slice_file_name"]
    t = np.arange(250_000) / 500_000
    tone = (0.3 * np.sin(2 * np.pi * 3000 * t) * np.sin(2 * np.pi * 7 * t)).astype(np.float32)
    sf.write(bat, tone, 500_000, subtype="PCM_16")
    cfg = fast_config(
        tmp_path,
        tiny_us8k,
        name="bat",
        splits=[1],
        **{"audio.sample_rate": 22050, "audio.duration": 0.5, "train.epochs": 1},
    )
    result = run_cv(cfg, progress=False)
    assert result.quarantine.empty
    clips, saved = clips_of(result.run_dir, 1)
    assert str(bat) in clips and saved["pred"].notna().all()  # tested in split 1
    new = tmp_path / "new_bat.wav"
    sf.write(new, tone[::-1].copy(), 500_000, subtype="FLOAT")
    out = tmp_path / "p.csv"
    assert predict("--run", result.run_dir, new, "--split", 1, "--out", out, "--threads", 1) == 0
    got = pd.read_csv(out)
    assert got["path"].tolist() == [str(new)] and got["predicted"].notna().all()
    np.testing.assert_allclose(probs(got).sum(axis=1), 1, atol=1e-5)
