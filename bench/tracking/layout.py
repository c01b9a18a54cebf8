"""What foldbench puts in MLflow, apart from the store plumbing in `bench.tracking.tracker` and `.store`.

    run_params(cfg, prepared)    the params of a job's runs: the resolved settings that decide results
    standard_tags()              mlflow.source.name/.type, mlflow.source.git.commit, mlflow.user
    dataset_inputs(prepared, folds_csv)   the dataset (digest: its fingerprint) and the fold plan as
                                 MLflow dataset inputs
    EXPERIMENT_TAGS, runs_link   the experiment opens on its runs table with useful columns
    ui_hint(tracking, run_dir)   where to look after a job: `mlflow ui ... --port P` and the link on P

Params are the settings a result depends on, as used: `protocol.name` the protocol the plan used,
`protocol.folds` the number of folds it has, `train.device` the device trained on, `features.f_max`
the edge used; a setting that the chosen optimizer, schedule or front end ignores is left out, and
so is every None that is still None after that (no `None` strings). Paths, run names, thread
counts and tracking settings are not params.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from bench.core.config import RunConfig
from bench.core.runfolder import result_view

PATH_KEYS = ("dataset.root",)  # a result does not depend on where the data sits (the fingerprint does)

# Settings that only some choices use: kept when the predicate on the flat config holds.
_not_linear: Callable[[dict], bool] = lambda p: p.get("features.frontend") != "linear_db"  # noqa: E731
USED_WHEN: dict[str, Callable[[dict], bool]] = {
    "train.momentum": lambda p: p["train.optimizer"] == "sgd",
    "train.nesterov": lambda p: p["train.optimizer"] == "sgd",
    "train.max_lr": lambda p: p["train.schedule"] == "onecycle",
    "train.anneal": lambda p: p["train.schedule"] == "onecycle",
    "train.lr": lambda p: p["train.schedule"] != "onecycle",  # OneCycleLR sets its own rates
    "train.plateau_factor": lambda p: p["train.schedule"] == "plateau",
    "train.plateau_patience": lambda p: p["train.schedule"] == "plateau",
    # linear_db has n_fft // 2 + 1 bands and ignores the Mel settings (bench/features/bank.py)
    "features.n_mels": _not_linear,
    "features.f_min": _not_linear,
    "features.f_max": _not_linear,
    "features.mel_scale": _not_linear,
    "features.mel_norm": _not_linear,
}


def run_params(cfg: RunConfig, prepared=None, *, leave_out=()) -> dict[str, str]:
    """The MLflow params of a job with `cfg` on `prepared` (a `bench.drivers.prepare.Prepared`; None: resolved
    from the config alone, as a tune trial does before its data is loaded). Split runs add their
    split, repeat, test and validation fold. `leave_out`: keys chosen per run below (nested CV)."""
    from protocols.plan import protocol_name, protocol_options

    p = {k: v for k, v in result_view(cfg).items() if k not in PATH_KEYS and k not in leave_out}
    if prepared is not None:
        protocol = prepared.plan.protocol
        p["protocol.name"] = protocol.name
        folds = prepared.plan.folds
        p["protocol.folds"] = len({int(f) for f in folds if f > 0})
        if "seed" not in protocol.params():  # predefined folds: the seed decides nothing
            p.pop("protocol.seed", None)
        p["train.device"] = prepared.device.type
    else:
        name = protocol_name(cfg)
        opts = protocol_options(cfg, name)
        p["protocol.name"] = name
        p["protocol.folds"] = opts.get("n_folds", cfg.protocol.folds)
        if "seed" not in opts:
            p.pop("protocol.seed", None)
        from bench.train.fit import resolve_device

        p["train.device"] = resolve_device(cfg.train.device).type
    p["protocol.repeats"] = cfg.protocol.repeats
    if p.get("features.f_max") is None and "features.f_max" in p:
        p["features.f_max"] = cfg.audio.sample_rate / 2  # what the filterbank uses
    if "features.mel_norm" in p and p["features.mel_norm"] is None:
        p["features.mel_norm"] = "none"  # a setting (no normalisation), not a missing value
    if p.get("splits") is not None:
        p["splits"] = ",".join(str(s) for s in p["splits"])
    p = {k: v for k, v in p.items() if v is not None and (k not in USED_WHEN or USED_WHEN[k](p))}
    return {k: str(v) for k, v in sorted(p.items())}


def split_params(base: dict[str, str], own: dict) -> dict[str, str]:
    """A split run's params: its job's, plus which split it is (`SplitJob.params`; a val_fold of
    None, with --val none, is no param)."""
    return {**base, **{k: str(v) for k, v in own.items() if v is not None}}


# ---- standard tags ----


@functools.lru_cache(maxsize=None)
def standard_tags() -> dict[str, str]:
    """MLflow's own tags for where a run came from: the entry point, LOCAL, the git commit of the
    code (when it is a git checkout), the user. Computed once per process."""
    entry = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    tags = {
        "mlflow.source.name": str(entry.resolve()) if entry and entry.is_file() else "python",
        "mlflow.source.type": "LOCAL",
    }
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        pass
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


# ---- the dataset as an input ----

DIGEST_CHARS = 36  # MLflow's datasets.digest column is VARCHAR(36)


def dataset_inputs(prepared, folds_csv: Path | None = None) -> list:
    """MLflow `DatasetInput`s: the dataset (name, digest = its fingerprint, source = its root,
    profile = clips and classes) and, when given, the fold plan (folds.csv, digest of its bytes)."""
    from mlflow.entities import DatasetInput, InputTag

    ds, plan = prepared.dataset, prepared.plan
    fingerprint = str(prepared.fingerprint)
    table = plan.table[[c for c in ("clip", "class", "label") if c in plan.table.columns]]
    inputs = [
        DatasetInput(
            _dataset(
                ds.name,
                fingerprint,
                ds.root,
                table,
                {
                    "clips": len(plan.table),
                    "classes": list(ds.classes),
                    "n_classes": len(ds.classes),
                    "quarantined": len(prepared.quarantine),
                    "fingerprint": fingerprint,
                },
            ),
            [InputTag("mlflow.data.context", "cross-validation")],
        )
    ]
    if folds_csv is not None and Path(folds_csv).is_file():
        import pandas as pd

        folds = pd.read_csv(folds_csv)
        digest = hashlib.sha256(Path(folds_csv).read_bytes()).hexdigest()
        inputs.append(
            DatasetInput(
                _dataset(
                    f"{ds.name}-folds",
                    digest,
                    Path(folds_csv).resolve(),
                    folds,
                    {
                        "clips": len(folds),
                        "folds": len(set(plan.folds.tolist()) - {0}),
                        "repeats": plan.repeats,
                        "protocol": repr(plan.protocol),
                    },
                ),
                [InputTag("mlflow.data.context", "fold plan")],
            )
        )
    return inputs


PANDAS_TO_MLFLOW = {"i": "long", "u": "long", "f": "double", "b": "boolean"}  # dtype.kind; else string


def _dataset(name: str, digest: str, source: Path, table, profile: dict):
    """An MLflow dataset entity as `mlflow.data.from_pandas(...)` would log it (a local source, the
    table's column schema), without inferring anything from the rows."""
    from mlflow.entities import Dataset

    schema = [
        {"type": PANDAS_TO_MLFLOW.get(dtype.kind, "string"), "name": str(col), "required": True}
        for col, dtype in table.dtypes.items()
    ]
    return Dataset(
        name=name,
        digest=digest[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": Path(source).as_uri()}),
        schema=json.dumps({"mlflow_colspec": schema}),
        profile=json.dumps(profile),
    )


# ---- the experiment: opens on its runs table, with the columns that matter ----

VIEW_KEY = "foldbench"  # the shared view `runs_link` opens (experiment tag mlflow.sharedViewState.<key>)
# What differs between a job's runs: the tuned settings (bench/drivers/space.py), then the others that
# a comparison varies. Which of them vary is known only per experiment; these are the usual ones.
SETTINGS = (
    "features.n_mels",
    "features.n_fft",
    "features.hop_length",
    "augment.freq_masks",
    "augment.time_masks",
    "model.name",
    "train.epochs",
    "protocol.name",
)
# The runs table's columns, in order. MLflow pins the run's name and its Created column on the left
# (its checkbox column, 73 px, before them); at 1,280 px of width the sidebar (200 px) and the MLflow
# Assistant, which opens by itself on a browser's first visit to a local server (a quarter of the
# width), leave the rest about 300 px: acc_mean, acc_std and the first setting. Closing the assistant
# (remembered per browser) shows about four settings more. MLflow's own columns come last: Dataset
# (300 px wide, first by default), Source, Models and Duration (not hideable).
COLUMNS = (
    [f"metrics.`{m}`" for m in ("acc_mean", "acc_std")]
    + [f"params.`{p}`" for p in SETTINGS]
    + [f"metrics.`{m}`" for m in ("macro_f1_mean", "val_acc_mean", "test_acc")]
    + ["attributes.`Dataset`", "attributes.`Source`", "attributes.`Models`"]
)
PINNED = ("attributes.`Run Name`", "runDateAndNestInfo")  # the ids of MLflow's Run Name and Created columns
COLUMN_ORDER = [*PINNED, *COLUMNS, "duration"]
# MLflow's widths are 190 (run name), 150 (Created), 100 (a metric or param): Created still shows
# "59 minutes ago" at 140, a metric's first digits at 75, a setting's name in full at the widths below
COLUMN_WIDTHS = {
    "runDateAndNestInfo": 140,
    "metrics.`acc_mean`": 85,
    "metrics.`acc_std`": 75,
    "params.`features.n_mels`": 115,
    "params.`features.n_fft`": 110,
    "params.`features.hop_length`": 135,
    "params.`augment.freq_masks`": 140,
    "params.`augment.time_masks`": 140,
}
EXPERIMENT_TAGS = {
    # MLflow 3.0-3.4 choose the experiment's page from this tag (genai: Traces; this: the runs table)
    "mlflow.experimentKind": "custom_model_development",
    # MLflow 3's runs table opened with ?viewStateShareKey=foldbench shows these columns, in this order
    # and at these widths (MLflow applies a width only to a column that columnOrder lists)
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(
        {
            "selectedColumns": COLUMNS,
            "columnOrder": COLUMN_ORDER,
            "columnWidths": COLUMN_WIDTHS,
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
        }
    ),
}


def runs_link(ui: str, experiment_id: str) -> str:
    """The experiment's runs table at MLflow UI `ui` (MLflow 3.5+ opens on GenAI traces unless the
    link asks for the machine-learning workflow), with foldbench's columns."""
    return (
        f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def ui_hint(tracking, run_dir: Path) -> str | None:
    """For the user, after a job: where its runs are (the runs table; for a SQLite store, with the
    command that serves it). `tracking`: the job's TrackingConfig; None when MLflow was off."""
    from bench.core.runfolder import read_json

    experiment = read_json(Path(run_dir) / "mlflow.json").get("experiment")
    if not (tracking.mlflow and experiment):
        return None
    from bench.core.redact import redact

    uri = redact(tracking.tracking_uri)
    if uri.startswith(("http://", "https://")):
        return runs_link(uri, experiment)
    port = ui_port()
    link = runs_link(f"http://127.0.0.1:{port}", experiment)
    return (
        f"mlflow ui --backend-store-uri {uri} --port {port}, then {link} (with another --port, that port in the link)"
    )


def ui_port() -> int:
    """The port `mlflow ui` listens on when not given --port: $MLFLOW_PORT (its click option's
    envvar), else 5000; an MLFLOW_PORT that is no port number is ignored (mlflow ui refuses it)."""
    value = os.environ.get("MLFLOW_PORT", "").strip()
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else 5000
