"""foldbench command line: it parses, nothing else. Each command's options come from one table
(bench/core/flags.py: the flag, its help, the config field it sets) and its logic lives in
bench/commands/ (training: kfold, tune, nested, suite, speed; tools: report, compare, predict,
datasets, presets; faults: one line and an exit status per fault).

  python cli.py kfold --dataset demo
  python cli.py kfold --dataset us8k --root ~/data/UrbanSound8K --epochs 30
  python cli.py kfold --dataset folder --root ~/data/my_sounds --group-regex '^(?P<group>[a-z]+)_'
  python cli.py datasets check --dataset gtzan --root ~/data/gtzan
  python cli.py compare runs/us8k-random runs/us8k-honest runs/us8k-tuned
  python cli.py tune --dataset demo --trials 8

Installed, the same commands run as `foldbench kfold ...`. Heavy modules (torch, scikit-learn,
pandas, MLflow) are imported inside the commands, after the mistakes that need no data are
refused, and never to build the parser: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.commands import faults, tools, training
from bench.core import flags
from bench.core.flags import add

EPILOG = """Config precedence: defaults < --preset < --config FILE < --set KEY=VALUE < the flags above.
Results go to runs/<name>/ (report.md, scores.json, confusion matrices, learning curves) and to
MLflow (default store sqlite:///mlflow.db; open with `mlflow ui --backend-store-uri sqlite:///mlflow.db`)."""
TUNE_EPILOG = """Config precedence: defaults < --preset < --config FILE < --set KEY=VALUE < the flags above.
Results go to <runs-dir>/tune-<study>/ (runs/tune-<dataset>/ by default): best.yaml, trials.csv,
report.md, plots, trials/<n>/ (each trial's run folder), study.db. Running the same command again
continues the study. Each finished trial prints one line; --quiet drops the trials bar only. Ties in
val_acc_mean (equal fractions of clips) go to the earlier trial. MLflow as for kfold (default store
sqlite:///mlflow.db; open with `mlflow ui --backend-store-uri sqlite:///mlflow.db`).

  python cli.py tune --dataset demo --trials 8
  python cli.py tune --dataset us8k --root ~/data/UrbanSound8K --trials 50 --study us8k-mel --timeout 3h"""
RAW = argparse.RawDescriptionHelpFormatter


def command(sub, name: str, func, help: str, description: str | None = None, epilog: str | None = None, raw=True):
    kw = {"formatter_class": RAW} if raw else {}
    parser = sub.add_parser(name, help=help, description=description, epilog=epilog, **kw)
    parser.set_defaults(func=func)
    return parser


def add_kfold(sub) -> None:
    kfold = command(
        sub,
        "kfold",
        training.kfold,
        "cross-validate: one model per split, report over all folds",
        "Train and test one model per split (test fold k, validation fold k+1, training "
        "on the rest), save per-clip predictions, and build the report.",
        EPILOG,
    )
    flags.config_options(kfold)
    add(kfold.add_argument_group("repeated cross-validation"), "--repeats")
    flags.engine_options(kfold)


def add_predict(sub) -> None:
    predict = command(
        sub,
        "predict",
        tools.predict,
        "classify audio files with a run's saved split models (their ensemble by default)",
        "Decode each file exactly as the run's training did (its audio settings and the "
        "cache's int16 round trip; like a training clip, only its first audio.duration seconds, a "
        "longer file is noted), compute its front end, normalise with the split's "
        "training statistics, run the model and take the softmax. Default: the ensemble "
        "of every finished split model (the mean of their probabilities); --split K: that "
        "split's model alone. Models are checked against their split's DONE digest first. "
        "A directory stands for its audio files (.wav .flac .ogg .au .aiff .aif, any "
        "depth, sorted). A file that cannot be decoded is an error naming it and the "
        "reason (every such file is listed), and nothing is predicted. The lines fit the "
        "terminal (paths shortened; each class's probability when they fit, else --out has them).",
        "  python cli.py predict --run runs/demo-honest clip.wav other.flac\n"
        "  python cli.py predict --run runs/demo-honest my_sounds/ --out preds.csv\n"
        "  python cli.py predict --run runs/demo-honest clip.wav --split 3",
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


def add_datasets(sub) -> None:
    datasets = sub.add_parser("datasets", help="check a dataset, list the dataset kinds and protocols")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="SUBCOMMAND")
    check = command(
        dsub,
        "check",
        tools.datasets_check,
        "decode every file and check the fold plan; exit 1 when a kfold run would be wrong",
        "Clips per class and fold; files that cannot be decoded, are empty, silent, "
        "non-finite, very short or very long; sample rates, channels and formats; identical "
        "audio and the folds its copies sit in; groups that cross folds. Exit status 1 when "
        "something would make a kfold run wrong (leakage, conflicting labels, no plan).",
        raw=False,
    )
    add(check.add_argument_group("what to check"), *flags.DATA)
    add(check, "--strict", help="count files kfold would quarantine as errors")
    add(check, "--set", help="override a config field, e.g. --set protocol.seed=3")
    add(check, "--config", help="YAML config (e.g. runs/<name>/config.yaml)")
    add(check, "--cache-dir", help="where demo data is generated")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    add(check, "--quiet", help="no progress bar")
    command(
        dsub, "list", tools.datasets_list, "the dataset kinds (with the layout each expects) and protocols", raw=False
    )


def add_compare(sub) -> None:
    compare = command(
        sub,
        "compare",
        tools.compare,
        "two or more runs in one table, best first, each tested against the best",
        "Accuracy mean ± std and 95 % interval per run, best first; each run against the "
        "best: the Nadeau-Bengio corrected t-test and the Bayesian correlated t-test "
        "(P(better/equivalent/worse) within --rope) over the splits both finished when the "
        "runs share their data and folds, McNemar's exact test per clip when they tested "
        "the same clips. Written to --out as compare.csv/.md/.json/.png and logged to "
        "MLflow (tag kind=comparison). Built from the run folders' saved predictions.",
        "  python cli.py compare runs/demo-seed runs/demo-strong runs/demo-vit\n"
        "  python cli.py compare runs/demo-random runs/demo-honest --out demo-leak --no-mlflow",
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
    add(compare, "--runs-dir", help="where the comparison folder goes (default: runs)")
    compare.add_argument("--json", action="store_true", help="print the result as JSON")
    add(compare, "--tracking-uri")
    add(compare, "--experiment", help="MLflow experiment (default: the best run's dataset name)")
    add(compare, "--no-mlflow", help="write the comparison folder only")


def add_report(sub) -> None:
    report = command(
        sub,
        "report",
        tools.report,
        "rebuild a run's report (report.md/.html, scores.json, plots) from its folder",
        "Rebuild report.md, report.html, scores.json, the tables and the plots of a run "
        "folder from its saved, verified predictions (a split whose files do not match "
        "its DONE digest is named, and nothing is written). Trains nothing.",
        "  python cli.py report runs/us8k-20260131-140509",
    )
    report.add_argument("run", metavar="RUN", help="a run folder, e.g. runs/<name>")


def add_speed(sub) -> None:
    speed = command(
        sub,
        "speed",
        training.speed,
        "measure every stage's throughput on this machine, beside the targets",
        "Cache build, feature bank, training, evaluation and model-only throughput, "
        "peak memory, and the per-item tutorial pipeline for comparison.",
        "  python cli.py speed --dataset demo --preset seed\n"
        "  python cli.py speed --replica /tmp/us8k-replica --json speed.json",
    )
    flags.config_options(speed)
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


def add_suite(sub) -> None:
    suite = command(
        sub,
        "suite",
        training.suite,
        "several presets or configs over the same folds, one table",
        "Cross-validate each preset (or config file) on the same dataset and fold plan, "
        "each an ordinary kfold run in <runs-dir>/suite-<name>/<entry>/ with its own MLflow "
        "parent run (tag suite=<name>), then one table: accuracy mean ± std and 95 % "
        "interval, macro F1, training time, clips/s (suite.md, suite.csv, suite.json).",
        "  python cli.py suite --dataset demo --presets seed,seed-librosa-cnn,seed-gtzan-vit,"
        "seed-gtzan-cnn,strong\n  python cli.py suite --dataset demo --presets seed,strong "
        "--epochs 10 --name quick\n\nOptions such as --epochs, --set and --dataset apply to "
        "every entry, over its preset.",
    )
    flags.config_options(suite)
    g = suite.add_argument_group("suite")
    g.add_argument("--presets", help="comma-separated presets (see `cli.py presets`)")
    g.add_argument("--configs", help="comma-separated YAML configs, each an entry named after its file")


def add_tune(sub) -> None:
    tune = command(
        sub,
        "tune",
        training.tune,
        "search the Mel front end and SpecAugment masking with Optuna",
        "An Optuna study (TPE, MedianPruner) whose objective is the mean validation "
        "accuracy over the chosen splits (default 1,2,3), through the same "
        "cross-validation as kfold; test folds are never scored. Writes "
        "<runs-dir>/tune-<study>/: best.yaml (for kfold --config), trials.csv, plots, "
        "report.md.",
        TUNE_EPILOG,
    )
    flags.config_options(tune, splits="1,2,3", run_folder=False)
    flags.tune_options(tune)
    flags.worker_options(tune)


def add_nested(sub) -> None:
    nested = command(
        sub,
        "nested",
        training.nested,
        "nested CV: tune inside each outer split, score the chosen settings on its "
        "test fold; the non-nested estimate beside it",
        "For each outer split k: an Optuna study (as tune's) over inner splits built "
        "from the folds other than k only, then its best settings trained on split k's "
        "training folds (epoch chosen on its validation fold) and scored once on fold k. "
        "Beside it, with the same budget, the usual shortcut: tune on the first "
        "--inner-splits splits, then kfold of best.yaml; the difference is the selection "
        "bias. Writes <runs-dir>/<name>/: nested.md, nested.json, report.md, inner/<k>/ "
        "(the studies), non-nested/.",
        "  python cli.py nested --dataset demo --trials 4 --inner-splits 2 --epochs 8\n"
        "  python cli.py nested --dataset us8k --root ~/data/UrbanSound8K --trials 20\n\n" + EPILOG,
    )
    flags.config_options(nested)
    flags.nested_options(nested)
    flags.worker_options(nested)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose one-line errors (an unknown flag echoed with its value) never show a
    password (bench.core.redact); subcommands' parsers are of this class too."""

    def error(self, message: str):
        from bench.core.redact import redact

        super().error(redact(message))


def make_parser() -> argparse.ArgumentParser:
    """Every command's parser, in the order `--help` lists them."""
    parser = Parser(
        prog="foldbench" if Path(sys.argv[0]).name == "foldbench" else "cli.py",
        description="foldbench: honest cross-validation for audio classification.",
        formatter_class=RAW,
    )
    parser.add_argument("--version", action=flags.VersionAction, help="print foldbench's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_kfold(sub)
    add_datasets(sub)
    add_predict(sub)
    add_compare(sub)
    add_report(sub)
    add_speed(sub)
    add_suite(sub)
    command(
        sub, "presets", tools.presets, "the presets (tutorial systems, strong baseline) and their sources", raw=False
    )
    add_tune(sub)
    add_nested(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every fault ends in one line on stderr and a documented exit status."""
    return faults.guarded(make_parser().parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
