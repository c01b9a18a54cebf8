"""`nested`: nested cross-validation, the estimate of a tuned model that no test fold has seen.

For each outer split k (test fold k): an Optuna study (`tune.search`, the same objective, pruning
and trial folders as `tune`) over the *inner* splits, made only from the folds other than k; its
best configuration is trained on split k's training folds, the epoch chosen on split k's
validation fold (k+1, one of the inner folds), and scored once on fold k. Fold k is never an
index into the features while its configuration is selected: not for training, statistics,
validation or early stopping (`tests/test_nested.py` poisons its features with NaN to prove it).
The feature bank itself is computed once for every clip, as elsewhere (per clip, no statistics).

Beside it, with the same budget, the non-nested estimate users usually report: one study over the
full plan's first splits, then every split of its best configuration. Their difference is the
selection bias, measured. One run folder:

    runs/<name>/                 the outer run: config.yaml, folds.csv, splits/<k>/ (split.json
                                 holds the configuration chosen for k), report.md, scores.json
    runs/<name>/inner/<k>/       outer split k's study (study.db, trials/, trials.csv, best.yaml)
    runs/<name>/non-nested/      the non-nested study, and kfold/ (its best config, every split)
    runs/<name>/nested.md, nested.json   both estimates, their difference, the choices per split

MLflow: a parent run, a child `outer-<k>` per outer split with its study and its split run under
it, and a child `non-nested`. Resumable per outer split: a verified split is kept, an unfinished
one continues its study (finished trials are kept) and is trained again.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from protocols import Split

from bench.core.atomic import atomic_write_text
from bench.core.config import ConfigError, RunConfig, merge
from bench.drivers.kfold import SplitJob, code_version, open_parent_run, report, run_cv, run_split
from bench.drivers.prepare import Prepared, prepare
from bench.core.provenance import Attempt, clock, record_digest
from bench.core.runfolder import RunFolder, RunFolderError, latest_run, read_json
from bench.tracking.tracker import Tracker
from bench.drivers.space import check_space, load_space
from bench.drivers.study import best_trial
from bench.drivers.tune import TuneConfig, best_config, check_tune, check_validation, search


@dataclass
class NestedResult:
    run_dir: Path
    summary: dict  # what nested.json holds


def inner_prepared(prepared: Prepared, fold: int, val: str = "next") -> Prepared:
    """`prepared` whose splits are the inner splits of outer test fold `fold`: the protocol's own
    scheme over the other folds only (their positions in the full plan), numbered 1.. ."""
    plan = prepared.plan
    keep = np.flatnonzero(np.asarray(plan.folds) != fold)
    inner = plan.protocol.splits(np.asarray(plan.folds)[keep], val)
    splits = [Split(s.index, s.test_fold, s.val_fold, keep[s.train], keep[s.val], keep[s.test]) for s in inner]
    return replace(prepared, plan=replace(plan, splits=splits))


def latest_nested(runs_dir: str | Path, dataset: str | None) -> str | None:
    """The newest nested run of `dataset` (None: of any) in `runs_dir` (what `nested --resume` continues)."""
    return latest_run(runs_dir, dataset, nested=True)


def check_nested(cfg: RunConfig, prepared: Prepared, inner_splits: int) -> None:
    """Refuse plans nested CV cannot use, before anything is written."""
    plan = prepared.plan
    if not plan.protocol.cross_validated:
        raise ConfigError(
            f"nested: protocol {plan.protocol.name} has one fixed split; nested CV needs folds (predefined, stratified)"
        )
    if plan.repeats > 1:
        raise ConfigError(
            "nested: --repeats is for kfold; nested CV of one fold plan already trains "
            "trials x folds models (run it again with --set protocol.seed=N for another plan)"
        )
    n_folds = len(np.unique(plan.folds))
    if n_folds < 4:
        raise ConfigError(
            f"nested: {n_folds} folds leave {n_folds - 1} inside each outer split; "
            f"inner training + validation + test need at least 3 (use --folds 4 or more)"
        )
    if not 1 <= inner_splits <= n_folds - 1:
        raise ConfigError(
            f"--inner-splits {inner_splits}: between 1 and {n_folds - 1} (the folds left inside each outer split)"
        )


def select(
    cfg: RunConfig,
    tune: TuneConfig,
    space: dict[str, Any],
    prepared: Prepared,
    split: Split,
    folder: Path,
    inner_splits: int,
    tracker: Tracker | None = None,
    parent_run: str | None = None,
    workers=None,
):
    """The study of outer split `split` over its inner splits; its best FrozenTrial (or an error).
    `workers` (`ray_workers.StudyWorkers`): the study run by several Optuna workers on Ray."""
    inner_cfg = merge(cfg, {"splits": list(range(1, inner_splits + 1))})
    if workers is not None:
        result = workers.search(
            inner_cfg,
            tune,
            space,
            folder,
            prepared.device,
            parent_run=parent_run,
            inner_fold=split.test_fold,
            sole=True,
        )
    else:
        inner = inner_prepared(prepared, split.test_fold, cfg.protocol.val)
        result = search(
            inner_cfg, tune, space, inner, folder, tracker=tracker, parent_run=parent_run, progress=False, sole=True
        )  # the run folder's lock: no one else runs it
    best = best_trial(result.study)
    if best is None:
        raise RunFolderError(
            f"outer split {split.index}: no inner trial completed (see "
            f"{folder / 'report.md'}); raise --trials or check the search space"
        )
    return best


def _settings(cfg: RunConfig, tune: TuneConfig, space: dict, inner_splits: int) -> dict:
    """The search settings an outer split was selected with (saved in split.json: DONE vouches)."""
    return json.loads(
        json.dumps(
            {
                "trials": tune.trials,
                "inner_splits": inner_splits,
                "space": space,
                "sampler_seed": tune.seed,
                "prune_startup": tune.prune_startup,
                "prune_warmup": tune.prune_warmup,
            }
        )
    )


def read_search(run_dir) -> dict:
    """search.json's settings ({} when absent), vouched for by their own digest: one that does not
    match (an edited file) is refused. A search.json written before it had a digest is read as is."""
    path = Path(run_dir) / "search.json"
    saved = read_json(path)
    if "digest" not in saved:
        return saved
    body = {k: v for k, v in saved.items() if k != "digest"}
    if saved["digest"] != record_digest(body):
        raise RunFolderError(
            f"{path} does not match its digest (edited or damaged), so the search "
            f"settings this run was started with are unknown; start a new run"
        )
    return body


def _write_search(run_dir: Path, settings: dict) -> None:
    atomic_write_text(
        run_dir / "search.json", json.dumps({**settings, "digest": record_digest(settings)}, indent=1) + "\n"
    )


def _same_run(saved: dict, settings: dict) -> bool:
    """search.json's settings are these (one saved before `non_nested` was recorded: the others)."""
    return (
        saved == settings
        if "non_nested" in saved
        else saved == {k: v for k, v in settings.items() if k != "non_nested"}
    )


def run_nested(
    cfg: RunConfig,
    tune: TuneConfig,
    inner_splits: int = 2,
    *,
    resume: bool = False,
    non_nested: bool = True,
    progress: bool = True,
    workers=None,
) -> NestedResult:
    """Nested CV of `cfg` + search space into `runs_dir/name`; the non-nested estimate beside it.
    `workers` (`ray_workers.StudyWorkers`): every study run by several Optuna workers on Ray."""
    began = clock()  # run.json: the job's start
    check_tune(tune)
    check_validation(cfg)
    space = load_space(tune.space)
    check_space(space, cfg)
    prepared = prepare(cfg, progress=progress)
    check_nested(cfg, prepared, inner_splits)
    settings = _settings(cfg, tune, space, inner_splits)
    tracker = prepared.tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)
    outer = prepared.chosen(cfg.splits)
    status = "FINISHED"
    with RunFolder.claim(cfg, resume) as folder:
        saved = read_search(folder.path)
        # What each finished outer split was selected with (its DONE vouches for split.json; search.json
        # is only the latest invocation's): a resume must match it, or the estimate mixes budgets.
        reasons = {s.index: "not finished" for s in outer}  # why each split is (re)trained; None: kept
        if resume and folder.done():  # (a run killed before its plan was written has nothing to keep)
            digest = folder.settings_digest()  # once, for every split's check
            reasons = {k: folder.problem(k, settings=digest) for k in set(reasons) | set(folder.done())}
        selected = {k: folder.read_split_info(k).get("search") for k in folder.done() if reasons[k] is None}
        if resume and not saved and not (folder.path / "inner").is_dir() and folder.done():
            raise RunFolderError(
                f"--resume {folder.path}: a kfold run, not a nested one; continue it "
                f"with `kfold --resume`, or give nested another --name"
            )
        run_settings = {**settings, "non_nested": non_nested}  # search.json: what shapes the run
        if saved and not _same_run(saved, run_settings):
            raise RunFolderError(
                f"--resume {folder.path}: the search settings differ from the saved "
                f"search.json ({saved} -> {run_settings}); resume with the same ones"
            )
        other = sorted(k for k, v in selected.items() if v != settings)
        if other:
            raise RunFolderError(
                f"--resume {folder.path}: outer split(s) {', '.join(map(str, other))} "
                f"were selected with other search settings than these (their "
                f"split.json: {selected[other[0]]}); resume with the same ones"
            )
        folder.write_plan(prepared.plan.table, prepared.plan.repeat_folds, prepared.plan_record(), prepared.quarantine)
        _write_search(folder.path, run_settings)
        from bench.core.threads import apply as set_threads  # recorded: results differ by thread count

        threads = set_threads(cfg.train.threads, (lambda line: print(line, file=sys.stderr)) if progress else None)
        attempt = Attempt.begin(folder.path, resume, code_version(), began, str(threads))  # run.json
        parent = open_parent_run(cfg, prepared, folder, tracker, resume, kind="nested", searched=space)
        folder.keep()  # the studies under inner/ are finished work before any outer split is DONE
        try:
            for split in tqdm(outer, desc=f"outer splits ({cfg.name})", unit="split", disable=not progress):
                reason = reasons[split.index]
                if reason is None:
                    continue
                if reason != "not finished":
                    print(f"outer split {split.index}: {reason}; training it again", file=sys.stderr)
                _outer_split(
                    cfg,
                    tune,
                    space,
                    prepared,
                    split,
                    folder,
                    inner_splits,
                    settings,
                    tracker,
                    parent,
                    progress,
                    resume,
                    workers,
                )
            scores = report(folder, tracker, parent)
            baseline = (
                _non_nested(
                    cfg,
                    tune,
                    space,
                    prepared,
                    folder.path / "non-nested",
                    inner_splits,
                    tracker,
                    parent,
                    progress,
                    workers,
                )
                if non_nested
                else None
            )
            summary = summarise(folder, scores, baseline)
            _write_summary(folder.path, summary)
            tracker.log_metrics(
                parent,
                {"non_nested_acc_mean": baseline and baseline["acc_mean"], "selection_bias": summary["selection_bias"]},
            )
            tracker.log_files(parent, [folder.path / "nested.md", folder.path / "nested.json"])
        except BaseException as e:
            status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            attempt.end(status)
            tracker.end(parent, status)
    return NestedResult(folder.path, summary)


def _outer_split(
    cfg, tune, space, prepared, split, folder, inner_splits, settings, tracker, parent, progress, resume, workers
) -> dict:
    """Select on the inner splits, then train on the outer training folds and score fold k once."""
    name = f"outer-{split.index}"
    with tracker.run(
        name,
        run_id=tracker.child_run(parent, name, {"outer_split": split.index}),
        parent=parent,
        tags={"outer_split": split.index, "test_fold": split.test_fold},
    ) as run:
        study_tune = replace(tune, study=f"{cfg.name}-outer-{split.index}")
        best = select(
            cfg,
            study_tune,
            space,
            prepared,
            split,
            folder.path / "inner" / str(split.index),
            inner_splits,
            tracker,
            run,
            workers,
        )
        chosen = merge(best_config(cfg, best), {"name": cfg.name, "runs_dir": cfg.runs_dir, "splits": cfg.splits})
        notes = {
            "chosen": {k: best.params[k] for k in sorted(best.params)},
            "inner_trial": best.number,
            "inner_val_acc_mean": best.value,
            "search": settings,
        }
        info = run_split(SplitJob(split, chosen, notes=notes), prepared, folder, tracker, run, progress, resume)
        tracker.log_metrics(run, {"test_acc": info["test_acc"], "inner_val_acc_mean": best.value})
        tracker.set_tags(run, {f"chosen.{k}": v for k, v in best.params.items()})
    print(
        f"outer split {split.index} (test fold {split.test_fold}): inner trial {best.number} "
        f"chosen (val {best.value:.3f}), test {info['test_acc']:.3f}",
        file=sys.stderr,
    )
    return info


def _non_nested(cfg, tune, space, prepared, folder: Path, inner_splits, tracker, parent, progress, workers) -> dict:
    """The usual shortcut with the same budget: one study on the full plan's first `inner_splits`
    splits (whose validation folds are other splits' test folds), then kfold of its best config."""
    with tracker.run(
        "non-nested",
        run_id=tracker.child_run(parent, "non-nested", {"kind": "non-nested"}),
        parent=parent,
        tags={"kind": "non-nested"},
    ) as run:
        study_cfg = merge(cfg, {"splits": list(range(1, inner_splits + 1))})
        study_tune = replace(tune, study=f"{cfg.name}-non-nested")
        result = (
            workers.search(study_cfg, study_tune, space, folder, prepared.device, parent_run=run, sole=True)
            if workers is not None
            else search(
                study_cfg,
                study_tune,
                space,
                prepared,
                folder,
                tracker=tracker,
                parent_run=run,
                progress=False,
                sole=True,
            )
        )
        best = best_trial(result.study)
        if best is None:
            raise RunFolderError(f"non-nested study: no trial completed (see {folder / 'report.md'})")
        kfold_cfg = merge(
            best_config(cfg, best), {"name": "kfold", "runs_dir": str(folder), "splits": cfg.splits}
        )  # the outer splits
        resume = (folder / "kfold" / "config.yaml").is_file()
        cv = run_cv(kfold_cfg, prepared=prepared, resume=resume, tracker=tracker, parent_run=run, progress=progress)
        tracker.log_metrics(run, {"acc_mean": cv.scores["acc_mean"], "acc_std": cv.scores["acc_std"]})
    return {
        **{k: cv.scores.get(k) for k in ("acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "n_splits")},
        "chosen": {k: best.params[k] for k in sorted(best.params)},
        "trial": best.number,
        "val_acc_mean": best.value,
        "run": str(cv.run_dir),
    }


# ---- the summary ----


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
    from reports.aggregate import interval_text

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


def _write_summary(path: Path, summary: dict) -> None:
    atomic_write_text(path / "nested.json", json.dumps(summary, indent=1, default=str) + "\n")
    atomic_write_text(path / "nested.md", render_summary(summary))
