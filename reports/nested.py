"""A nested run's summary: nested.json and nested.md, both estimates, the choice per outer split.

Built by bench/drivers/nested.py from the outer splits' verified split.json files (the settings each
inner study chose) and the non-nested estimate; written through `RunFolder`.
"""

from __future__ import annotations

import json
from collections import Counter

from bench.core.runfolder import RunFolder
from reports.aggregate import interval_text


def summarise(folder: RunFolder, scores: dict, baseline: dict | None) -> dict:
    """nested.json: the nested estimate, the choice per outer split and how stable it was, and the
    non-nested estimate with the difference (non-nested minus nested: the selection bias)."""
    rows = []
    for k in folder.verified():
        info = folder.read_split_info(k)
        rows.append(
            {
                "split": k,
                "test_fold": info["test_fold"],
                "test_acc": info["test_acc"],
                "best_epoch": info["best_epoch"],
                "inner_trial": info.get("inner_trial"),
                "inner_val_acc_mean": info.get("inner_val_acc_mean"),
                "chosen": info.get("chosen", {}),
            }
        )
    keys = sorted({key for r in rows for key in r["chosen"]})
    stability = {}
    for key in keys:
        values = Counter(json.dumps(r["chosen"].get(key)) for r in rows)
        value, count = values.most_common(1)[0]
        stability[key] = {"distinct": len(values), "most_common": json.loads(value), "count": count}
    nested = {k: scores.get(k) for k in ("acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "n_splits")}
    bias = baseline["acc_mean"] - nested["acc_mean"] if baseline else None
    return {"nested": nested, "outer": rows, "stability": stability, "non_nested": baseline, "selection_bias": bias}


def render_summary(s: dict) -> str:
    n = s["nested"]
    lines = [
        "# Nested cross-validation",
        "",
        "| estimate | accuracy (mean ± std over splits) | 95 % interval | splits |",
        "|---|---|---|---|",
        f"| nested (selection never saw the test fold) | {n['acc_mean']:.3f} ± {n['acc_std']:.3f} | "
        f"{interval_text(n['acc_ci95_low'], n['acc_ci95_high'])} | {n['n_splits']} |",
    ]
    b = s["non_nested"]
    if b:
        lines.append(
            f"| non-nested (tune, then kfold of best.yaml) | {b['acc_mean']:.3f} ± "
            f"{b['acc_std']:.3f} | {interval_text(b['acc_ci95_low'], b['acc_ci95_high'])} | "
            f"{b['n_splits']} |"
        )
        lines += [
            "",
            f"**Selection bias (non-nested − nested): {s['selection_bias']:+.3f}** — what "
            f"choosing the settings on folds that are also test folds is worth here. Its "
            f"own noise is of the order of the splits' std / √splits.",
        ]
    lines += [
        "",
        "## Chosen per outer split",
        "",
        "| split | test fold | inner trial | inner val | epoch | test | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["outer"]:
        chosen = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r["chosen"].items())
        lines.append(
            f"| {r['split']} | {r['test_fold']} | {r['inner_trial']} | "
            f"{_num(r['inner_val_acc_mean'])} | {r['best_epoch']} | {_num(r['test_acc'])} | {chosen} |"
        )
    if s["stability"]:
        lines += [
            "",
            "## How stable the choice is",
            "",
            "| setting | distinct values chosen | most often | times |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['distinct']} | {_short(v['most_common'])} | {v['count']} of {len(s['outer'])} |"
            for k, v in s["stability"].items()
        ]
    if b:
        lines += [
            "",
            f"Non-nested: trial {b['trial']} chosen (val {b['val_acc_mean']:.3f}): "
            + ", ".join(f"{k}={_short(v)}" for k, v in b["chosen"].items())
            + f"; run {b['run']}.",
        ]
    return "\n".join(lines) + "\n"


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_summary(folder: RunFolder, summary: dict) -> None:
    """nested.json and nested.md, through the run folder."""
    folder.write_json("nested.json", summary, indent=1)
    folder.write_text("nested.md", render_summary(summary))
