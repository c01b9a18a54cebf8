"""Set two runs over the same data side by side: a leaky run beside an honest one, or two settings.

    result = compare_runs("runs/us8k-random", "runs/us8k-honest")
    print(render_comparison(result))

Built from the run folders' saved predictions only. Both runs tested every clip once, so the
comparison is paired per clip (on the clips both tested): how many only A got right, only B, and
McNemar's exact test on those. When both runs put every clip in the same fold, it is also paired
per fold: the per-fold differences, their mean and a 95 % t-interval.
"""
from __future__ import annotations

import math
from pathlib import Path

from scipy import stats

from reports.aggregate import fold_scores, load_predictions, summary
from reports.files import dataset_name, missing_splits, read_plan, run_name


class CompareError(ValueError):
    """Two runs that cannot be compared (no predictions, different data)."""


def _run(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareError(f"{run_dir}: no such run folder")
    try:
        pred = load_predictions(run_dir)
    except (FileNotFoundError, ValueError) as e:
        raise CompareError(f"{run_dir}: {e}") from None
    plan = read_plan(run_dir)
    folds = fold_scores(pred)
    return {"dir": run_dir, "name": run_name(run_dir), "dataset": dataset_name(run_dir),
            "protocol": plan.get("protocol", "?"), "leaky": bool(plan.get("leaky", False)),
            "pred": pred, "folds": folds, "summary": summary(folds), "missing": missing_splits(run_dir)}


def _public(run: dict) -> dict:
    s = run["summary"]
    return {"run": run["name"], "dir": str(run["dir"]), "protocol": run["protocol"],
            "leaky": run["leaky"], "acc_mean": s["acc_mean"], "acc_std": s["acc_std"],
            "n_splits": s["n_splits"], "n_clips": len(run["pred"]), "missing_splits": run["missing"]}


def compare_runs(run_a, run_b) -> dict:
    """Difference of mean accuracy (A - B), paired per clip, and per fold where the folds match."""
    a, b = _run(run_a), _run(run_b)
    if a["dataset"] and b["dataset"] and a["dataset"] != b["dataset"]:
        raise CompareError(f"{a['dir']} is on dataset {a['dataset']}, {b['dir']} on {b['dataset']}: "
                           f"compare runs over the same data")
    both = a["pred"].merge(b["pred"], on="clip", suffixes=("_a", "_b"))
    if both.empty:
        raise CompareError(f"{a['dir']} and {b['dir']} share no test clip: not the same data")
    if (both["label_a"] != both["label_b"]).any():
        clip = both.loc[both["label_a"] != both["label_b"], "clip"].iloc[0]
        raise CompareError(f"clip {clip} has different labels in the two runs: not the same data")
    right_a = (both["pred_a"] == both["label_a"]).to_numpy()
    right_b = (both["pred_b"] == both["label_b"]).to_numpy()
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    discordant = only_a + only_b
    out = {
        "a": _public(a), "b": _public(b),
        "diff_acc_mean": a["summary"]["acc_mean"] - b["summary"]["acc_mean"],
        "clips": {"common": len(both), "only_in_a": len(a["pred"]) - len(both),
                  "only_in_b": len(b["pred"]) - len(both),
                  "acc_a": float(right_a.mean()), "acc_b": float(right_b.mean()),
                  "both_right": int((right_a & right_b).sum()), "only_a_right": only_a,
                  "only_b_right": only_b, "both_wrong": int((~right_a & ~right_b).sum()),
                  "mcnemar_p": float(stats.binomtest(only_a, discordant).pvalue) if discordant else 1.0},
        "per_fold": None,
    }
    same_folds = (len(both) == len(a["pred"]) == len(b["pred"])
                  and (both["fold_a"] == both["fold_b"]).all())
    if same_folds:
        per_fold = a["folds"].merge(b["folds"], on="test_fold", suffixes=("_a", "_b"))
        diff = (per_fold["accuracy_a"] - per_fold["accuracy_b"]).to_numpy()
        n = len(diff)
        sd = float(diff.std(ddof=1)) if n > 1 else 0.0
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else 0.0
        out["per_fold"] = {
            "folds": [{"test_fold": int(f), "acc_a": float(x), "acc_b": float(y), "diff": float(x - y)}
                      for f, x, y in zip(per_fold["test_fold"], per_fold["accuracy_a"], per_fold["accuracy_b"])],
            "diff_mean": float(diff.mean()), "diff_std": sd,
            "diff_ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "a_better_folds": int((diff > 0).sum()), "n_folds": n}
    return out


def _label(run: dict) -> str:
    return "LEAKY" if run["leaky"] else "honest"


def render_comparison(result: dict) -> str:
    """Plain text (also valid Markdown) for the terminal."""
    a, b, c = result["a"], result["b"], result["clips"]
    lines = ["| run | protocol | | accuracy (mean ± std over splits) | splits | clips |",
             "|---|---|---|---|---|---|"]
    for key, run in (("A", a), ("B", b)):
        lines.append(f"| {key}: {run['run']} | `{run['protocol']}` | {_label(run)} | "
                     f"{run['acc_mean']:.3f} ± {run['acc_std']:.3f} | {run['n_splits']} | {run['n_clips']} |")
    lines += ["", f"**difference of mean accuracy, A - B: {result['diff_acc_mean']:+.3f}**", ""]
    for key, run in (("A", a), ("B", b)):
        if run["missing_splits"]:
            lines += [f"WARNING: run {key} is incomplete (split(s) {', '.join(map(str, run['missing_splits']))} "
                      f"not finished): its mean covers fewer folds; the per-clip pairing below is fairer.", ""]
    if a["leaky"] != b["leaky"]:
        leaky, honest = (a, b) if a["leaky"] else (b, a)
        gap = leaky["acc_mean"] - honest["acc_mean"]
        lines += [f"The leaky protocol scores {gap:+.3f} against the honest one on the same data"
                  + (": what leakage is worth here." if gap > 0 else "; no leakage shows here."), ""]
    lines += [f"Per clip, paired over the {c['common']} clips both runs tested: A right {c['acc_a']:.3f}, "
              f"B right {c['acc_b']:.3f}; both right {c['both_right']}, only A {c['only_a_right']}, "
              f"only B {c['only_b_right']}, both wrong {c['both_wrong']} "
              f"(McNemar exact p = {c['mcnemar_p']:.3g})."]
    if c["only_in_a"] or c["only_in_b"]:
        lines.append(f"Not in both runs: {c['only_in_a']} clip(s) only in A, {c['only_in_b']} only in B.")
    pf = result["per_fold"]
    if pf is None:
        lines += ["", "The runs' folds differ, so there is no per-fold pairing: compare the means and "
                      "the per-clip counts."]
    else:
        lines += ["", "Same folds in both runs: paired per fold.", "",
                  "| test fold | A | B | A - B |", "|---|---|---|---|"]
        lines += [f"| {f['test_fold']} | {f['acc_a']:.3f} | {f['acc_b']:.3f} | {f['diff']:+.3f} |"
                  for f in pf["folds"]]
        lines += ["", f"mean difference {pf['diff_mean']:+.3f} ± {pf['diff_std']:.3f} "
                      f"(95 % CI {pf['diff_ci95'][0]:+.3f} to {pf['diff_ci95'][1]:+.3f}); "
                      f"A better on {pf['a_better_folds']} of {pf['n_folds']} folds."]
    return "\n".join(lines)
