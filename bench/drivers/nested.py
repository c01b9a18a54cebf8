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
selection bias, measured. One run folder (its layout: bench/core/runfolder.py): the outer run
(split.json holds the configuration chosen for k), search.json, the studies under inner/<k>/, the
non-nested study and its kfold run under non-nested/, and nested.md/nested.json with both estimates.
The job's lifecycle (claim, run.json, the MLflow parent run, resume) is bench/drivers/job.py's.

MLflow: a parent run, a child `outer-<k>` per outer split with its study and its split run under
it, and a child `non-nested`. Resumable per outer split: a verified split is kept, an unfinished
one continues its study (finished trials are kept) and is trained again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from protocols import Split

from bench.core.config import ConfigError, RunConfig, merge
from bench.core.provenance import clock
from bench.core.runfolder import RunFolder, RunFolderError, latest_run
from bench.drivers.job import Job, report
from bench.drivers.kfold import SplitJob, run_cv, run_split
from bench.drivers.prepare import Prepared, prepare
from bench.drivers.space import check_space, load_space
from bench.drivers.study import best_trial
from bench.drivers.tune import TuneConfig, best_config, check_tune, check_validation, search
from bench.tracking.tracker import Tracker
from reports.nested import render_summary, summarise, write_summary  # noqa: F401 (render_summary: cli.py)


@dataclass
class NestedResult:
    run_dir: Path
    summary: dict  # what nested.json holds


@dataclass
class Selection:
    """What every outer split's selection shares: the config, search options and space, the prepared
    data, the inner splits, the settings split.json records (`_settings`), and the Ray workers."""

    cfg: RunConfig
    tune: TuneConfig
    space: dict[str, Any]
    prepared: Prepared
    inner_splits: int
    settings: dict
    progress: bool = True
    workers: Any = None  # `ray_workers.StudyWorkers`, or None: the studies run here


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
    folder = RunFolder(run_dir)
    saved, state = folder.read_record("search.json")
    if state == "unverified" and "digest" in folder.read_json("search.json"):
        raise RunFolderError(
            f"{folder.path / 'search.json'} does not match its digest (edited or damaged), so the search "
            f"settings this run was started with are unknown; start a new run"
        )
    return saved


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
    sel = Selection(
        cfg, tune, space, prepared, inner_splits, _settings(cfg, tune, space, inner_splits), progress, workers
    )
    tracker = prepared.tracker or Tracker(cfg.tracking, experiment=cfg.dataset.name)
    outer = prepared.chosen(cfg.splits)
    with Job(cfg, prepared, tracker, resume=resume, kind="nested", began=began, progress=progress) as job:
        run_settings = {**sel.settings, "non_nested": non_nested}  # search.json: what shapes the run
        reasons = _to_train(job, outer, sel.settings, run_settings)
        job.start(searched=space, records={"search.json": run_settings})
        job.folder.keep()  # the studies under inner/ are finished work before any outer split is DONE
        for split in tqdm(outer, desc=f"outer splits ({cfg.name})", unit="split", disable=not progress):
            reason = reasons[split.index]
            if reason is None:
                continue
            if reason != "not finished":
                print(f"outer split {split.index}: {reason}; training it again", file=sys.stderr)
            _outer_split(sel, split, job, resume)
        summary = _estimates(sel, job, non_nested)
    return NestedResult(job.folder.path, summary)


def _to_train(job: Job, outer: list[Split], settings: dict, run_settings: dict) -> dict[int, str | None]:
    """Why each outer split is (re)trained (None: kept). What each finished outer split was selected
    with (its DONE vouches for split.json; search.json is only the latest invocation's): a resume
    must match it, and search.json, or the estimate mixes budgets."""
    folder = job.folder
    saved = read_search(folder.path)
    reasons = job.reasons({s.index for s in outer} | set(folder.done()))
    selected = {k: folder.read_split_info(k).get("search") for k in folder.done() if reasons[k] is None}
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
    return reasons


def _estimates(sel: Selection, job: Job, non_nested: bool) -> dict:
    """The nested report (report.md of the outer splits), the non-nested estimate beside it, and
    nested.md/nested.json with both; mirrored to the job's run."""
    folder, tracker, parent = job.folder, job.tracker, job.run
    scores = report(folder, tracker, parent)
    baseline = _non_nested(sel, folder.path / "non-nested", tracker, parent) if non_nested else None
    summary = summarise(folder, scores, baseline)
    write_summary(folder, summary)
    tracker.log_metrics(
        parent,
        {"non_nested_acc_mean": baseline and baseline["acc_mean"], "selection_bias": summary["selection_bias"]},
    )
    tracker.log_files(parent, [folder.path / "nested.md", folder.path / "nested.json"])
    return summary


def _outer_split(sel: Selection, split: Split, job: Job, resume: bool) -> dict:
    """Select on the inner splits, then train on the outer training folds and score fold k once."""
    cfg, tracker, name = sel.cfg, job.tracker, f"outer-{split.index}"
    with tracker.run(
        name,
        run_id=tracker.child_run(job.run, name, {"outer_split": split.index}),
        parent=job.run,
        tags={"outer_split": split.index, "test_fold": split.test_fold},
    ) as run:
        study_tune = replace(sel.tune, study=f"{cfg.name}-outer-{split.index}")
        inner = job.folder.path / "inner" / str(split.index)
        best = select(
            cfg, study_tune, sel.space, sel.prepared, split, inner, sel.inner_splits, tracker, run, sel.workers
        )
        chosen = merge(best_config(cfg, best), {"name": cfg.name, "runs_dir": cfg.runs_dir, "splits": cfg.splits})
        notes = {
            "chosen": {k: best.params[k] for k in sorted(best.params)},
            "inner_trial": best.number,
            "inner_val_acc_mean": best.value,
            "search": sel.settings,
        }
        split_job = SplitJob(split, chosen, notes=notes)
        info = run_split(split_job, sel.prepared, job.folder, tracker, run, sel.progress, resume)
        tracker.log_metrics(run, {"test_acc": info["test_acc"], "inner_val_acc_mean": best.value})
        tracker.set_tags(run, {f"chosen.{k}": v for k, v in best.params.items()})
    print(
        f"outer split {split.index} (test fold {split.test_fold}): inner trial {best.number} "
        f"chosen (val {best.value:.3f}), test {info['test_acc']:.3f}",
        file=sys.stderr,
    )
    return info


def _non_nested(sel: Selection, folder: Path, tracker: Tracker, parent: str | None) -> dict:
    """The usual shortcut with the same budget: one study on the full plan's first `inner_splits`
    splits (whose validation folds are other splits' test folds), then kfold of its best config."""
    cfg, prepared = sel.cfg, sel.prepared
    with tracker.run(
        "non-nested",
        run_id=tracker.child_run(parent, "non-nested", {"kind": "non-nested"}),
        parent=parent,
        tags={"kind": "non-nested"},
    ) as run:
        study_cfg = merge(cfg, {"splits": list(range(1, sel.inner_splits + 1))})
        study_tune = replace(sel.tune, study=f"{cfg.name}-non-nested")
        if sel.workers is not None:
            result = sel.workers.search(
                study_cfg, study_tune, sel.space, folder, prepared.device, parent_run=run, sole=True
            )
        else:
            result = search(
                study_cfg,
                study_tune,
                sel.space,
                prepared,
                folder,
                tracker=tracker,
                parent_run=run,
                progress=False,
                sole=True,
            )
        best = best_trial(result.study)
        if best is None:
            raise RunFolderError(f"non-nested study: no trial completed (see {folder / 'report.md'})")
        kfold_cfg = merge(
            best_config(cfg, best), {"name": "kfold", "runs_dir": str(folder), "splits": cfg.splits}
        )  # the outer splits
        resume = (folder / "kfold" / "config.yaml").is_file()
        cv = run_cv(kfold_cfg, prepared=prepared, resume=resume, tracker=tracker, parent_run=run, progress=sel.progress)
        tracker.log_metrics(run, {"acc_mean": cv.scores["acc_mean"], "acc_std": cv.scores["acc_std"]})
    return {
        **{k: cv.scores.get(k) for k in ("acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "n_splits")},
        "chosen": {k: best.params[k] for k in sorted(best.params)},
        "trial": best.number,
        "val_acc_mean": best.value,
        "run": str(cv.run_dir),
    }
