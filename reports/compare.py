"""Compare any number of runs: one table, best first, and every run tested against the best.

    result = compare_runs("runs/us8k-a", "runs/us8k-b", "runs/us8k-c", rope=0.01)
    print(render_comparison(result))
    save_comparison(result, "runs/compare-x", tracker)  # compare.csv/.md/.json/.png, an MLflow run

How runs are paired and tested is `reports.pairing`'s (`compare_runs`, re-exported here); this
module says the result: the Markdown table and its notes, compare.csv, compare.json, the plot and
the MLflow run.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from reports.aggregate import interval_text
from reports.pairing import CompareError, Run, compare_runs, load_run

__all__ = [
    "CompareError",
    "Run",
    "compare_runs",
    "load_run",
    "notes",
    "output_folder",
    "render_comparison",
    "save_comparison",
    "table",
    "to_json",
]


def _f(x, fmt=".3f", none="—") -> str:
    return none if x is None else format(x, fmt)


def _p(x) -> str:
    return "—" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def notes(result: dict) -> list[str]:
    best = result["runs"][0]
    out = [
        f"Δ vs best: the run's accuracy minus {best['run']}'s (or, where noted, the best run on its folds), "
        "mean over the paired splits "
        "(the difference of means where not paired). t-test: Nadeau-Bengio corrected resampled "
        f"t-test, two-sided. P(better/equiv./worse): Bayesian correlated t-test, rope ±{result['rope']:g}: "
        "the posterior probability that the run beats the best by more than the rope, lies within "
        "it, or trails by more. McNemar: exact, per clip, pooled over the compared splits."
    ]
    for row in result["runs"][1:]:
        v, name, ref = row["vs_best"], row["run"], row.get("vs", best["run"])
        if not v["paired"]:
            out.append(
                f"{name}: not paired with {ref}: {v['reason']}; compared by means only"
                + (" and per clip (McNemar)." if v["mcnemar"] else ".")
            )
        elif ref != best["run"]:
            out.append(
                f"{name}: tested against {ref}, the best run on the same folds ({best['run']} "
                f"is on other folds or data)."
            )
        for n in v["notes"]:
            out.append(f"{name}: {n}.")
        if v["mcnemar"] is None and v["mcnemar_reason"]:
            out.append(f"{name}: no McNemar test: {v['mcnemar_reason']}.")
        if (
            row["leaky"] != best["leaky"] and row["dataset"] == best["dataset"] and row["settings"] == best["settings"]
        ):  # the protocol is the only difference
            leaky, honest = (row, best) if row["leaky"] else (best, row)
            gap = leaky["acc_mean"] - honest["acc_mean"]
            out.append(
                f"The leaky protocol ({leaky['run']}) scores {gap:+.3f} against the honest one "
                f"({honest['run']}) on the same data"
                + (": what leakage is worth here." if gap > 0 else "; no leakage shows here.")
            )
    ratios = sorted(
        {
            round(r["vs_best"]["ratio_test_train"], 4)
            for r in result["runs"][1:]
            if r["vs_best"]["ratio_test_train"] is not None
        }
    )
    if ratios:
        out.append(f"n_test/n_train in the correction (split.json): {', '.join(map(str, ratios))}.")
    for row in result["runs"]:
        if row["missing_splits"]:
            out.append(
                f"{row['run']} is incomplete: split(s) {', '.join(map(str, row['missing_splits']))} "
                f"not finished; its mean covers {row['n_splits']} split(s)."
            )
    out += [f"Not read: {s['reason']}." for s in result["skipped"]]
    return out


def render_comparison(result: dict) -> str:
    """The table and its notes, Markdown (also what the terminal shows)."""
    lines = [
        f"# compare: {len(result['runs'])} runs, best first",
        "",
        "| # | run | protocol | accuracy (mean ± std) | 95 % CI | splits | Δ vs best | t-test p | "
        "P(better) | P(equiv.) | P(worse) | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        v = row["vs_best"] or {}
        t, b, m = v.get("ttest") or {}, v.get("bayes") or {}, v.get("mcnemar") or {}
        splits = f"{row['n_splits']}" + (f" ({row['repeats']} repeats)" if row["repeats"] > 1 else "")
        diff = (
            "best"
            if not v
            else f"{v['diff']:+.3f}"
            + ("" if v["paired"] else " (means)")
            + (f" vs {row['vs']}" if row["vs"] != result["best"] else "")
        )
        lines.append(
            f"| {row['rank']} | {row['run']}{' LEAKY' if row['leaky'] else ''} | `{row['protocol']}` | "
            f"{row['acc_mean']:.3f} ± {row['acc_std']:.3f} | "
            f"{interval_text(row['acc_ci95_low'], row['acc_ci95_high'])} | {splits} | {diff} | {_p(t.get('p'))} | "
            f"{_f(b.get('p_better'))} | {_f(b.get('p_equiv'))} | {_f(b.get('p_worse'))} | "
            f"{_p(m.get('p'))} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes(result)]) + "\n"


def table(result: dict) -> pd.DataFrame:
    """compare.csv: one row per run, best first."""
    rows = []
    for row in result["runs"]:
        v = row["vs_best"] or {}
        t, b, m = v.get("ttest") or {}, v.get("bayes") or {}, v.get("mcnemar") or {}
        rows.append(
            {
                k: row[k]
                for k in (
                    "rank",
                    "run",
                    "dir",
                    "protocol",
                    "leaky",
                    "acc_mean",
                    "acc_std",
                    "acc_ci95_low",
                    "acc_ci95_high",
                    "n_splits",
                    "repeats",
                )
            }
            | {
                "paired": v.get("paired"),
                "paired_splits": " ".join(map(str, v.get("splits", []))),
                "diff_vs_best": v.get("diff"),
                "ratio_test_train": v.get("ratio_test_train"),
                "ttest_t": t.get("t"),
                "ttest_p": t.get("p"),
                "p_better": b.get("p_better"),
                "p_equiv": b.get("p_equiv"),
                "p_worse": b.get("p_worse"),
                "mcnemar_p": m.get("p"),
                "not_paired_reason": v.get("reason"),
            }
        )
    return pd.DataFrame(rows)


def output_folder(out: str | None, runs_dir: str | Path = "runs") -> Path:
    """Where the comparison goes: `out` (a bare name means runs_dir/name), inside runs_dir, new or empty."""
    runs = Path(runs_dir).expanduser()
    folder = runs / time.strftime("compare-%Y%m%d-%H%M%S") if out is None else Path(out).expanduser()
    if out is not None and len(folder.parts) == 1:
        folder = runs / folder
    if runs.resolve() not in folder.resolve().parents:
        raise CompareError(
            f"--out {folder}: the comparison folder must lie inside {runs}/, e.g. {runs / 'compare-a-b'}"
        )
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CompareError(f"--out {folder} already exists and is not an empty folder; pick another --out")
    return folder


def _metric_key(label: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", label)


def save_comparison(result: dict, folder, tracker=None) -> list[Path]:
    """compare.csv, compare.md, compare.json and compare.png into `folder`, then (when `tracker` is
    on) an MLflow run tagged kind=comparison with the runs' mean accuracies and those files."""
    from bench.core.atomic import staged
    from reports.files import atomic_write_csv, atomic_write_json, atomic_write_text
    from reports.plots import plot_comparison

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"compare.{ext}" for ext in ("csv", "md", "json", "png")]
    try:  # all four files or none (a full disk, Ctrl-C): the same --out is accepted again
        with staged(folder) as stage:
            atomic_write_csv(stage / paths[0].name, table(result))
            atomic_write_text(stage / paths[1].name, render_comparison(result))
            atomic_write_json(stage / paths[2].name, to_json(result))
            plot_comparison(result, stage / paths[3].name)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # empty again: nothing was published
        raise
    if tracker is not None and tracker.enabled:
        tags = {
            "kind": "comparison",
            "best": result["best"],
            "comparison_folder": str(folder.resolve()),
            "compared_runs": ", ".join(r["run"] for r in result["runs"]),
        }
        for r in result["runs"]:
            tags[f"run.{_metric_key(r['run'])}.folder"] = str(Path(r["dir"]).resolve())
            if r["mlflow_parent"]:
                tags[f"run.{_metric_key(r['run'])}.parent_run"] = r["mlflow_parent"]
        with tracker.run(folder.name, params={"rope": result["rope"]}, tags=tags) as run_id:
            tracker.log_metrics(run_id, {f"acc_mean.{_metric_key(r['run'])}": r["acc_mean"] for r in result["runs"]})
            tracker.log_files(run_id, paths)
    return paths


def to_json(x):
    """JSON-safe: NaN and ±inf become None (a t of ±inf: every split differs by the same amount)."""
    if isinstance(x, dict):
        return {k: to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x.item() if isinstance(x, np.generic) else x
