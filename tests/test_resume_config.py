"""`--resume` takes the run's own config.yaml; a saved config.yaml starts a new run with --config."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

import cli
from bench.commands.training import resume_search
from bench.core.config import ConfigError
from bench.drivers.kfold import run_cv
from bench.core.runfolder import RunFolder, result_view
from bench.core.config import load_yaml
from tests.conftest import FAST, fast_config
from tests.test_kill_and_races import finish, kill_held, procs, start, trained  # noqa: F401 (procs: fixture)

SPLITS = [1, 2, 3]
ODD = {"train.epochs": 2, "features.n_mels": 16}  # not the defaults: a resume must not need them again


def odd_args(tmp_path, root, cache, name: str) -> list[str]:
    args = [
        "kfold",
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(cache),
        "--name",
        name,
        "--epochs",
        "2",
        "--splits",
        "1,2,3",
        "--threads",
        "1",
        "--no-mlflow",
        "--quiet",
    ]
    for key, value in {**FAST, **ODD}.items():
        if key not in ("tracking.mlflow", "train.epochs"):
            args += ["--set", f"{key}={value}"]
    return args


def test_a_killed_run_finishes_with_resume_and_its_name_only(tiny_us8k_master, tmp_path, procs):
    import torch

    cache = tmp_path / "cache"
    threads = torch.get_num_threads()
    try:  # the uninterrupted run of the same settings
        reference = run_cv(
            fast_config(
                tmp_path / "ref",
                tiny_us8k_master,
                name="ref",
                splits=SPLITS,
                **ODD,
                **{"train.threads": 1, "cache_dir": str(cache)},
            ),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "runs" / "odd"
    first = start(procs, tmp_path, odd_args(tmp_path, tiny_us8k_master, cache, "odd"), "first", FB_HOLD="epoch:2")
    kill_held(tmp_path, first)
    assert RunFolder(run).done() == [1]

    resume = ["kfold", "--resume", "--name", "odd", "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    code, out, err = finish(start(procs, tmp_path, resume, "resume"))
    assert code == 0, err[-3000:]
    assert list(trained(tmp_path, "resume").values()) == [[2, 3]]  # split 1 kept, 2 and 3 trained
    assert RunFolder(run).verified() == SPLITS
    scores = json.loads((run / "scores.json").read_text())
    assert scores["per_fold"] == reference.scores["per_fold"]
    for k in SPLITS:
        pd.testing.assert_frame_equal(
            pd.read_csv(run / "splits" / str(k) / "predictions.csv"),
            pd.read_csv(reference.run_dir / "splits" / str(k) / "predictions.csv"),
        )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["features"]["n_mels"] == 16 and saved["splits"] == SPLITS


@pytest.fixture
def finished(tiny_us8k_master, tmp_path):
    """A finished one-split run `first` (1 epoch, 16 Mel bands), made through the command line."""
    args = [
        "kfold",
        "--dataset",
        "us8k",
        "--root",
        str(tiny_us8k_master),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--name",
        "first",
        "--splits",
        "1",
        "--epochs",
        "1",
        "--no-mlflow",
        "--quiet",
        "--set",
        "features.n_mels=16",
    ]
    for key, value in FAST.items():
        if key not in ("tracking.mlflow", "train.epochs", "features.n_mels"):
            args += ["--set", f"{key}={value}"]
    assert cli.main(args) == 0
    return tmp_path / "runs"


def test_resume_without_a_name_continues_the_newest_run(finished, monkeypatch, capsys):
    import bench.drivers.kfold

    monkeypatch.setattr(
        bench.drivers.kfold, "fit_split", lambda *a, **kw: pytest.fail("a finished split trained again")
    )
    before = sorted(p.name for p in finished.iterdir())
    assert cli.main(["kfold", "--resume", "--runs-dir", str(finished), "--quiet"]) == 0
    assert "over 1 fold" in capsys.readouterr().out
    assert sorted(p.name for p in finished.iterdir()) == before


def test_resume_refuses_a_flag_that_changes_results_in_one_line(finished, capsys):
    capsys.readouterr()
    assert cli.main(["kfold", "--resume", "--name", "first", "--runs-dir", str(finished), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs: 1 -> 3" in err[0]
    assert cli.main(["kfold", "--resume", "--name", "nope", "--runs-dir", str(finished)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --resume: no run at {finished / 'nope'} (no config.yaml); check --name and --runs-dir"]
    assert not (finished / "nope").exists()


@pytest.mark.parametrize("name", [None, "again"])
def test_a_saved_config_starts_a_new_run(finished, name, capsys):
    saved = finished / "first" / "config.yaml"
    args = ["kfold", "--config", str(saved), "--quiet"] + (["--name", name] if name else [])
    assert cli.main(args) == 0, capsys.readouterr().err
    new = [p for p in finished.iterdir() if p.name != "first"]
    assert len(new) == 1 and (new[0].name == name if name else new[0].name.startswith("us8k-"))
    assert result_view(load_yaml(new[0] / "config.yaml")) == result_view(load_yaml(saved))
    assert load_yaml(new[0] / "config.yaml").name == new[0].name
    assert RunFolder(finished / "first").verified() == [1]  # the original run untouched, still verifies


def test_nested_resume_takes_the_saved_search_settings_unless_given(tmp_path):
    run = tmp_path / "runs" / "n"
    run.mkdir(parents=True)
    from bench.drivers.tune import load_space

    space = json.loads(json.dumps(load_space(None)))
    (run / "search.json").write_text(
        json.dumps(
            {"trials": 3, "inner_splits": 4, "space": space, "sampler_seed": 7, "prune_startup": 1, "prune_warmup": 2}
        )
    )
    parse = cli.make_parser().parse_args
    args = parse(["nested", "--resume", "--name", "n", "--runs-dir", str(tmp_path / "runs")])
    resume_search(args, run)
    assert (args.trials, args.inner_splits, args.sampler_seed, args.prune_startup, args.prune_warmup) == (3, 4, 7, 1, 2)
    args = parse(["nested", "--resume", "--name", "n", "--trials", "8", "--prune-warmup", "0"])
    resume_search(args, run)
    assert (args.trials, args.prune_warmup, args.inner_splits) == (8, 0, 4)  # given flags win (then checked)
    (run / "search.json").write_text(json.dumps({"trials": 3, "space": {"features.n_mels": [64]}}))
    with pytest.raises(ConfigError, match="give that --space FILE again"):
        resume_search(parse(["nested", "--resume", "--name", "n"]), run)
