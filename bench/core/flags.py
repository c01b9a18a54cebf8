"""The command line's options, one table: each option's spelling, help and argparse keywords, and
the config field it sets. The parser's options (`add`) and the config overrides (`overrides`) are
both built from it, so a new flag is one row. A light module: no torch, no pandas; the choices come
from bench.core.names (read from the source), so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from bench.core.names import dataset_names, model_names, protocol_names
from bench.core.presets import PRESETS

GIVEN = object()  # a Flag's `sets`: the field takes the value given


@dataclasses.dataclass(frozen=True)
class Flag:
    option: str  # "--batch-size", or a positional's name
    help: str
    field: str | None = None  # the config field it sets; None: the command's own option
    sets: Any = GIVEN  # a switch's value for `field` (--no-mlflow: False)
    kw: dict = dataclasses.field(
        default_factory=dict
    )  # argparse keywords; `choices` may be a function (read when built)

    @property
    def dest(self) -> str:
        return self.kw.get("dest") or self.option.lstrip("-").replace("-", "_")


def row(option: str, help: str, field: str | None = None, sets: Any = GIVEN, **kw) -> Flag:
    return Flag(option, help, field, sets, kw)


RAY = "(Ray: pip install -c constraints.txt -e '.[ray]')"
TABLE = [
    # which data and which folds (also `datasets check`)
    row("--dataset", "dataset kind (default: demo; see `datasets list`)", "dataset.name", choices=dataset_names),
    row("--root", "dataset folder (not needed for demo)", "dataset.root"),
    row(
        "--protocol",
        "fold protocol (default: the dataset's own; us8k/demo: predefined, gtzan/folder: stratified; "
        "random is leaky, to measure leakage only)",
        "protocol.name",
        choices=protocol_names,
    ),
    row("--folds", "folds of stratified/random (default: 10, folder: 5)", "protocol.folds", type=int),
    row(
        "--group-regex",
        "groups (speaker, artist: kept in one fold) from the file names: a regex with a named group "
        "'group', e.g. '^(?P<group>[a-z]+)_'",
        "dataset.group_regex",
        metavar="REGEX",
    ),
    row(
        "--groups-csv",
        "groups from a CSV with columns path,group (path relative to --root); folder datasets read "
        "<root>/groups.csv by themselves",
        "dataset.groups_csv",
        metavar="FILE",
    ),
    # what to run
    row(
        "--val",
        "'next': split k validates on fold k+1 and keeps the best epoch (default); 'none': train on all "
        "other folds and keep the last epoch (published protocol)",
        "protocol.val",
        choices=["next", "none"],
    ),
    row("--splits", "run only these splits, e.g. 1,2,3 (default: all)", "splits"),
    row("--model", "model (default: tutorial_cnn)", "model.name", choices=model_names),
    row(
        "--strict",
        "a file that cannot be used is an error instead of being quarantined",
        "dataset.strict",
        action="store_true",
        default=None,  # None: not given (the config decides)
    ),
    row(
        "--allow-leaky",
        "run even though identical audio sits in two folds, recording the run as leaky (scores.json, "
        "report.md, MLflow); without it kfold refuses",
        "dataset.allow_leaky",
        action="store_true",
        default=None,  # None: not given (the config decides)
    ),
    row(
        "--repeats",
        "R fold plans in one run (default: 1): stratified/random reshuffle the folds, repeat r with "
        "protocol seed + r - 1; predefined folds and fixed lists keep their folds and vary the training "
        "seed only. Split (r-1)*n + k is repeat r, fold k",
        "protocol.repeats",
        type=int,
        dest="protocol_repeats",
        metavar="R",
    ),
    # config
    row(
        "--preset",
        "a tutorial's system (seed, seed-librosa-cnn, seed-gtzan-vit, seed-gtzan-cnn) or the strong "
        "baseline; `cli.py presets` lists them with their sources",
        choices=list(PRESETS),
    ),
    row(
        "--config",
        "YAML config (e.g. runs/<name>/config.yaml or a tune best.yaml); its run name is ignored: this is a new run",
        metavar="FILE",
    ),
    row(
        "--set",
        "override any config field, e.g. --set features.n_mels=128 (repeatable)",
        action="append",
        default=[],
        metavar="KEY=VALUE",
    ),
    row("--epochs", "training epochs per split (default: 20)", "train.epochs", type=int),
    row("--batch-size", "clips per step (default: 16)", "train.batch_size", type=int),
    row("--device", "auto (CUDA when present, default), cpu or cuda", "train.device"),
    row(
        "--threads",
        "torch CPU threads (default 0, auto: one per core that is free when training starts, measured "
        "once; OMP_NUM_THREADS, when set, instead)",
        "train.threads",
        type=int,
        dest="train_threads",
        metavar="N",
    ),
    row("--seed", "training seed; split k uses seed + k (default: 0)", "train.seed", type=int),
    # output
    row("--name", "run folder name under --runs-dir (default: <dataset>-<timestamp>)", "name"),
    row("--runs-dir", "where run folders go (default: runs)", "runs_dir"),
    row(
        "--cache-dir",
        "waveform cache and generated data (default: $FOLDBENCH_CACHE or ~/.cache/foldbench)",
        "cache_dir",
    ),
    row(
        "--resume",
        "continue the run --name (default: the newest run, of --dataset if given), skipping finished "
        "splits; its settings come from its config.yaml, so nothing else needs repeating",
        action="store_true",
    ),
    row("--tracking-uri", "MLflow tracking URI (default: sqlite:///mlflow.db)", "tracking.tracking_uri"),
    row("--experiment", "MLflow experiment (default: the dataset name)", "tracking.experiment"),
    row("--no-mlflow", "write the run folder only", "tracking.mlflow", sets=False, action="store_true"),
    row("--quiet", "no progress bars", action="store_true"),
    # execution: kfold --executor ray
    row(
        "--executor",
        "local: splits one after another in this process (default); ray: each split a Ray task, run side "
        "by side, written here as each finishes (identical results)",
        choices=["local", "ray"],
        default="local",
    ),
    row(
        "--ray-address",
        "join the Ray cluster started with `ray start --head` (e.g. 10.0.0.5:6379; default: $RAY_ADDRESS, "
        "else a local Ray with this machine's cores and GPUs)",
        metavar="ADDR",
    ),
    row(
        "--split-cpus",
        "cores (and torch threads) per Ray task (default: --threads, else a local Ray's cores split "
        "between the splits, at least 1; 1 on a cluster)",
        type=int,
        metavar="N",
    ),
    row(
        "--split-gpus",
        "GPUs per Ray task; 0.25 lets four splits share one GPU (default: 1 when training on CUDA, else 0)",
        type=float,
        metavar="F",
    ),
    # workers: tune/nested --workers N
    row(
        "--workers",
        "N Optuna workers as Ray tasks on the study's storage, stopping together at exactly --trials "
        "(default: this process alone; several `tune` processes with one --storage cooperate the same way without Ray)",
        type=int,
        metavar="N",
    ),
    row(
        "--worker-cpus",
        "cores (and torch threads) per worker (default: --threads, else a local Ray's cores split "
        "between the workers, at least 1; 1 on a cluster)",
        type=int,
        metavar="N",
    ),
    row(
        "--worker-gpus",
        "GPUs per worker, 0.5 lets two share one (default: 1 when training on CUDA, else 0)",
        type=float,
        metavar="F",
    ),
    # the search (tune, nested)
    row(
        "--trials",
        "trials in the study in total: running the same command again continues the study up to this count "
        "(default: 20)",
        type=int,
        default=20,
    ),
    row("--study", "study name; results go to <runs-dir>/tune-<study>/ (default: the dataset name)"),
    row(
        "--storage",
        "Optuna storage URL, e.g. postgresql://host/db, so workers on several machines share one study "
        "(default: sqlite:///<runs-dir>/tune-<study>/study.db)",
        metavar="URL",
    ),
    row("--timeout", "start no new trial after this long, e.g. 3h, 90m, 600 (seconds)", metavar="DURATION"),
    row(
        "--heartbeat",
        "a running trial's heartbeat interval in the storage: a trial without one for 3x this (its worker "
        "was killed) is failed by another worker, not counted, and run again with the same settings "
        "(default: 60, so a killed trial is retried after 3 minutes)",
        metavar="SECONDS",
        type=int,
        default=60,
    ),
    row(
        "--space",
        "YAML search-space entries replacing the defaults, e.g. 'features.n_mels: [64, 128]', "
        "'train.max_lr: {low: 1.0e-4, high: 1.0e-2, log: true}', 'augment.time_shift: null' (not searched)",
        metavar="FILE",
    ),
    row("--sampler-seed", "TPE sampler seed (default: 0)", type=int, default=0),
    row(
        "--prune-startup", "trials that must complete before MedianPruner prunes any (default: 3)", type=int, default=3
    ),
    row("--prune-warmup", "splits a trial finishes before it can be pruned (default: 0)", type=int, default=0),
    row(
        "--inner-splits",
        "inner splits each trial trains (default: 2); the non-nested study tunes on the full plan's first N splits",
        type=int,
        default=2,
        metavar="N",
    ),
    row(
        "--no-non-nested",
        "skip the non-nested estimate (a study and a kfold run: about 1/folds of the cost)",
        action="store_true",
        default=None,  # None: not given (--resume: saved)
    ),
]
FLAGS = {f.option: f for f in TABLE}
assert len(FLAGS) == len(TABLE), "an option in two rows"


def add(group, *options: str, **changed) -> None:
    """The table's rows for `options`, added to an argparse parser or group; `changed`: keywords
    (help, default, ...) this command words or sets otherwise, for every option given."""
    for option in options:
        flag = FLAGS[option]
        kw = {"help": flag.help, **flag.kw, **changed}
        if callable(kw.get("choices")):
            kw["choices"] = kw["choices"]()
        group.add_argument(option, **kw)


DATA = ("--dataset", "--root", "--protocol", "--folds", "--group-regex", "--groups-csv")
SEARCH = ("--heartbeat", "--space", "--sampler-seed", "--prune-startup", "--prune-warmup")


def config_options(parser: argparse.ArgumentParser, splits: str = "all", run_folder: bool = True) -> None:
    """The options every training command shares. `splits`: the --splits default in the help;
    `run_folder=False` (tune names its own folders): --name and --resume stay out of the help."""
    g = parser.add_argument_group("what to run")
    add(g, *DATA, "--val")
    add(g, "--splits", help=f"run only these splits, e.g. 1,2,3 (default: {splits})")
    add(g, "--model", "--strict", "--allow-leaky")
    g = parser.add_argument_group("config")
    add(g, "--preset", "--config", "--set", "--epochs", "--batch-size", "--device", "--threads", "--seed")
    g = parser.add_argument_group("output")
    add(g, "--name", **({} if run_folder else {"help": argparse.SUPPRESS}))
    add(g, "--runs-dir", "--cache-dir")
    add(g, "--resume", **({} if run_folder else {"help": argparse.SUPPRESS}))
    add(g, "--tracking-uri", "--experiment", "--no-mlflow", "--quiet")


def engine_options(parser: argparse.ArgumentParser) -> None:
    add(parser.add_argument_group(f"execution {RAY}"), "--executor", "--ray-address", "--split-cpus", "--split-gpus")


def worker_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(f"workers {RAY}")
    add(g, "--workers")
    add(
        g,
        "--ray-address",
        help="join the Ray cluster started with `ray start --head` (default: $RAY_ADDRESS, else a local "
        "Ray); a cluster of several machines needs --storage postgresql://... and an MLflow server "
        "(--tracking-uri http://...)",
    )
    add(g, "--worker-cpus", "--worker-gpus")


def tune_options(parser: argparse.ArgumentParser) -> None:
    """The study's own options (bench.drivers.tune.TuneConfig); the config options come first."""
    add(parser.add_argument_group("search"), "--trials", "--study", "--storage", "--timeout", *SEARCH)


class Default(int):
    """An option's default, told apart from the same value given on the command line (a resumed
    nested run takes its saved search settings unless they are given)."""


SAVED = ("trials", "inner_splits", "sampler_seed", "prune_startup", "prune_warmup")  # nested: in search.json


def nested_options(parser: argparse.ArgumentParser) -> None:
    """nested's search: tune's (each outer split's study), the inner splits, the non-nested estimate."""
    g = parser.add_argument_group("search")
    trials = "trials of each outer split's study, and of the non-nested study (default: 8)"
    add(g, "--trials", help=trials, default=8)
    add(g, "--inner-splits", "--no-non-nested")
    add(g, *SEARCH)
    for action in parser._actions:  # --resume takes the saved settings where these stay untold
        if action.dest in SAVED and type(action.default) is int:
            action.default = Default(action.default)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """{config field: value} of the flags given: what the command line sets over the config."""
    out = {}
    for flag in TABLE:
        value = getattr(args, flag.dest, None)
        if flag.field is None or value is None or (flag.sets is not GIVEN and not value):
            continue  # not a field's flag, or not given (a switch: not set)
        out[flag.field] = value if flag.sets is GIVEN else flag.sets
    return out


def given(args: argparse.Namespace) -> dict[str, str]:
    """{config field: its flag} of the flags given (an error about the field names the flag)."""
    return {field: next(f.option for f in TABLE if f.field == field) for field in overrides(args)}


def version() -> str:
    """The installed package's version (importlib.metadata); a checkout that was never installed
    has none recorded."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("foldbench")
    except PackageNotFoundError:
        return "unknown (not installed: `pip install -e .` records the version)"


class VersionAction(argparse.Action):
    """--version: looked up only when asked for."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=kw["help"])

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"foldbench {version()}")
        parser.exit()
