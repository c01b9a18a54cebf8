"""The kfold command end to end on a tiny dataset: run folder, report, MLflow, resume, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import cli
from bench.drivers import kfold as cv_mod
from bench.drivers.kfold import run_cv
from tests.conftest import FAST, fast_config

REPO = Path(__file__).resolve().parents[1]


def fast_flags(tmp_path, root):
    flags = [
        "--dataset",
        "us8k",
        "--root",
        str(root),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    for key, value in FAST.items():
        if key != "tracking.mlflow":
            flags += ["--set", f"{key}={value}"]
    return flags


def test_kfold_end_to_end_with_mlflow(tiny_us8k_master, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli.main(
        [
            "kfold",
            *fast_flags(tmp_path, tiny_us8k_master),
            "--name",
            "e2e",
            "--epochs",
            "2",
            "--tracking-uri",
            uri,
            "--experiment",
            "tiny",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "over 10 folds" in out and "report:" in out
    run = tmp_path / "runs" / "e2e"
    for name in (
        "config.yaml",
        "folds.csv",
        "report.md",
        "scores.json",
        "confusion_counts.png",
        "confusion_normalized.csv",
        "learning_curves.png",
        "per_class.csv",
    ):
        assert (run / name).is_file(), name
    for k in range(1, 11):
        assert (run / "splits" / str(k) / "DONE").exists()
        pred = pd.read_csv(run / "splits" / str(k) / "predictions.csv")
        assert set(pred["fold"]) == {k}
        assert list(pred.columns[4:]) == ["prob_air_conditioner", "prob_car_horn", "prob_children_playing"]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["n_splits"] == 10 and 0 <= scores["acc_mean"] <= 1

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(children) == 10
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert parent["params.features.n_mels"].iloc[0] == "32"
    assert parent["metrics.acc_mean"].iloc[0] == pytest.approx(scores["acc_mean"])
    assert sorted(children["params.test_fold"].astype(int)) == list(range(1, 11))
    assert children["metrics.test_acc"].notna().all() and children["metrics.val_acc"].notna().all()
    client = mlflow.tracking.MlflowClient(uri)
    history = client.get_metric_history(children["run_id"].iloc[0], "train_loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parent["run_id"].iloc[0])}
    assert {"report.md", "folds.csv", "config.yaml", "confusion_counts.png"} <= artifacts


def test_killed_run_resumes_to_the_same_scores(tiny_us8k_master, tmp_path, monkeypatch):
    full = run_cv(fast_config(tmp_path, tiny_us8k_master, name="full"), progress=False)

    def kill_after_split_3(split, info):
        if split.index == 3:
            raise KeyboardInterrupt

    cfg = fast_config(tmp_path, tiny_us8k_master, name="killed")
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, on_split=kill_after_split_3, progress=False)
    done = sorted(p.parent.name for p in (tmp_path / "runs" / "killed").glob("splits/*/DONE"))
    assert done == ["1", "2", "3"]

    trained = []
    real = cv_mod.fit_split
    monkeypatch.setattr(cv_mod, "fit_split", lambda *a, **kw: trained.append(1) or real(*a, **kw))
    resumed = run_cv(cfg, resume=True, progress=False)
    assert len(trained) == 7  # splits 1-3 were not trained again
    assert resumed.scores["per_fold"] == full.scores["per_fold"]
    assert resumed.scores["acc_mean"] == full.scores["acc_mean"]


def test_resume_refuses_changed_settings_and_a_second_run_refuses_the_folder(tiny_us8k_master, tmp_path):
    cfg = fast_config(tmp_path, tiny_us8k_master, name="r", splits=[1], **{"train.epochs": 1})
    run_cv(cfg, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        run_cv(cfg, progress=False)
    changed = fast_config(
        tmp_path, tiny_us8k_master, name="r", splits=[1], **{"train.epochs": 1, "features.n_mels": 16}
    )
    with pytest.raises(ValueError, match=r"features\.n_mels: 32 -> 16"):
        run_cv(changed, resume=True, progress=False)


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    code = cli.main(
        [
            "kfold",
            "--dataset",
            "us8k",
            "--root",
            str(tmp_path / "missing"),
            "--no-mlflow",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["kfold", "--set", "features.nmels=3", "--no-mlflow"]) == 2


def test_help_explains_the_commands():
    out = subprocess.run(
        [sys.executable, "cli.py", "kfold", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for text in ("--resume", "--preset", "--set KEY=VALUE", "mlflow ui", "--val", "--strict"):
        assert text in out


def test_resume_refuses_a_dataset_whose_labels_or_files_changed(tiny_us8k, tmp_path):
    cfg = fast_config(tmp_path, tiny_us8k, name="d", splits=[1], **{"train.epochs": 1})
    run_cv(cfg, progress=False)
    csv = tiny_us8k / "metadata" / "UrbanSound8K.csv"
    meta = pd.read_csv(csv)
    meta.loc[0, ["classID", "class"]] = [1, "car_horn"]  # someone fixes a label in the metadata
    meta.to_csv(csv, index=False)
    with pytest.raises(ValueError, match="the dataset changed since this run started"):
        run_cv(cfg, resume=True, progress=False)
    assert pd.read_csv(tmp_path / "runs" / "d" / "folds.csv")["label"][0] == 0  # nothing rewritten


def test_unknown_split_index_is_an_error(tiny_us8k_master, tmp_path):
    with pytest.raises(ValueError, match="no split 11"):
        run_cv(fast_config(tmp_path, tiny_us8k_master, splits=[1, 11]), progress=False)


HEAVY = ("torch", "torchaudio", "sklearn", "pandas", "mlflow", "optuna", "matplotlib", "scipy")


def test_help_imports_nothing_heavy():
    """Every command's --help is built without torch, scikit-learn, pandas or MLflow: that is what
    makes `cli.py --help` answer at once (the time itself is measured in the README, not here)."""
    probe = (
        "import sys, contextlib, io, cli\n"
        "for argv in ([], ['kfold'], ['tune'], ['nested'], ['speed'], ['suite'], ['datasets', 'check'],"
        " ['compare'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        cli.make_parser().parse_args([*argv, '--help'] if argv != ['--version'] else argv)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_the_light_name_lists_equal_the_registries():
    from bench.data.datasets import list_datasets
    from bench.models import list_models
    from bench.core.names import dataset_names, model_names, protocol_names
    from protocols import list_protocols

    assert dataset_names() == list_datasets()
    assert protocol_names() == list_protocols()
    assert model_names() == list_models()
    from bench.data.manifest import DATASETS
    from bench.core.names import rootless_datasets

    assert rootless_datasets() == tuple(sorted(n for n, kind in DATASETS.items() if not kind.needs_root)) == ("demo",)


def test_version_and_the_console_command(capsys):
    from importlib.metadata import PackageNotFoundError, version

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.strip()
    try:
        assert out == f"foldbench {version('foldbench')}"
    except PackageNotFoundError:
        assert out.startswith("foldbench ") and "not installed" in out
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"foldbench": "cli:main"}


def test_an_unknown_name_is_refused_at_parse_time_in_one_line():
    run = subprocess.run(
        [sys.executable, "cli.py", "kfold", "--model", "resnet"], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 2 and "invalid choice: 'resnet'" in run.stderr and "tutorial_cnn" in run.stderr


NO_DATA_MISTAKES = [  # (flags, what the one line says)
    (["--device", "cpuu"], "train.device='cpuu': must be auto, cpu, cuda or cuda:N; fix it with --device <value>"),
    (["--set", "features.nmels=32"], "unknown key 'nmels' in FeatureConfig; did you mean 'n_mels'?"),
    (["--epochs", "0"], "train.epochs=0: must be 1..100000; fix it with --epochs <value>"),
    (["--dataset", "us8k"], "dataset 'us8k' needs --root, the folder that holds it"),
]


@pytest.mark.parametrize("flags,says", NO_DATA_MISTAKES)
def test_a_mistake_that_needs_no_data_is_refused_before_torch_is_imported(flags, says, tmp_path):
    """Refused in one line, exit 2, with torch (and pandas) never imported: it answers as fast as --help."""
    probe = (
        "import contextlib, io, json, sys, cli\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    rc = cli.main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'pandas') if m in sys.modules]\n"
        "print(json.dumps({'rc': rc, 'err': err.getvalue(), 'heavy': heavy}))\n"
    )
    argv = ["kfold", *flags, "--runs-dir", str(tmp_path / "runs"), "--no-mlflow"]
    run = subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO, capture_output=True, text=True, check=True)
    got = json.loads(run.stdout)
    lines = [line for line in got["err"].splitlines() if line.strip()]
    assert got["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), got
    assert says in lines[0]
    assert got["heavy"] == [], got
    assert not (tmp_path / "runs").exists()


def test_a_flag_names_itself_and_set_names_the_key():
    """The same wrong device: given as --device, the line names --device; given with --set, --set."""
    from bench.commands.configs import build_config, checked
    from bench.core.config import ConfigError

    parse = cli.make_parser().parse_args
    with pytest.raises(ConfigError) as flag:
        checked(build_config(args := parse(["kfold", "--device", "cuda0"])), args)
    assert str(flag.value).endswith("; fix it with --device <value>") and "--set" not in str(flag.value)
    with pytest.raises(ConfigError, match=r"fix it with --set train.device=<value>"):
        checked(build_config(args := parse(["kfold", "--set", "train.device=cuda0"])), args)


def test_every_flag_of_the_table_sets_its_config_field():
    """One table (bench/core/flags.py) builds both the options and the overrides: each row's flag,
    given on the command line, lands in its field, and no field is set by two flags."""
    from bench.commands.configs import build_config
    from bench.core.config import flatten, RunConfig
    from bench.core.flags import GIVEN, TABLE

    rows = [f for f in TABLE if f.field is not None]
    assert len({f.field for f in rows}) == len(rows)
    fields = flatten(RunConfig())
    samples = {int: "3", str: "x3"}
    for flag in rows:
        assert flag.field in fields, flag.option
        kind = flag.kw.get("type", str)
        if flag.kw.get("action") == "store_true":
            argv, want = [flag.option], True if flag.sets is GIVEN else flag.sets  # --no-mlflow: False
        elif "choices" in flag.kw:
            choices = flag.kw["choices"]() if callable(flag.kw["choices"]) else flag.kw["choices"]
            argv, want = [flag.option, choices[-1]], choices[-1]
        elif flag.option == "--splits":
            argv, want = [flag.option, "3"], [3]
        else:
            argv, want = [flag.option, samples[kind]], kind(samples[kind])
        cfg = build_config(cli.make_parser().parse_args(["kfold", *argv]))
        assert flatten(cfg)[flag.field] == want, flag.option


def test_the_first_demo_run_says_it_generates_the_data(tmp_path, monkeypatch, capsys):
    from bench.core.config import DatasetConfig
    from bench.data import synth, us8k

    monkeypatch.setattr(synth, "make_demo", lambda root: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        us8k.load_demo(DatasetConfig(), tmp_path, [])
    assert capsys.readouterr().err.strip() == f"generating the demo dataset (first run only) in {tmp_path / 'demo'} ..."
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / ".complete").write_text("ok\n")
    with pytest.raises(KeyboardInterrupt):
        us8k.load_demo(DatasetConfig(), tmp_path, [])
    assert capsys.readouterr().err == ""  # made once: nothing to say
