"""A thin MLflow wrapper: explicit run ids, no global active run, nothing when MLflow is off.

Runs nest through MLflow's `mlflow.parentRunId` tag, so the UI shows a kfold job with its splits
under it, and a tune trial with its splits under it. Training code never imports this module.

The store is opened and checked when a Tracker is built, before the caller writes anything
(`bench.tracking.store`: a server must answer within seconds, a SQLite file must be a writable
database, workers take turns creating a fresh file's schema). Every later store failure is a
TrackingError too (one line).

Per-epoch metrics go asynchronously (`log_metrics(..., asynchronous=True)`: MLflow's async queue),
so a slow server never holds up training; `end` waits for a run's pending writes first, and a write
that failed there is the same one-line TrackingError. What is logged (params, tags, the dataset
input, the experiment's view) is `bench.tracking.layout`'s.
"""

from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.core.config import TrackingConfig
from bench.tracking.layout import standard_tags
from bench.tracking.store import HINT, TrackingError, open_store, short_reason

# re-exported: imported from here by callers that predate bench.tracking.store
from bench.tracking.store import retry_races as retry_races, sqlite_path as sqlite_path
from bench.core.redact import redact

# MLflow writes "View run ... at: <url>" to stdout for every run ended on a server: a line per split
# and trial, between foldbench's own lines. The links foldbench prints are enough.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class Tracker:
    """`Tracker(cfg, experiment)`; every method is a no-op when `cfg.mlflow` is False.

    Raises TrackingError when MLflow is on and the store is unreachable, not a database or read-only.
    """

    def __init__(self, cfg: TrackingConfig, experiment: str):
        self.enabled = cfg.mlflow
        self.experiment = cfg.experiment or experiment
        self.uri = cfg.tracking_uri
        self.tags: dict[str, Any] = {}  # added to every run this tracker starts (see `tagged`)
        self._pending: dict[str, list] = {}  # run id -> its async writes not yet waited for
        if self.enabled:
            self.client, self.experiment_id = open_store(self.uri, self.experiment)

    def tagged(self, tags: dict[str, Any]) -> "Tracker":
        """A tracker on the same store that adds `tags` to every run it starts (tune: study, trial)."""
        other = copy.copy(self)
        other.tags = {**self.tags, **tags}
        return other

    def _call(self, what: str, method: str, *args, **kw) -> Any:
        """The one door to the store: any failure becomes a one-line TrackingError."""
        try:
            return getattr(self.client, method)(*args, **kw)
        except Exception as e:
            raise self._error(what, e) from e

    def _error(self, what: str, e: Exception) -> TrackingError:
        return TrackingError(
            f"MLflow store {redact(self.uri)}: cannot {what} ({short_reason(e)}); check the store, {HINT}"
        )

    def start(
        self,
        name: str,
        params: dict | None = None,
        tags: dict | None = None,
        parent: str | None = None,
        run_id: str | None = None,
    ) -> str | None:
        """A new run (nested under `parent`), or the existing `run_id` reopened; returns its id."""
        if not self.enabled:
            return None
        if run_id and self._exists(run_id):
            self._call("reopen a run", "update_run", run_id, status="RUNNING")
        else:
            all_tags = {**standard_tags(), "mlflow.runName": name, **self.tags, **(tags or {})}
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            run_id = self._call(
                "create a run", "create_run", self.experiment_id, tags=_strings(all_tags), run_name=name
            ).info.run_id
            self.log_params(run_id, params or {})
        return run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except Exception as e:
            if isinstance(e, MlflowException) and e.error_code in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
            ):
                return False  # an id this store does not know: start a fresh run instead
            raise self._error("read a run", e) from e

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Wait for the run's async writes (a failed one is a TrackingError), then close it."""
        if self.enabled and run_id:
            self.flush(run_id)
            self._call("end a run", "set_terminated", run_id, status=status)

    def flush(self, run_id: str | None = None) -> None:
        """Wait for the async writes of `run_id` (of every run when None); the first that failed
        is raised as a TrackingError."""
        for rid in [run_id] if run_id else list(self._pending):
            for ops in self._pending.pop(rid, []):
                for future in getattr(ops, "_operation_futures", None) or []:
                    try:
                        future.result()
                    except Exception as e:
                        raise self._error("log metrics", e) from e

    @contextmanager
    def run(self, name: str, **kw) -> Iterator[str | None]:
        """`start` ... `end`; an exception ends the run FAILED (KILLED for Ctrl-C) and propagates."""
        run_id = self.start(name, **kw)
        try:
            yield run_id
        except BaseException as e:
            try:
                self.end(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            except TrackingError:
                if not isinstance(e, TrackingError):
                    raise
            raise
        self.end(run_id)

    def log_params(self, run_id: str | None, params: dict[str, Any]) -> None:
        if self.enabled and run_id and params:
            from mlflow.entities import Param

            self._call("log params", "log_batch", run_id, params=[Param(k, v) for k, v in _strings(params).items()])

    def set_tags(self, run_id: str | None, tags: dict[str, Any]) -> None:
        if self.enabled and run_id:
            from mlflow.entities import RunTag

            self._call("set tags", "log_batch", run_id, tags=[RunTag(k, v) for k, v in _strings(tags).items()])

    def log_metrics(
        self, run_id: str | None, metrics: dict[str, float | None], step: int = 0, asynchronous: bool = False
    ) -> None:
        """Finite values only. `asynchronous`: queued (per-epoch metrics), waited for by `end`."""
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        if rows and asynchronous:
            ops = self._call("log metrics", "log_batch", run_id, metrics=rows, synchronous=False)
            self._pending.setdefault(run_id, []).append(ops)
        elif rows:
            self._call("log metrics", "log_batch", run_id, metrics=rows, synchronous=True)

    def log_series(self, run_id: str | None, key: str, values: dict[int, float | None]) -> None:
        """One metric at several steps in one write (the parent's `acc_fold`, step = split)."""
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [
            Metric(key, float(v), now, int(step))
            for step, v in sorted(values.items())
            if v is not None and math.isfinite(float(v))
        ]
        if rows:
            self._call("log metrics", "log_batch", run_id, metrics=rows, synchronous=True)

    def log_inputs(self, run_id: str | None, inputs: Callable[[], list]) -> None:
        """MLflow dataset inputs, built by `inputs()` only when MLflow is on."""
        if self.enabled and run_id:
            self._call("log the dataset", "log_inputs", run_id, datasets=inputs())

    def log_files(self, run_id: str | None, paths: list[Path], folder: str | None = None) -> None:
        if self.enabled and run_id:
            for path in paths:
                if Path(path).is_file():
                    self._call(f"log {Path(path).name}", "log_artifact", run_id, str(path), folder)

    # ---- resuming after a killed job: close what it left RUNNING, reuse a split's run ----

    def _children(self, parent: str) -> list:
        """The runs whose `mlflow.parentRunId` is `parent`, newest first (every page)."""
        found, page = [], None
        while page is None or page.token:
            page = self._call(
                "search runs",
                "search_runs",
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=page and page.token,
            )
            found += page
        return found

    def close_running(self, parent_run_id: str | None, status: str = "KILLED") -> int:
        """End every run nested under `parent_run_id` (at any depth) still RUNNING; how many.

        Call it when a job resumes, after reopening its parent run, before starting any split."""
        if not (self.enabled and parent_run_id):
            return 0
        closed, todo = 0, [parent_run_id]
        while todo:
            for run in self._children(todo.pop()):
                todo.append(run.info.run_id)
                if run.info.status == "RUNNING":
                    self.end(run.info.run_id, status)
                    closed += 1
        return closed

    def delete(self, run_id: str | None) -> None:
        """Delete a run (MLflow's soft delete: it leaves the UI and searches)."""
        if self.enabled and run_id:
            self._call("delete a run", "delete_run", run_id)

    def finished(self, run_id: str | None) -> bool:
        """Whether the run ended FINISHED (a split run a killed job left KILLED is not)."""
        return bool(self.enabled and run_id and self._call("read a run", "get_run", run_id).info.status == "FINISHED")

    def child_run(self, parent: str | None, name: str, tags_to_match: dict[str, Any]) -> str | None:
        """The newest run under `parent` called `name` whose tags include `tags_to_match`, or None.

        Reopen it with `start(name, ..., run_id=...)` so a resumed split keeps its one run."""
        if not (self.enabled and parent):
            return None
        want = {"mlflow.runName": name, **_strings(tags_to_match)}
        for run in self._children(parent):
            if all(run.data.tags.get(k) == v for k, v in want.items()):
                return run.info.run_id
        return None

    def log_model(
        self, run_id: str | None, path: Path, name: str, params: dict[str, Any] | None = None, step: int = 0
    ) -> str | None:
        """The file `path` (a split's model.pt) as an MLflow 3 LoggedModel produced by `run_id`: it
        shows in that run's Models column. Client calls only (`mlflow.pytorch.log_model` needs a
        fluent active run, pickles the module and resolves a pip environment: seconds per split).
        Returns the model id; nothing when MLflow is off or the file is absent."""
        if not (self.enabled and run_id and Path(path).is_file()):
            return None
        from mlflow.entities import LoggedModelOutput

        model = self._call(
            "create a logged model",
            "create_logged_model",
            self.experiment_id,
            name=name,
            source_run_id=run_id,
            params=_strings(params or {}),
            model_type="foldbench",
            tags={"format": "torch state_dict + normalisation (foldbench predict)"},
        )
        self._call("log a model output", "log_outputs", run_id, [LoggedModelOutput(model.model_id, step)])
        self._call(f"log {Path(path).name}", "log_model_artifact", model.model_id, str(path))
        self._call("finalize a logged model", "finalize_logged_model", model.model_id, "READY")
        return model.model_id


def _strings(d: dict[str, Any]) -> dict[str, str]:
    """Tag and param values as MLflow keeps them: strings, with any URL's password redacted."""
    return {k: redact(v) for k, v in d.items()}
