"""The commands that train nothing: report, compare, predict, datasets check and list, presets."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench.commands.configs import build_config, checked
from bench.core.config import ConfigError


def report(args: argparse.Namespace) -> int:
    from reports import summary_table
    from reports.render import rebuild

    scores = rebuild(args.run)
    print(summary_table(scores))
    print(f"\nreport: {args.run.rstrip('/')}/report.md (also report.html, scores.json, plots)")
    return 0


def compare(args: argparse.Namespace) -> int:
    from bench.tracking.tracker import Tracker
    from reports.compare import compare_runs, output_folder, render_comparison, save_comparison, to_json

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


def predict(args: argparse.Namespace) -> int:
    """One line per file, fitted to the terminal's width (every class's probability: --out)."""
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir() or out.suffix.lower() != ".csv"):
        raise ConfigError(f"--out {args.out}: give a .csv file in an existing folder")
    if args.threads is not None and args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: give a number of threads, at least 1")
    from bench.core import threads
    from bench.train.predict import predict_files, render

    if args.threads:
        threads.apply(args.threads)
    result = predict_files(args.run, args.files, split=args.split, device=args.device)
    print(render(result, width=shutil.get_terminal_size().columns))
    if out is not None:
        from bench.core.atomic import atomic_write_csv

        atomic_write_csv(out, result.table)
        print(f"\nwritten: {out} ({len(result.table)} rows)")
    return 0


def datasets_check(args: argparse.Namespace) -> int:
    cfg = checked(build_config(args), args)
    from bench.drivers.check import check_dataset, render_text

    result = check_dataset(cfg, progress=not (args.quiet or args.json))
    print(json.dumps(result.to_json(), indent=1) if args.json else render_text(result, cfg.audio.duration))
    return 0 if result.ok else 1


def datasets_list(args: argparse.Namespace) -> int:
    from bench.drivers.check import render_list

    print(render_list())
    return 0


def presets(args: argparse.Namespace) -> int:
    from bench.core.presets import render_presets

    print(render_presets())
    return 0
