"""The core's promises: user mistakes are refused before anything is written, names stay inside their
folder, leakage is an error, and a tampered finished split is trained again, never scored."""

import json
import shutil

import pandas as pd
import pytest

import cli
from bench.commands.configs import build_config
from bench.drivers import kfold as cv_mod
from bench.drivers.kfold import run_cv
from bench.core.runfolder import RunFolder
from tests.conftest import fast_config
from tests.test_cli import fast_flags

MISTAKES = [
    (["--epochs", "0"], "train.epochs=0"),
    (["--set", "train.batch_size=0"], "train.batch_size=0"),
    (["--set", "train.batch_size=1"], "train.batch_size=1"),
    (["--set", "train.max_lr=-1"], "train.max_lr=-1"),
    (["--set", "train.lr=nan"], "lr: 'nan' is not a valid float"),
    (["--set", "train.lr=.nan"], "train.lr=nan"),
    (["--set", "train.seed=99999999999999999999"], "train.seed=99999999999999999999"),
    (["--set", "splits="], "splits=[]"),
    (["--set", "splits=1.9"], "['1.9'] is not a valid list[int]"),
    (["--set", "augment.freq_masks=1000000"], "augment.freq_masks=1000000"),
    (["--runs-dir", ""], "runs_dir=''"),
    (["--name", "é" * 150], "must be a plain name"),
    (["--device", "tpu"], "train.device='tpu'"),
    (["--set", "train.anneal=foo"], "train.anneal='foo'"),
    (["--set", "features.top_db=-5"], "features.top_db=-5"),
    (["--set", "audio.sample_rate=0"], "audio.sample_rate=0"),
    (["--set", "augment.time_shift=2"], "augment.time_shift=2"),
    (["--splits", "0,3"], "splits=[0, 3]"),
    (["--splits", "11"], "no split 11"),
    (["--model", "nope"], "invalid choice"),
    (["--name", "../escape"], "--name '../escape'"),
    (["--name", "/abs/path"], "--name '/abs/path'"),
    (["--name", ".."], "--name '..'"),
    (["--name", "."], "--name '.'"),
    (["--name", "a/b"], "--name 'a/b'"),
]


@pytest.mark.parametrize("flags,says", MISTAKES, ids=[" ".join(f) for f, _ in MISTAKES])
def test_user_mistakes_are_refused_before_anything_is_written(
    flags, says, tiny_us8k_master, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # MLflow's default store would be ./mlflow.db
    args = ["kfold", *fast_flags(tmp_path, tiny_us8k_master), *flags]
    if "--name" not in flags:
        args += ["--name", "mistake"]
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse's own refusals (a --model not in the registry)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert says in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "escape").exists()
    assert not (tmp_path / "abs").exists()


@pytest.mark.parametrize(
    "flag,text", [("--name", "010"), ("--name", "null"), ("--experiment", "on"), ("--name", "a #1")]
)
def test_text_flags_are_taken_as_written(flag, text):
    """Command-line text is not YAML: `--name 010` is not run 8, `--name null` not the newest run."""
    cfg = build_config(cli.make_parser().parse_args(["kfold", flag, text]))
    assert (cfg.name if flag == "--name" else cfg.tracking.experiment) == text


def test_a_config_file_that_is_not_yaml_text_is_one_line(tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00junk")
    for path in (tmp_path / "bin.yaml", tmp_path):
        assert cli.main(["kfold", "--config", str(path), "--no-mlflow"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_cuda_without_a_gpu_is_refused_up_front(tiny_us8k_master, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["kfold", *fast_flags(tmp_path, tiny_us8k_master), "--device", "cuda", "--no-mlflow"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_failing_run_leaves_no_folder_and_resume_does_not_pick_it(tiny_us8k_master, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("boom")

    good = run_cv(fast_config(tmp_path, tiny_us8k_master, name="good", splits=[1]), progress=False)
    monkeypatch.setattr(cv_mod, "fit_split", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_cv(fast_config(tmp_path, tiny_us8k_master, name="dead"), progress=False)
    assert not (tmp_path / "runs" / "dead").exists()
    from bench.core.runfolder import latest_run

    assert latest_run(tmp_path / "runs", "us8k") == good.run_dir.name


def _copy_into_another_fold(root):
    """Fold 2's first clip copied (the same bytes) into fold 5 under a new name and the same class."""
    meta = pd.read_csv(root / "metadata" / "UrbanSound8K.csv")
    row = meta[meta["fold"] == 2].iloc[0].copy()
    shutil.copy(root / "audio" / "fold2" / row["slice_file_name"], root / "audio" / "fold5" / "copy.wav")
    row["slice_file_name"], row["fold"], row["fsID"] = "copy.wav", 5, 999999
    pd.concat([meta, row.to_frame().T]).to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    return f"fold2/{meta[meta['fold'] == 2].iloc[0]['slice_file_name']}"


def test_identical_audio_in_two_folds_is_refused_unless_allowed(tiny_us8k, tmp_path, capsys):
    original = _copy_into_another_fold(tiny_us8k)
    flags = [*fast_flags(tmp_path, tiny_us8k), "--no-mlflow", "--epochs", "1"]
    assert cli.main(["kfold", *flags, "--name", "refused"]) == 2
    err = capsys.readouterr().err
    assert "fold5/copy.wav" in err and original in err and "--allow-leaky" in err
    assert not (tmp_path / "runs" / "refused").exists()
    assert cli.main(["kfold", *flags, "--name", "allowed", "--allow-leaky", "--splits", "2,5"]) == 0
    run = tmp_path / "runs" / "allowed"
    assert json.loads((run / "scores.json").read_text())["leaky"] is True
    assert "LEAKY" in (run / "report.md").read_text() and "LEAKY" in capsys.readouterr().out


def test_resume_trains_a_tampered_split_again_to_the_same_scores(tiny_us8k_master, tmp_path, capsys):
    cfg = fast_config(tmp_path, tiny_us8k_master, name="t", splits=[1, 2, 3])
    first = run_cv(cfg, progress=False)
    pred = tmp_path / "runs" / "t" / "splits" / "2" / "predictions.csv"
    pd.read_csv(pred).head(3).to_csv(pred, index=False)  # the case: the mean moved silently
    (tmp_path / "runs" / "t" / "splits" / "3" / "DONE").unlink()  # killed before split 3's DONE
    resumed = run_cv(cfg, resume=True, progress=False)
    assert resumed.retrained == {2: "predictions.csv changed after the split finished (its digest differs)"}
    assert "split 2: predictions.csv changed" in capsys.readouterr().err
    assert [f["accuracy"] for f in resumed.scores["per_fold"]] == [f["accuracy"] for f in first.scores["per_fold"]]
    assert resumed.scores["acc_mean"] == first.scores["acc_mean"]


def test_a_tampered_run_is_never_reported(tiny_us8k_master, tmp_path):
    from reports import build_report

    run_cv(fast_config(tmp_path, tiny_us8k_master, name="r", splits=[1, 2]), progress=False)
    folds = tmp_path / "runs" / "r" / "folds.csv"
    plan = pd.read_csv(folds)
    plan.loc[plan["fold"] == 1, "label"] = 0  # a changed plan invalidates every split made with it
    plan.to_csv(folds, index=False)
    with pytest.raises(ValueError, match="split 1 cannot be scored: it was made with other settings"):
        build_report(tmp_path / "runs" / "r")


def test_duplicate_metadata_rows_are_refused_before_training(tiny_us8k, tmp_path):
    """Metadata listing one file twice is refused before training, naming both rows."""
    meta = pd.read_csv(tiny_us8k / "metadata" / "UrbanSound8K.csv")
    pd.concat([meta, meta.iloc[[4]]]).to_csv(tiny_us8k / "metadata" / "UrbanSound8K.csv", index=False)
    from bench.data.datasets import DatasetError

    with pytest.raises(DatasetError, match=meta.iloc[4]["slice_file_name"]):
        run_cv(fast_config(tmp_path, tiny_us8k), progress=False)
    assert not (tmp_path / "runs").exists()


def test_runfolder_refuses_a_second_claim_while_the_first_holds_it(tiny_us8k_master, tmp_path):
    cfg = fast_config(tmp_path, tiny_us8k_master, name="held")
    with RunFolder.claim(cfg, resume=False):
        with pytest.raises(ValueError, match="already holds a run|in use"):
            RunFolder.claim(cfg, resume=False)
        with pytest.raises(ValueError, match="in use by another foldbench process"):
            RunFolder.claim(cfg, resume=True)
    with RunFolder.claim(cfg, resume=True) as again:  # released: resumable
        assert again.path.name == "held"
