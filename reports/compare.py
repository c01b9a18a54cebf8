"""Compare any number of runs: one table, best first, and every run tested against the best.

    result = compare_runs("runs/us8k-a", "runs/us8k-b", "runs/us8k-c", rope=0.01)
    print(render_comparison(result))
    save_comparison(result, "runs/compare-x", tracker)  # compare.csv/.md/.json/.png, an MLflow run

Built from the run folders' verified predictions only. The best run has the highest mean accuracy
over its finished splits. Each other run is set against it with the tests of `reports.stats`:

- paired over splits (Nadeau-Bengio corrected t-test, Bayesian correlated t-test with a rope) only
  when both runs are on the same data (the same `dataset_fingerprint` in plan.json where both have
  one, else the same dataset name) and the same fold assignment (folds.csv's clip column and every
  fold/repeat column identical), on the split numbers both finished whose test fold (and repeat)
  agree. Otherwise the reason is given and the runs are compared by their means only;
- McNemar's exact test per clip whenever both runs tested the same clips with the same labels
  (pooled over the paired splits, or over all finished splits of runs on other folds of the same
  data, such as a leaky protocol beside an honest one): it sees test-set noise only, not training.

The correction's n_test / n_train is read from each paired split's split.json (`n_train`,
`n_test`), averaged over the splits when they vary, and the larger of the two runs' values is used
(the more cautious: a run without a validation fold trains on more clips). n_train is the clips the
model was fitted on, as split.json writes it, without the validation fold: the correction models
how much two splits' training sets overlap, and validation clips only chose the epoch. With
repeated CV every split (all repeats) is one difference, with the same correction (Bouckaert &
Frank 2004; Corani & Benavoli 2015).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.runfolder import read_json, saved_result_view
from reports.aggregate import class_names, fold_scores, interval_text, load_predictions, summary
from reports.files import dataset_name, missing_splits, read_plan, read_split_json, run_name
from reports.stats import bayes_correlated_ttest, corrected_ttest, mcnemar_exact
from bench.core.errors import FoldbenchError


class CompareError(FoldbenchError, ValueError):
    """Runs that cannot be compared at all (fewer than two readable, a missing folder, bad options)."""


@dataclass
class Run:
    dir: Path
    label: str
    pred: pd.DataFrame  # the finished splits' predictions
    scores: pd.DataFrame  # one row per finished split: split, test_fold, repeat, accuracy, ...
    info: dict[int, dict]  # split.json of each finished split
    plan: dict = field(default_factory=dict)
    folds: pd.DataFrame | None = None  # folds.csv: clip and its fold/repeat columns
    dataset: str | None = None
    settings: dict = field(default_factory=dict)  # config.yaml's result-deciding settings, protocol aside

    @property
    def acc(self) -> dict[int, float]:
        return dict(zip(self.scores["split"], self.scores["accuracy"]))

    @property
    def leaky(self) -> bool:
        return bool(self.plan.get("leaky", False))


def _fold_key(path: Path) -> pd.DataFrame | None:
    """folds.csv's clip column and its fold/repeat columns, sorted: equal for the same assignment."""
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype={"clip": str})
    cols = ["clip"] + sorted(c for c in df.columns if c.startswith(("fold", "repeat")))
    return df[cols + ["label"] * ("label" in df)].sort_values(cols).reset_index(drop=True)


def load_run(run_dir) -> Run:
    run_dir = Path(run_dir)
    try:
        pred = load_predictions(run_dir)
        scores = fold_scores(pred)
        info = {int(k): read_split_json(run_dir, int(k)) for k in scores["split"]}
    except (OSError, ValueError) as e:
        raise CompareError(f"{run_dir}: {e}") from None
    return Run(
        run_dir,
        run_name(run_dir),
        pred,
        scores,
        info,
        read_plan(run_dir),
        _fold_key(run_dir / "folds.csv"),
        dataset_name(run_dir),
        _settings(run_dir),
    )


def _settings(run_dir: Path) -> dict:
    """The settings that decide results, except the protocol's (a leaky run's only difference)."""
    return {k: v for k, v in saved_result_view(run_dir).items() if not k.startswith(("protocol.", "dataset.root"))}


def _ratio(run: Run, splits: list[int]) -> float | None:
    """Mean n_test / n_train over `splits` (split.json, else plan.json's split list)."""
    planned = {s.get("split"): s for s in run.plan.get("splits") or [] if isinstance(s, dict)}
    ratios = []
    for k in splits:
        sizes = run.info[k] if {"n_train", "n_test"} <= set(run.info[k]) else planned.get(k, {})
        if not sizes.get("n_train") or sizes.get("n_test") is None:
            return None
        ratios.append(sizes["n_test"] / sizes["n_train"])
    return float(np.mean(ratios))


def _other_data(best: Run, run: Run) -> str | None:
    """Why the two runs are not on the same data, or None."""
    fp_best, fp_run = best.plan.get("dataset_fingerprint"), run.plan.get("dataset_fingerprint")
    if fp_best and fp_run:
        if fp_best != fp_run:
            return f"not the same data as {best.label} (their dataset fingerprints differ)"
    elif best.dataset != run.dataset:
        return f"on dataset {run.dataset}, {best.label} on {best.dataset}"
    return None


def _pairing(best: Run, run: Run) -> tuple[list[int], str | None]:
    """The split numbers to pair the two runs on, or why they cannot be paired."""
    reason = _other_data(best, run)
    if reason:
        return [], reason
    if best.folds is None or run.folds is None:
        return [], "a run folder has no folds.csv, so its folds cannot be checked"
    b, r = best.folds, run.folds
    if not b.equals(r):
        if "label" in b and "label" in r and b["clip"].equals(r["clip"]) and not b["label"].equals(r["label"]):
            return [], f"not the same data as {best.label} (folds.csv gives clips other labels)"
        return [], (
            f"other folds than {best.label} (folds.csv's clip and fold columns differ; protocol "
            f"{run.plan.get('protocol', '?')} vs {best.plan.get('protocol', '?')})"
        )
    common = sorted(set(best.info) & set(run.info))
    if not common:
        return [], f"no finished split in common with {best.label}"
    for k in common:
        for key, default in (("test_fold", None), ("repeat", 1)):
            if best.info[k].get(key, default) != run.info[k].get(key, default):
                return [], f"split {k} has another {key} than in {best.label}"
    return common, None


def _mcnemar(best: Run, run: Run, splits: list[int] | None) -> tuple[dict | None, str | None]:
    """Per clip, over `splits` (None: all finished) when both runs tested the same clips; with
    repeats a clip is tested once per repeat, so its tests are paired repeat by repeat."""
    a, b = (r.pred if splits is None else r.pred[r.pred["split"].isin(splits)] for r in (run, best))
    both = a.merge(b, on=["repeat", "clip"], suffixes=("_a", "_b"))
    if not (len(both) == len(a) == len(b)):
        return None, "the runs did not test the same clips"
    if (both["label_a"] != both["label_b"]).any():
        return None, "the runs give their clips different labels"
    right_a, right_b = (both["pred_a"] == both["label_a"]).to_numpy(), (both["pred_b"] == both["label_b"]).to_numpy()
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    return {
        "n_clips": len(both),
        "only_run_right": only_a,
        "only_best_right": only_b,
        "p": mcnemar_exact(only_a, only_b),
    }, None


def _against(best: Run, run: Run, rope: float) -> dict:
    """`run` against `best`: differences are run - best (negative: worse than the best)."""
    splits, reason = _pairing(best, run)
    out = {
        "paired": reason is None,
        "reason": reason,
        "splits": splits,
        "n_pairs": len(splits),
        "diff": float(run.scores["accuracy"].mean() - best.scores["accuracy"].mean()),
        "ratio_test_train": None,
        "ttest": None,
        "bayes": None,
        "mcnemar": None,
        "mcnemar_reason": None,
        "notes": [],
    }
    if reason is None:
        d = np.array([run.acc[k] - best.acc[k] for k in splits])
        out["diff"] = float(d.mean())
        left = sorted(set(run.info) ^ set(best.info))
        if left or missing_splits(run.dir) or missing_splits(best.dir):
            out["notes"].append(
                f"paired on the {len(splits)} split(s) both finished "
                f"({', '.join(map(str, splits))}); the others are left out of the tests"
            )
        ratios = [x for x in (_ratio(best, splits), _ratio(run, splits)) if x is not None]
        if len(d) < 2:
            out["notes"].append("one split in common: no test over splits")
        elif not ratios:
            out["notes"].append("split.json gives no n_train/n_test: no corrected test")
        else:
            out["ratio_test_train"] = max(ratios)
            out["ttest"] = corrected_ttest(d, max(ratios))._asdict()
            out["bayes"] = bayes_correlated_ttest(d, max(ratios), rope)._asdict()
    if _other_data(best, run) is None:
        out["mcnemar"], out["mcnemar_reason"] = _mcnemar(best, run, splits if reason is None else None)
    return out


def _run_row(run: Run, rank: int) -> dict:
    s = summary(run.scores)
    return {
        "rank": rank,
        "run": run.label,
        "dir": str(run.dir),
        "dataset": run.dataset,
        "protocol": run.plan.get("protocol", "?"),
        "leaky": run.leaky,
        "acc_mean": s["acc_mean"],
        "acc_std": s["acc_std"],
        "acc_ci95_low": s["acc_ci95_low"],
        "acc_ci95_high": s["acc_ci95_high"],
        "n_splits": s["n_splits"],
        "repeats": int(run.scores["repeat"].nunique()),
        "n_clips": len(run.pred),
        "n_classes": len(class_names(run.pred)),
        "missing_splits": missing_splits(run.dir),
        "mlflow_parent": read_json(run.dir / "mlflow.json").get("parent"),
        "splits": run.scores[["split", "test_fold", "repeat", "accuracy"]].to_dict(orient="records"),
        "vs": None,
        "vs_best": None,
        "settings": run.settings,
    }


def compare_runs(*run_dirs, rope: float = 0.01) -> dict:
    """Every run against the best of them (highest mean accuracy; the first given on a tie), or,
    where the best is on other folds or data (a leaky protocol, another fold plan), against the
    best-ranked run it can be paired with, so paired tests are made wherever they can be."""
    if len(run_dirs) < 2:
        raise CompareError(f"compare needs two or more run folders, got {len(run_dirs)}")
    if not (0 <= rope < 1):
        raise CompareError(f"--rope {rope}: give a difference of accuracy in [0, 1), e.g. 0.01")
    seen = set()
    for d in run_dirs:
        if not Path(d).is_dir():
            raise CompareError(f"{d}: no such run folder")
        if Path(d).resolve() in seen:
            raise CompareError(f"{d} is named twice")
        seen.add(Path(d).resolve())
    runs, skipped = [], []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except CompareError as e:
            skipped.append({"dir": str(d), "reason": str(e)})
    if len(runs) < 2:
        raise CompareError("fewer than two readable runs: " + "; ".join(s["reason"] for s in skipped))
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:
            r.label = str(r.dir)
    order = sorted(range(len(runs)), key=lambda i: -runs[i].scores["accuracy"].mean())
    runs = [runs[i] for i in order]
    rows = [_run_row(r, i + 1) for i, r in enumerate(runs)]
    for i, (row, run) in enumerate(zip(rows[1:], runs[1:]), start=1):
        # against the best run it can be paired with (same data, same folds), else the best overall
        ref = next((r for r in runs[:i] if _pairing(r, run)[1] is None), runs[0])
        row["vs"] = ref.label
        row["vs_best"] = _against(ref, run, rope)
    return {
        "best": runs[0].label,
        "rope": rope,
        "experiment": runs[0].dataset or "foldbench",
        "runs": rows,
        "skipped": skipped,
    }


# ---- output: Markdown, CSV, JSON, plot, MLflow ----


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
