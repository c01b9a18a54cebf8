"""A run folder written by the previous release (1a559fb, before the layered sub-packages) resumes
and reports unchanged with this code: `report` reproduces its scores, `kfold --resume` with the same
settings trains nothing, `predict` uses its split models. That release's DONE markers carry no
"seal" (they vouch for plan.json's protocol, leak fields and splits only) and its run.json no
digest: both are accepted, the report saying that run.json does not match its digest."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cli
from bench.drivers import kfold as kfold_mod
from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = "1a559fb"  # the previous release's commit
SPLITS = [1, 2]
ACCURACY = ["acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "macro_f1_mean", "macro_f1_std", "n_splits"]


def previous_tree(dest: Path) -> Path:
    """The previous release's code (`git archive`), or a skip saying why it cannot be had."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot check out the previous release")
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS} (the previous release) is not in this clone (shallow, or not a git clone)")
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS, "cli.py", "bench", "protocols", "reports"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest)
    return dest


def kfold_args(root: Path, tmp_path: Path) -> list[str]:
    """The same settings for both releases: the tiny dataset's fast config, 2 splits, 1 epoch."""
    sets = [f"--set={k}={v}" for k, v in FAST.items() if k not in ("tracking.mlflow", "train.epochs")]
    return [
        "kfold",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--splits",
        ",".join(map(str, SPLITS)),
        "--epochs",
        "1",
        "--no-mlflow",
        "--quiet",
        "--threads",
        "1",
        "--name",
        "old",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *sets,
    ]


def test_a_run_folder_of_the_previous_release_resumes_and_reports_unchanged(
    tiny_us8k_master, tmp_path, capsys, monkeypatch
):
    old = previous_tree(tmp_path / "previous")
    args = kfold_args(tiny_us8k_master, tmp_path)
    made = subprocess.run([sys.executable, str(old / "cli.py"), *args], cwd=old, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    run = tmp_path / "runs" / "old"
    before = json.loads((run / "scores.json").read_text())
    done = {k: (run / "splits" / str(k) / "DONE").read_bytes() for k in SPLITS}
    models = {k: (run / "splits" / str(k) / "model.pt").read_bytes() for k in SPLITS}
    assert before["n_splits"] == len(SPLITS) and all("seal" not in json.loads(d) for d in done.values())
    assert "digest" not in json.loads((run / "run.json").read_text())

    # report: the same scores from the old folder's predictions.
    assert cli.main(["report", str(run)]) == 0
    capsys.readouterr()
    after = json.loads((run / "scores.json").read_text())
    assert {k: after[k] for k in ACCURACY} == {k: before[k] for k in ACCURACY}
    assert after["per_fold"] == before["per_fold"]
    assert "run.json does not match its digest" in (run / "report.md").read_text()

    # kfold --resume, same settings: every split verified, nothing trained.
    def no_training(job, *a, **k):
        raise AssertionError(f"split {job.split.index} trained again on resume")

    monkeypatch.setattr(kfold_mod, "run_split", no_training)
    assert cli.main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "training it again" not in err, err
    assert {k: (run / "splits" / str(k) / "DONE").read_bytes() for k in SPLITS} == done
    assert {k: (run / "splits" / str(k) / "model.pt").read_bytes() for k in SPLITS} == models
    resumed = json.loads((run / "scores.json").read_text())
    assert {k: resumed[k] for k in ACCURACY} == {k: before[k] for k in ACCURACY}
    assert resumed["per_fold"] == before["per_fold"]

    # predict: the old split models, as an ensemble.
    clips = sorted((tiny_us8k_master / "audio" / "fold3").iterdir())[:3]
    out = tmp_path / "predicted.csv"
    code = cli.main(["predict", "--run", str(run), "--threads", "1", "--out", str(out), *map(str, clips)])
    assert code == 0 and "ensemble of 2 split models" in capsys.readouterr().out
    predicted = pd.read_csv(out)
    probs = predicted.filter(like="prob_").to_numpy()
    assert predicted["path"].tolist() == [str(c) for c in clips] and probs.shape == (3, len(before["classes"]))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
