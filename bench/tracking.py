"""A thin MLflow wrapper: explicit run ids, no global active run, nothing when MLflow is off.

Runs nest through MLflow's `mlflow.parentRunId` tag, so the UI shows a kfold job with its splits
under it, and a tune trial with its splits under it. Training code never imports this module.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import TrackingConfig


class Tracker:
    """`Tracker(cfg, experiment)`; every method is a no-op when `cfg.mlflow` is False."""

    def __init__(self, cfg: TrackingConfig, experiment: str):
        self.enabled = cfg.mlflow
        self.experiment = cfg.experiment or experiment
        self.uri = cfg.tracking_uri
        self.tags: dict[str, Any] = {}  # added to every run this tracker starts (see `tagged`)
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient  # importing mlflow sets its loggers' levels: quiet them after
        for noisy in ("alembic", "mlflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)

    def tagged(self, tags: dict[str, Any]) -> "Tracker":
        """A tracker on the same store that adds `tags` to every run it starts (tune: study, trial)."""
        other = copy.copy(self)
        other.tags = {**self.tags, **tags}
        return other

    def start(self, name: str, params: dict | None = None, tags: dict | None = None,
              parent: str | None = None, run_id: str | None = None) -> str | None:
        """A new run (nested under `parent`), or the existing `run_id` reopened; returns its id."""
        if not self.enabled:
            return None
        if run_id and self._exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {"mlflow.runName": name, **self.tags, **(tags or {})}
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            run_id = self.client.create_run(self.experiment_id, tags=_strings(all_tags),
                                            run_name=name).info.run_id
            self.log_params(run_id, params or {})
        return run_id

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except Exception:  # unknown id in this store: start a fresh run instead
            return False

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id:
            self.client.set_terminated(run_id, status=status)

    @contextmanager
    def run(self, name: str, **kw) -> Iterator[str | None]:
        """`start` ... `end`; an exception ends the run FAILED (KILLED for Ctrl-C) and propagates."""
        run_id = self.start(name, **kw)
        try:
            yield run_id
        except BaseException as e:
            self.end(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        self.end(run_id)

    def child_run(self, parent: str | None, tags: dict[str, str]) -> str | None:
        """An existing run nested under `parent` whose tags match `tags` (a split's run, on resume)."""
        if not (self.enabled and parent):
            return None
        query = " and ".join([f"tags.mlflow.parentRunId = '{parent}'"]
                             + [f"tags.{k} = '{v}'" for k, v in tags.items()])
        found = self.client.search_runs([self.experiment_id], query, max_results=1)
        return found[0].info.run_id if found else None

    def close_running(self, parent: str | None, status: str = "KILLED") -> int:
        """End the runs under `parent` (recursively) that a killed job left RUNNING; how many."""
        if not (self.enabled and parent):
            return 0
        closed = 0
        for run in self.client.search_runs([self.experiment_id],
                                           f"tags.mlflow.parentRunId = '{parent}'"):
            closed += self.close_running(run.info.run_id, status)
            if run.info.status == "RUNNING":
                self.end(run.info.run_id, status)
                closed += 1
        return closed

    def log_params(self, run_id: str | None, params: dict[str, Any]) -> None:
        if self.enabled and run_id and params:
            from mlflow.entities import Param
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, run_id: str | None, tags: dict[str, Any]) -> None:
        if self.enabled and run_id:
            from mlflow.entities import RunTag
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in _strings(tags).items()])

    def log_metrics(self, run_id: str | None, metrics: dict[str, float | None], step: int = 0) -> None:
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
                if v is not None and math.isfinite(float(v))]
        if rows:
            self.client.log_batch(run_id, metrics=rows)

    def log_files(self, run_id: str | None, paths: list[Path], folder: str | None = None) -> None:
        if self.enabled and run_id:
            for path in paths:
                if Path(path).is_file():
                    self.client.log_artifact(run_id, str(path), folder)


def _strings(d: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in d.items()}
