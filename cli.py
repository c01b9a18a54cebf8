"""foldbench command line: argparse wiring only. Each command parses into a RunConfig and calls bench.

  python cli.py kfold --dataset demo
  python cli.py kfold --dataset us8k --root ~/data/UrbanSound8K --epochs 30
  python cli.py kfold --dataset folder --root ~/data/my_sounds --group-regex '^(?P<group>[a-z]+)_'
  python cli.py datasets check --dataset gtzan --root ~/data/gtzan
  python cli.py compare runs/us8k-random runs/us8k-honest runs/us8k-tuned
  python cli.py tune --dataset demo --trials 8

Installed, the same commands run as `foldbench kfold ...`. Heavy modules (torch, scikit-learn,
pandas, MLflow) are imported inside the commands, never to build the parser: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from bench.core import config as C
from bench.core.names import dataset_names, model_names, protocol_names
from bench.core.presets import PRESETS, apply_preset

EPILOG = """Config precedence: defaults < --preset < --config FILE < --set KEY=VALUE < the flags above.
Results go to runs/<name>/ (report.md, scores.json, confusion matrices, learning curves) and to
MLflow (default store sqlite:///mlflow.db; open with `mlflow ui --backend-store-uri sqlite:///mlflow.db`)."""


def dataset_options(g) -> None:
    """Which data and which folds: shared by the training commands and `datasets check`."""
    g.add_argument("--dataset", choices=dataset_names(), help="dataset kind (default: demo; see `datasets list`)")
    g.add_argument("--root", help="dataset folder (not needed for demo)")
    g.add_argument(
        "--protocol",
        choices=protocol_names(),
        help="fold protocol (default: the dataset's own; us8k/demo: predefined, "
        "gtzan/folder: stratified; random is leaky, to measure leakage only)",
    )
    g.add_argument("--folds", type=int, help="folds of stratified/random (default: 10, folder: 5)")
    g.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="groups (speaker, artist: kept in one fold) from the file names: a regex with "
        "a named group 'group', e.g. '^(?P<group>[a-z]+)_'",
    )
    g.add_argument(
        "--groups-csv",
        metavar="FILE",
        help="groups from a CSV with columns path,group (path relative to --root); "
        "folder datasets read <root>/groups.csv by themselves",
    )


def config_options(parser: argparse.ArgumentParser, splits: str = "all", run_folder: bool = True) -> None:
    """The options every training command shares; each maps onto one config field. `splits`: the
    --splits default in the help; `run_folder=False` (tune, which names its own folders): --name
    and --resume stay out of the help, and the command refuses them with a hint."""
    g = parser.add_argument_group("what to run")
    dataset_options(g)
    g.add_argument(
        "--val",
        choices=["next", "none"],
        help="'next': split k validates on fold k+1 and keeps the best epoch (default); "
        "'none': train on all other folds and keep the last epoch (published protocol)",
    )
    g.add_argument("--splits", help=f"run only these splits, e.g. 1,2,3 (default: {splits})")
    g.add_argument("--model", choices=model_names(), help="model (default: tutorial_cnn)")
    g.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="a file that cannot be used is an error instead of being quarantined",
    )
    g.add_argument(
        "--allow-leaky",
        action="store_true",
        default=None,
        help="run even though identical audio sits in two folds, recording the run as "
        "leaky (scores.json, report.md, MLflow); without it kfold refuses",
    )
    g = parser.add_argument_group("config")
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a tutorial's system (seed, seed-librosa-cnn, seed-gtzan-vit, seed-gtzan-cnn) or "
        "the strong baseline; `cli.py presets` lists them with their sources",
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config (e.g. runs/<name>/config.yaml or a tune best.yaml); "
        "its run name is ignored: this is a new run",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set features.n_mels=128 (repeatable)",
    )
    g.add_argument("--epochs", type=int, help="training epochs per split (default: 20)")
    g.add_argument("--batch-size", type=int, help="clips per step (default: 16)")
    g.add_argument("--device", help="auto (CUDA when present, default), cpu or cuda")
    g.add_argument(
        "--threads",
        type=int,
        dest="train_threads",
        metavar="N",
        help="torch CPU threads (default 0, auto: one per core that is free when training "
        "starts, measured once; OMP_NUM_THREADS, when set, instead)",
    )
    g.add_argument("--seed", type=int, help="training seed; split k uses seed + k (default: 0)")
    g = parser.add_argument_group("output")
    g.add_argument(
        "--name",
        help="run folder name under --runs-dir (default: <dataset>-<timestamp>)" if run_folder else argparse.SUPPRESS,
    )
    g.add_argument("--runs-dir", help="where run folders go (default: runs)")
    g.add_argument(
        "--cache-dir", help="waveform cache and generated data (default: $FOLDBENCH_CACHE or ~/.cache/foldbench)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --name (default: the newest run, of --dataset if given), "
        "skipping finished splits; its settings come from its config.yaml, so "
        "nothing else needs repeating"
        if run_folder
        else argparse.SUPPRESS,
    )
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    g.add_argument("--experiment", help="MLflow experiment (default: the dataset name)")
    g.add_argument("--no-mlflow", action="store_true", help="write the run folder only")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


FLAG_FIELDS = {  # flag -> config field it sets
    "dataset": "dataset.name",
    "root": "dataset.root",
    "strict": "dataset.strict",
    "allow_leaky": "dataset.allow_leaky",
    "protocol": "protocol.name",
    "val": "protocol.val",
    "folds": "protocol.folds",
    "group_regex": "dataset.group_regex",
    "groups_csv": "dataset.groups_csv",
    "splits": "splits",
    "model": "model.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "device": "train.device",
    "seed": "train.seed",
    "train_threads": "train.threads",
    "protocol_repeats": "protocol.repeats",
    "name": "name",
    "runs_dir": "runs_dir",
    "cache_dir": "cache_dir",
    "tracking_uri": "tracking.tracking_uri",
    "experiment": "tracking.experiment",
}


def build_config(args: argparse.Namespace, base: C.RunConfig | None = None) -> C.RunConfig:
    """`base` (the defaults; a resumed run: its saved config) < --preset < --config < --set < flags.
    A --config file never names the run: its `name` is ignored (--name or the default decides)."""
    cfg = base or C.RunConfig()
    if getattr(args, "preset", None):
        cfg = apply_preset(cfg, args.preset)
    if getattr(args, "config", None):
        cfg = C.load_yaml(args.config, base=cfg, with_name=False)
    cfg = C.merge(cfg, C.parse_overrides(getattr(args, "set", [])), "--set")
    flags = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "no_mlflow", False):
        flags["tracking.mlflow"] = False
    return C.merge(cfg, flags, "command line")


def resumed_config(args: argparse.Namespace, latest) -> C.RunConfig | None:
    """--resume: the run's own config.yaml (run --name, else `latest(runs_dir, --dataset or None)`,
    the newest), with runs_dir set to where it was found; None without --resume."""
    if not args.resume:
        return None
    runs_dir = args.runs_dir or C.RunConfig().runs_dir
    name = args.name or latest(runs_dir, args.dataset)
    if name is None:
        what = f"{args.dataset} run" if args.dataset else "run"
        raise C.ConfigError(f"--resume: no earlier {what} in {runs_dir}/; give --name and --runs-dir")
    saved = Path(runs_dir).expanduser() / C.plain_name(name, "--name") / "config.yaml"
    if not saved.is_file():
        raise C.ConfigError(f"--resume: no run at {saved.parent} (no config.yaml); check --name and --runs-dir")
    return C.merge(C.load_yaml(saved), {"name": name, "runs_dir": runs_dir})


def cmd_kfold(args: argparse.Namespace) -> int:
    from bench.drivers.kfold import run_cv
    from bench.core.runfolder import default_name, latest_run
    from reports import summary_table

    cfg = C.validate(build_config(args, base=resumed_config(args, latest_run)))
    if cfg.name is None:
        cfg.name = default_name(cfg)
    runner = engine(args)
    with ray_connected(runner, cfg):  # Ray joined and the tasks' size checked before anything is written
        result = run_cv(cfg, resume=args.resume, progress=not args.quiet, engine=runner)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if len(result.quarantine):
        print(f"quarantined {len(result.quarantine)} file(s), listed in {result.run_dir}/report.md", file=sys.stderr)
    print(summary_table(result.scores))
    print(f"\nreport: {result.run_dir / 'report.md'}")
    print_mlflow_hint(cfg, result.run_dir)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports import summary_table
    from reports.render import rebuild

    scores = rebuild(args.run)
    print(summary_table(scores))
    print(f"\nreport: {args.run.rstrip('/')}/report.md (also report.html, scores.json, plots)")
    return 0


def engine_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("execution (Ray: pip install -c constraints.txt -e '.[ray]')")
    g.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: splits one after another in this process (default); ray: each split a "
        "Ray task, run side by side, written here as each finishes (identical results)",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join the Ray cluster started with `ray start --head` (e.g. 10.0.0.5:6379; "
        "default: $RAY_ADDRESS, else a local Ray with this machine's cores and GPUs)",
    )
    g.add_argument(
        "--split-cpus",
        type=int,
        metavar="N",
        help="cores (and torch threads) per Ray task (default: --threads, else a local Ray's "
        "cores split between the splits, at least 1; 1 on a cluster)",
    )
    g.add_argument(
        "--split-gpus",
        type=float,
        metavar="F",
        help="GPUs per Ray task; 0.25 lets four splits share one GPU (default: 1 when training on CUDA, else 0)",
    )


def worker_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workers (Ray: pip install -c constraints.txt -e '.[ray]')")
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N Optuna workers as Ray tasks on the study's storage, stopping together at "
        "exactly --trials (default: this process alone; several `tune` processes "
        "with one --storage cooperate the same way without Ray)",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join the Ray cluster started with `ray start --head` (default: $RAY_ADDRESS, "
        "else a local Ray); a cluster of several machines needs --storage postgresql://... "
        "and an MLflow server (--tracking-uri http://...)",
    )
    g.add_argument(
        "--worker-cpus",
        type=int,
        metavar="N",
        help="cores (and torch threads) per worker (default: --threads, else a local Ray's cores "
        "split between the workers, at least 1; 1 on a cluster)",
    )
    g.add_argument(
        "--worker-gpus",
        type=float,
        metavar="F",
        help="GPUs per worker, 0.5 lets two share one (default: 1 when training on CUDA, else 0)",
    )


def ray_check(args: argparse.Namespace, on: bool, flags: tuple[str, ...], switch: str) -> None:
    """Ray's flags given without Ray asked for, or with bad values, refused; Ray's absence too."""
    if not on:
        for flag in flags:
            if getattr(args, flag) is not None:
                raise C.ConfigError(f"--{flag.replace('_', '-')} is for {switch}")
        return
    cpus, gpus = getattr(args, flags[1]), getattr(args, flags[2])
    if cpus is not None and cpus < 1:
        raise C.ConfigError(f"--{flags[1].replace('_', '-')} {cpus}: at least 1")
    if gpus is not None and not (0 <= gpus <= 1 or float(gpus).is_integer()):
        raise C.ConfigError(
            f"--{flags[2].replace('_', '-')} {gpus}: a share of one GPU (0 to 1) or a whole number of GPUs"
        )
    from bench.scale.ray_engine import require_ray

    require_ray()


def study_workers(args: argparse.Namespace):
    """`--workers N` as Ray tasks (None: this process alone); Ray's flags checked, its absence refused."""
    ray_check(args, args.workers is not None, ("ray_address", "worker_cpus", "worker_gpus"), "--workers N")
    if args.workers is None:
        return None
    from bench.scale.ray_workers import StudyWorkers

    return StudyWorkers(args.workers, args.ray_address, args.worker_cpus, args.worker_gpus)


@contextlib.contextmanager
def ray_connected(runner, cfg):
    """Ray connected for the whole command when `runner` (RayEngine, StudyWorkers) is set, and the
    size of its tasks checked against the cluster: a refusal comes before anything is written."""
    if runner is None:
        yield
        return
    from bench.scale.ray_engine import session
    from bench.train.fit import resolve_device

    with session(runner.address):
        runner.check(cfg, resolve_device(cfg.train.device))
        yield


def engine(args: argparse.Namespace):
    """`run_cv`'s engine for --executor (None: in this process); Ray's absence is refused here."""
    ray_check(args, args.executor == "ray", ("ray_address", "split_cpus", "split_gpus"), "--executor ray")
    if args.executor != "ray":
        return None
    from bench.scale.ray_engine import RayEngine

    return RayEngine(args.ray_address, args.split_cpus, args.split_gpus)


def print_mlflow_hint(cfg, run_dir) -> None:
    from bench.tracking.layout import ui_hint

    hint = ui_hint(cfg.tracking, run_dir)
    if hint:
        print(f"MLflow: {hint}")


def cmd_datasets_check(args: argparse.Namespace) -> int:
    import json

    from bench.drivers.check import check_dataset, render_text

    cfg = build_config(args)
    result = check_dataset(cfg, progress=not (args.quiet or args.json))
    print(json.dumps(result.to_json(), indent=1) if args.json else render_text(result, cfg.audio.duration))
    return 0 if result.ok else 1


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from bench.drivers.check import render_list

    print(render_list())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from bench.tracking.tracker import Tracker
    from reports.compare import to_json, compare_runs, output_folder, render_comparison, save_comparison

    cfg = build_config(args)  # --tracking-uri, --experiment, --no-mlflow, --runs-dir as for kfold
    folder = output_folder(args.out, cfg.runs_dir)
    result = compare_runs(*args.runs, rope=args.rope)
    tracker = Tracker(cfg.tracking, experiment=result["experiment"])  # the store answers before any write
    save_comparison(result, folder, tracker)
    print(
        json.dumps(to_json(result), indent=1)
        if args.json
        else render_comparison(result) + f"\nwritten: {folder}/compare.md (also .csv, .json, .png)"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bench.train.predict import predict_files, render

    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir() or out.suffix.lower() != ".csv"):
        raise C.ConfigError(f"--out {args.out}: give a .csv file in an existing folder")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = predict_files(args.run, args.files, split=args.split, device=args.device)
    print(render(result))
    if out is not None:
        from bench.core.atomic import atomic_write_csv

        atomic_write_csv(out, result.table)
        print(f"\nwritten: {out} ({len(result.table)} rows)")
    return 0


def add_predict_command(sub) -> None:
    predict = sub.add_parser(
        "predict",
        help="classify audio files with a run's saved split models (their ensemble by default)",
        description="Decode each file exactly as the run's training did (its audio settings and the "
        "cache's int16 round trip; like a training clip, only its first audio.duration seconds, a "
        "longer file is noted), compute its front end, normalise with the split's "
        "training statistics, run the model and take the softmax. Default: the ensemble "
        "of every finished split model (the mean of their probabilities); --split K: that "
        "split's model alone. Models are checked against their split's DONE digest first. "
        "A directory stands for its audio files (.wav .flac .ogg .au .aiff .aif, any "
        "depth, sorted). A file that cannot be decoded is an error naming it and the "
        "reason (every such file is listed), and nothing is predicted.",
        epilog="  python cli.py predict --run runs/demo-honest clip.wav other.flac\n"
        "  python cli.py predict --run runs/demo-honest my_sounds/ --out preds.csv\n"
        "  python cli.py predict --run runs/demo-honest clip.wav --split 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("files", nargs="+", metavar="FILE", help="audio files or directories")
    predict.add_argument("--run", required=True, metavar="DIR", help="a run folder, e.g. runs/<name>")
    predict.add_argument("--split", type=int, metavar="K", help="use split K's model only")
    predict.add_argument("--out", metavar="FILE.csv", help="also write path, predicted, prob_<class> per file")
    predict.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="cpu (default: the probabilities of a CPU-trained run exactly), cuda or auto",
    )
    predict.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    predict.set_defaults(func=cmd_predict)


def add_datasets_command(sub) -> None:
    datasets = sub.add_parser("datasets", help="check a dataset, list the dataset kinds and protocols")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="SUBCOMMAND")
    check = dsub.add_parser(
        "check",
        help="decode every file and check the fold plan; exit 1 when a kfold run would be wrong",
        description="Clips per class and fold; files that cannot be decoded, are empty, silent, "
        "non-finite, very short or very long; sample rates, channels and formats; identical "
        "audio and the folds its copies sit in; groups that cross folds. Exit status 1 when "
        "something would make a kfold run wrong (leakage, conflicting labels, no plan).",
    )
    dataset_options(check.add_argument_group("what to check"))
    check.add_argument(
        "--strict", action="store_true", default=None, help="count files kfold would quarantine as errors"
    )
    check.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set protocol.seed=3",
    )
    check.add_argument("--config", metavar="FILE", help="YAML config (e.g. runs/<name>/config.yaml)")
    check.add_argument("--cache-dir", help="where demo data is generated")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_datasets_check)
    listing = dsub.add_parser("list", help="the dataset kinds (with the layout each expects) and protocols")
    listing.set_defaults(func=cmd_datasets_list)


def cmd_speed(args: argparse.Namespace) -> int:
    from bench.drivers.speed import render, run_speed, use_replica
    from reports.files import atomic_write_json

    cfg = build_config(args)
    if args.replica:
        cfg = use_replica(cfg, args.replica)
    result = run_speed(
        cfg, time_box=args.time_box, repeats=args.repeats, threads=cfg.train.threads or None, progress=not args.quiet
    )
    print(render(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def search_options(g) -> None:
    """The search's own options (bench.drivers.tune.TuneConfig) that `tune` and `nested` share."""
    g.add_argument(
        "--heartbeat",
        metavar="SECONDS",
        type=int,
        default=60,
        help="a running trial's heartbeat interval in the storage: a trial without one for "
        "3x this (its worker was killed) is failed by another worker, not counted, and "
        "run again with the same settings (default: 60, so a killed trial is retried "
        "after 3 minutes)",
    )
    g.add_argument(
        "--space",
        metavar="FILE",
        help="YAML search-space entries replacing the defaults, e.g. "
        "'features.n_mels: [64, 128]', 'train.max_lr: {low: 1.0e-4, high: 1.0e-2, "
        "log: true}', 'augment.time_shift: null' (not searched)",
    )
    g.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed (default: 0)")
    g.add_argument(
        "--prune-startup",
        type=int,
        default=3,
        help="trials that must complete before MedianPruner prunes any (default: 3)",
    )
    g.add_argument(
        "--prune-warmup", type=int, default=0, help="splits a trial finishes before it can be pruned (default: 0)"
    )


TUNE_EPILOG = """Config precedence: defaults < --preset < --config FILE < --set KEY=VALUE < the flags above.
Results go to <runs-dir>/tune-<study>/ (runs/tune-<dataset>/ by default): best.yaml, trials.csv,
report.md, plots, trials/<n>/ (each trial's run folder), study.db. Running the same command again
continues the study. Each finished trial prints one line; --quiet drops the trials bar only. Ties in
val_acc_mean (equal fractions of clips) go to the earlier trial. MLflow as for kfold (default store
sqlite:///mlflow.db; open with `mlflow ui --backend-store-uri sqlite:///mlflow.db`).

  python cli.py tune --dataset demo --trials 8
  python cli.py tune --dataset us8k --root ~/data/UrbanSound8K --trials 50 --study us8k-mel --timeout 3h"""


def tune_options(parser: argparse.ArgumentParser) -> None:
    """The study's own options (bench.drivers.tune.TuneConfig); the config options come first."""
    g = parser.add_argument_group("search")
    g.add_argument(
        "--trials",
        type=int,
        default=20,
        help="trials in the study in total: running the same command again continues "
        "the study up to this count (default: 20)",
    )
    g.add_argument("--study", help="study name; results go to <runs-dir>/tune-<study>/ (default: the dataset name)")
    g.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL, e.g. postgresql://host/db, so workers on several machines "
        "share one study (default: sqlite:///<runs-dir>/tune-<study>/study.db)",
    )
    g.add_argument(
        "--timeout", metavar="DURATION", help="start no new trial after this long, e.g. 3h, 90m, 600 (seconds)"
    )
    search_options(g)


def tune_config(args: argparse.Namespace, **kw):
    from bench.drivers.tune import TuneConfig

    return TuneConfig(
        trials=args.trials,
        space=args.space,
        seed=args.sampler_seed,
        prune_startup=args.prune_startup,
        prune_warmup=args.prune_warmup,
        heartbeat=args.heartbeat,
        **kw,
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from bench.drivers.study import best_trial
    from bench.drivers.tune import parse_duration, run_study

    if args.name or args.resume:  # not in tune's help; refused with the flag to use instead
        raise C.ConfigError(
            "tune names its own folders (<runs-dir>/tune-<study>/trials/<n>) and always "
            "continues its study: use --study instead of --name/--resume"
        )
    cfg = build_config(args)
    tune = tune_config(args, study=args.study, storage=args.storage, timeout=parse_duration(args.timeout))
    workers = study_workers(args)
    if workers is not None:  # Ctrl-C: main says the finished trials are kept (KEPT)
        from bench.scale.ray_workers import tune_workers

        with ray_connected(workers, cfg):
            result = tune_workers(cfg, tune, workers, progress=not args.quiet)
    else:
        result = run_study(cfg, tune, progress=not args.quiet)
    print(
        f"study {result.study.study_name}: {result.added} trial(s) added by this run, {result.total} of "
        f"{tune.trials} in the study; "
        f"report: {result.folder / 'report.md'}"
    )
    best = best_trial(result.study)
    if best is not None:
        counts = " ".join(f"{c}/{n}" for _, c, n in best.user_attrs.get("val_counts", []))
        print(
            f"best: trial {best.number}, val_acc_mean {best.value:.4f}"
            + (f" ({counts} validation clips right per split)" if counts else "")
            + "; config "
            f"{result.folder / 'best.yaml'}\nscore it on every test fold: "
            f"python cli.py kfold --config {result.folder / 'best.yaml'}\n(the tuned splits' "
            f"validation folds chose these settings: their test scores in that run are optimistic)"
        )
    return 0


class Default(int):
    """An option's default, told apart from the same value given on the command line (a resumed
    nested run takes its saved search settings unless they are given)."""


SEARCH_SAVED = {
    "trials": "trials",
    "inner_splits": "inner_splits",
    "sampler_seed": "sampler_seed",
    "prune_startup": "prune_startup",
    "prune_warmup": "prune_warmup",
}  # arg -> search.json


def resume_search(args: argparse.Namespace, run_dir: Path) -> None:
    """A resumed nested run's search settings (and --no-non-nested) from its search.json, where not
    given as flags."""
    import json

    from bench.drivers.nested import read_search
    from bench.drivers.tune import load_space

    saved = read_search(run_dir)  # {}: not started far enough to save them (or not a nested run)
    for arg, key in SEARCH_SAVED.items():
        if isinstance(getattr(args, arg), Default) and isinstance(saved.get(key), int):
            setattr(args, arg, saved[key])
    if args.no_non_nested is None and isinstance(saved.get("non_nested"), bool):
        args.no_non_nested = not saved["non_nested"]
    if args.space is None and "space" in saved and saved["space"] != json.loads(json.dumps(load_space(None))):
        raise C.ConfigError(
            f"--resume {run_dir}: this run searched a space from a --space file; give that --space FILE again"
        )


def cmd_nested(args: argparse.Namespace) -> int:
    from bench.drivers.nested import latest_nested, render_summary, run_nested
    from bench.core.runfolder import default_name

    cfg = C.validate(build_config(args, base=resumed_config(args, latest_nested)))
    if cfg.name is None:
        cfg.name = f"nested-{default_name(cfg)}"
    if args.resume:
        resume_search(args, Path(cfg.runs_dir).expanduser() / cfg.name)
    workers = study_workers(args)
    with ray_connected(workers, cfg):  # one Ray for every study of the run
        result = run_nested(
            cfg,
            tune_config(args),
            args.inner_splits,
            resume=args.resume,
            non_nested=not args.no_non_nested,
            progress=not args.quiet,
            workers=workers,
        )
    print(render_summary(result.summary).split("\n## Chosen")[0].rstrip())
    print(
        f"\nreport: {result.run_dir / 'nested.md'} (per outer split: the settings chosen; "
        f"{result.run_dir / 'report.md'}: the nested scores)"
    )
    print_mlflow_hint(cfg, result.run_dir)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from bench.core.presets import render_presets

    print(render_presets())
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from bench.drivers.suite import Entry, render, run_suite

    entries = []
    for label in [p for p in (args.presets or "").split(",") if p]:
        if label not in PRESETS:
            raise C.ConfigError(f"--presets: unknown preset {label!r}; known: {', '.join(PRESETS)}")
        args.preset, args.config = label, None
        entries.append(Entry(label, build_config(args)))
    for path in [p for p in (args.configs or "").split(",") if p]:
        args.preset, args.config = None, path
        entries.append(Entry(Path(path).stem, build_config(args)))
    if not entries:
        raise C.ConfigError("suite: give --presets a,b,... and/or --configs x.yaml,y.yaml")
    name = args.name or f"{entries[0].cfg.dataset.name}"
    for entry in entries:
        entry.cfg.name = None
    table, folder = run_suite(entries, name, resume=args.resume, progress=not args.quiet)
    print(render(table, name, True).split("\n\nEvery entry")[0])
    print(f"\ntable: {folder / 'suite.md'} (also suite.csv, suite.json)")
    return 0


def version() -> str:
    """The installed package's version; from pyproject.toml beside this file when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("foldbench")
    except PackageNotFoundError:
        import re

        try:
            text = (Path(__file__).resolve().parent / "pyproject.toml").read_text()
        except OSError:
            return "unknown (not installed)"
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return f"{found.group(1)} (not installed)" if found else "unknown (not installed)"


class VersionAction(argparse.Action):
    """--version: looked up only when asked for."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="print foldbench's version and exit",
        )

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"foldbench {version()}")
        parser.exit()


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose one-line errors (an unknown flag echoed with its value) never show a
    password (bench.core.redact); subcommands' parsers are of this class too."""

    def error(self, message: str):
        from bench.core.redact import redact

        super().error(redact(message))


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="foldbench" if Path(sys.argv[0]).name == "foldbench" else "cli.py",
        description="foldbench: honest cross-validation for audio classification.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kfold = sub.add_parser(
        "kfold",
        help="cross-validate: one model per split, report over all folds",
        description="Train and test one model per split (test fold k, validation fold k+1, training "
        "on the rest), save per-clip predictions, and build the report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_options(kfold)
    kfold.add_argument_group("repeated cross-validation").add_argument(
        "--repeats",
        type=int,
        dest="protocol_repeats",
        metavar="R",
        help="R fold plans in one run (default: 1): stratified/random reshuffle the folds, repeat r "
        "with protocol seed + r - 1; predefined folds and fixed lists keep their folds and vary "
        "the training seed only. Split (r-1)*n + k is repeat r, fold k",
    )
    engine_options(kfold)
    kfold.set_defaults(func=cmd_kfold)
    add_datasets_command(sub)
    add_predict_command(sub)
    compare = sub.add_parser(
        "compare",
        help="two or more runs in one table, best first, each tested against the best",
        description="Accuracy mean ± std and 95 % interval per run, best first; each run against the "
        "best: the Nadeau-Bengio corrected t-test and the Bayesian correlated t-test "
        "(P(better/equivalent/worse) within --rope) over the splits both finished when the "
        "runs share their data and folds, McNemar's exact test per clip when they tested "
        "the same clips. Written to --out as compare.csv/.md/.json/.png and logged to "
        "MLflow (tag kind=comparison). Built from the run folders' saved predictions.",
        epilog="  python cli.py compare runs/demo-seed runs/demo-strong runs/demo-vit\n"
        "  python cli.py compare runs/demo-random runs/demo-honest --out demo-leak --no-mlflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders, e.g. runs/us8k-a runs/us8k-b")
    compare.add_argument(
        "--rope",
        type=float,
        default=0.01,
        help="region of practical equivalence, in accuracy (default: 0.01, one point)",
    )
    compare.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the outputs, inside --runs-dir; a bare name goes there (default: runs/compare-<timestamp>)",
    )
    compare.add_argument("--runs-dir", help="where the comparison folder goes (default: runs)")
    compare.add_argument("--json", action="store_true", help="print the result as JSON")
    compare.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    compare.add_argument("--experiment", help="MLflow experiment (default: the best run's dataset name)")
    compare.add_argument("--no-mlflow", action="store_true", help="write the comparison folder only")
    compare.set_defaults(func=cmd_compare)
    report = sub.add_parser(
        "report",
        help="rebuild a run's report (report.md/.html, scores.json, plots) from its folder",
        description="Rebuild report.md, report.html, scores.json, the tables and the plots of a run "
        "folder from its saved, verified predictions (a split whose files do not match "
        "its DONE digest is named, and nothing is written). Trains nothing.",
        epilog="  python cli.py report runs/us8k-20260131-140509",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("run", metavar="RUN", help="a run folder, e.g. runs/<name>")
    report.set_defaults(func=cmd_report)
    speed = sub.add_parser(
        "speed",
        help="measure every stage's throughput on this machine, beside the targets",
        description="Cache build, feature bank, training, evaluation and model-only throughput, "
        "peak memory, and the per-item tutorial pipeline for comparison.",
        epilog="  python cli.py speed --dataset demo --preset seed\n"
        "  python cli.py speed --replica /tmp/us8k-replica --json speed.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_options(speed)
    g = speed.add_argument_group("speed")
    g.add_argument(
        "--replica",
        metavar="DIR",
        help="measure on a full-size UrbanSound8K replica in DIR (generated there if missing)",
    )
    g.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    g.add_argument(
        "--time-box", type=float, default=10.0, metavar="S", help="seconds per throughput measurement (default: 10)"
    )
    g.add_argument("--repeats", type=int, default=2, help="rounds; the best is kept (default: 2)")
    speed.set_defaults(func=cmd_speed)
    suite = sub.add_parser(
        "suite",
        help="several presets or configs over the same folds, one table",
        description="Cross-validate each preset (or config file) on the same dataset and fold plan, "
        "each an ordinary kfold run in <runs-dir>/suite-<name>/<entry>/ with its own MLflow "
        "parent run (tag suite=<name>), then one table: accuracy mean ± std and 95 % "
        "interval, macro F1, training time, clips/s (suite.md, suite.csv, suite.json).",
        epilog="  python cli.py suite --dataset demo --presets seed,seed-librosa-cnn,seed-gtzan-vit,"
        "seed-gtzan-cnn,strong\n  python cli.py suite --dataset demo --presets seed,strong "
        "--epochs 10 --name quick\n\nOptions such as --epochs, --set and --dataset apply to "
        "every entry, over its preset.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_options(suite)
    g = suite.add_argument_group("suite")
    g.add_argument("--presets", help="comma-separated presets (see `cli.py presets`)")
    g.add_argument("--configs", help="comma-separated YAML configs, each an entry named after its file")
    suite.set_defaults(func=cmd_suite)
    presets = sub.add_parser("presets", help="the presets (tutorial systems, strong baseline) and their sources")
    presets.set_defaults(func=cmd_presets)
    tune = sub.add_parser(
        "tune",
        help="search the Mel front end and SpecAugment masking with Optuna",
        description="An Optuna study (TPE, MedianPruner) whose objective is the mean validation "
        "accuracy over the chosen splits (default 1,2,3), through the same "
        "cross-validation as kfold; test folds are never scored. Writes "
        "<runs-dir>/tune-<study>/: best.yaml (for kfold --config), trials.csv, plots, "
        "report.md.",
        epilog=TUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_options(tune, splits="1,2,3", run_folder=False)
    tune_options(tune)
    worker_options(tune)
    tune.set_defaults(func=cmd_tune)
    nested = sub.add_parser(
        "nested",
        help="nested CV: tune inside each outer split, score the chosen settings on its "
        "test fold; the non-nested estimate beside it",
        description="For each outer split k: an Optuna study (as tune's) over inner splits built "
        "from the folds other than k only, then its best settings trained on split k's "
        "training folds (epoch chosen on its validation fold) and scored once on fold k. "
        "Beside it, with the same budget, the usual shortcut: tune on the first "
        "--inner-splits splits, then kfold of best.yaml; the difference is the selection "
        "bias. Writes <runs-dir>/<name>/: nested.md, nested.json, report.md, inner/<k>/ "
        "(the studies), non-nested/.",
        epilog="  python cli.py nested --dataset demo --trials 4 --inner-splits 2 --epochs 8\n"
        "  python cli.py nested --dataset us8k --root ~/data/UrbanSound8K --trials 20\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_options(nested)
    g = nested.add_argument_group("search")
    g.add_argument(
        "--trials",
        type=int,
        default=8,
        help="trials of each outer split's study, and of the non-nested study (default: 8)",
    )
    g.add_argument(
        "--inner-splits",
        type=int,
        default=2,
        metavar="N",
        help="inner splits each trial trains (default: 2); the non-nested study tunes on "
        "the full plan's first N splits",
    )
    g.add_argument(
        "--no-non-nested",
        action="store_true",
        default=None,  # None: not given (--resume: saved)
        help="skip the non-nested estimate (a study and a kfold run: about 1/folds of the cost)",
    )
    search_options(g)
    for action in nested._actions:  # told apart from flags given: --resume takes the saved ones
        if action.dest in SEARCH_SAVED and type(action.default) is int:
            action.default = Default(action.default)
    worker_options(nested)
    nested.set_defaults(func=cmd_nested)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (`kill`, a scheduler's stop) ends a job as Ctrl-C does


# Exit statuses (docs/faults.md): 0 done; 1 `datasets check` found problems, or a bug (its traceback);
# 2 a user mistake, refused in one line; 3 the disk (or quota) is full; 130 interrupted (Ctrl-C, SIGTERM).
EXIT_DISK_FULL, EXIT_INTERRUPTED = 3, 130  # a user mistake: its FoldbenchError.exit_status, 2
KEPT = {  # per command: what a stopped run leaves behind, and how to go on
    "kfold": "finished splits are kept; continue with --resume",
    "nested": "finished outer splits and trials are kept; continue with --resume",
    "suite": "finished entries and splits are kept; continue with --resume",
    "tune": "finished trials are kept; run the same command to continue the study",
}
NOTHING_KEPT = "no file is half-written; run the command again"


def after_fault(args: argparse.Namespace | None) -> str:
    """What a stopped command leaves and how to go on, for its one line."""
    return KEPT.get(getattr(args, "command", None), NOTHING_KEPT)


def disk_full_line(e: OSError, args: argparse.Namespace | None) -> str:
    """`error: No space left on device (writing in <folder>): finished splits are kept; ...`."""
    where = f" (writing in {Path(e.filename).resolve()})" if e.filename else ""
    return f"error: {e.strerror or 'No space left on device'}{where}: {after_fault(args)} once space is free"


def run_command(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The command, with its command line recorded (run.json) and SIGTERM taken as Ctrl-C; a user
    mistake is one line (exit 2)."""
    import signal

    from bench.core.errors import FoldbenchError
    from bench.core.provenance import set_command
    from bench.core.redact import redact

    set_command(sys.argv if argv is None else ["cli.py", *argv])  # what run.json records
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except FoldbenchError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return e.exit_status
    finally:
        set_command(None)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every fault ends in one line on stderr and a documented exit status, with
    credentials redacted (bench.core.redact) in it and in every library's log lines."""
    import signal

    from bench.core.redact import redact, redacting_logs

    args, on_sigint = None, signal.getsignal(signal.SIGINT)
    try:
        args = make_parser().parse_args(argv)
        with redacting_logs():
            return run_command(args, argv)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line short
        print(f"\ninterrupted: {after_fault(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `cli.py datasets list | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        from bench.core.atomic import DISK_FULL

        if e.errno not in DISK_FULL:
            return bug(e)
        print(redact(disk_full_line(e, args)), file=sys.stderr)
        return EXIT_DISK_FULL
    except Exception as e:
        return bug(e)
    finally:
        signal.signal(signal.SIGINT, on_sigint)


def bug(e: Exception) -> int:
    """Not a fault foldbench knows: its traceback (credentials redacted), exit 1."""
    import traceback

    from bench.core.redact import redact

    print(redact("".join(traceback.format_exception(e))).rstrip(), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
