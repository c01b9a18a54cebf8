"""The comparison itself: runs loaded, ranked, and each set against the best it can be paired with.

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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.runfolder import read_json, saved_result_view
from reports.aggregate import class_names, fold_scores, load_predictions, summary
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
