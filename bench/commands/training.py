"""The training commands: kfold, tune, nested, suite, speed. Each checks its config before the
drivers (and torch) are imported, runs its driver, and prints its summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.commands.configs import build_config, checked, latest_kfold, latest_nested, resumed_config, suite_entries
from bench.commands.engines import engine, ray_connected, study_workers
from bench.core.config import ConfigError
from bench.core.flags import SAVED, Default


def kfold(args: argparse.Namespace) -> int:
    cfg = checked(build_config(args, base=resumed_config(args, latest_kfold)), args)
    runner = engine(args)
    from bench.core.runfolder import default_name
    from bench.drivers.kfold import run_cv
    from reports import summary_table

    if cfg.name is None:
        cfg.name = default_name(cfg)
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


def print_mlflow_hint(cfg, run_dir) -> None:
    from bench.tracking.layout import ui_hint

    hint = ui_hint(cfg.tracking, run_dir)
    if hint:
        print(f"MLflow: {hint}")


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


def tune(args: argparse.Namespace) -> int:
    if args.name or args.resume:  # not in tune's help; refused with the flag to use instead
        raise ConfigError(
            "tune names its own folders (<runs-dir>/tune-<study>/trials/<n>) and always "
            "continues its study: use --study instead of --name/--resume"
        )
    cfg = checked(build_config(args), args)
    from bench.drivers.study import best_trial
    from bench.drivers.tune import parse_duration, run_study

    tune = tune_config(args, study=args.study, storage=args.storage, timeout=parse_duration(args.timeout))
    workers = study_workers(args)
    if workers is not None:  # Ctrl-C: the one line says the finished trials are kept (faults.KEPT)
        from bench.scale.ray_workers import tune_workers

        with ray_connected(workers, cfg):
            result = tune_workers(cfg, tune, workers, progress=not args.quiet)
    else:
        result = run_study(cfg, tune, progress=not args.quiet)
    print(
        f"study {result.study.study_name}: {result.added} trial(s) added by this run, {result.total} of "
        f"{tune.trials} in the study; report: {result.folder / 'report.md'}"
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


def resume_search(args: argparse.Namespace, run_dir: Path) -> None:
    """A resumed nested run's search settings (and --no-non-nested) from its search.json, where not
    given as flags (an option's default is a `Default`, told apart from the same value given)."""
    from bench.drivers.nested import read_search
    from bench.drivers.tune import load_space

    saved = read_search(run_dir)  # {}: not started far enough to save them (or not a nested run)
    for key in SAVED:  # the option's dest is its key in search.json
        if isinstance(getattr(args, key), Default) and isinstance(saved.get(key), int):
            setattr(args, key, saved[key])
    if args.no_non_nested is None and isinstance(saved.get("non_nested"), bool):
        args.no_non_nested = not saved["non_nested"]
    if args.space is None and "space" in saved and saved["space"] != json.loads(json.dumps(load_space(None))):
        raise ConfigError(
            f"--resume {run_dir}: this run searched a space from a --space file; give that --space FILE again"
        )


def lead(markdown: str) -> str:
    """What a terminal shows of a Markdown document: its lines before the first `## ` section."""
    lines = markdown.splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return "\n".join(lines[:end]).rstrip()


def nested(args: argparse.Namespace) -> int:
    cfg = checked(build_config(args, base=resumed_config(args, latest_nested)), args)
    from bench.core.runfolder import default_name
    from bench.drivers.nested import render_summary, run_nested

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
    print(lead(render_summary(result.summary)))  # the estimates; nested.md has the choices too
    print(
        f"\nreport: {result.run_dir / 'nested.md'} (per outer split: the settings chosen; "
        f"{result.run_dir / 'report.md'}: the nested scores)"
    )
    print_mlflow_hint(cfg, result.run_dir)
    return 0


def suite(args: argparse.Namespace) -> int:
    entries = suite_entries(args)
    from bench.drivers.suite import Entry, render, run_suite

    name = args.name or entries[0][1].dataset.name
    table, folder = run_suite([Entry(*e) for e in entries], name, resume=args.resume, progress=not args.quiet)
    blocks = render(table, name, True).split("\n\n")
    print("\n\n".join(blocks[:2]))  # the title and the table; suite.md has the note on the folds too
    print(f"\ntable: {folder / 'suite.md'} (also suite.csv, suite.json)")
    return 0


def speed(args: argparse.Namespace) -> int:
    cfg = checked(build_config(args), args, root=not args.replica)  # --replica: the replica is the root
    from bench.drivers.speed import render, run_speed, use_replica
    from reports.files import atomic_write_json

    if args.replica:
        cfg = use_replica(cfg, args.replica)
    result = run_speed(
        cfg, time_box=args.time_box, repeats=args.repeats, threads=cfg.train.threads or None, progress=not args.quiet
    )
    print(render(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0
