"""The MLflow store under a Tracker: opened and checked, its schema created one worker at a time,
known races retried, and every failure said in one line (TrackingError).

The store is checked before the caller writes anything: a server must answer within seconds, a
SQLite file must be a writable database. Workers opening a fresh SQLite file at once take turns
creating its schema (a lock on its folder), so neither dies in, or corrupts, MLflow's migrations.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from bench.tracking.layout import EXPERIMENT_TAGS
from bench.core.redact import redact
from bench.core.errors import FoldbenchError

T = TypeVar("T")
HINT = "or pass another --tracking-uri, or --no-mlflow"
PROBE_TIMEOUT_S = 5  # the server check: one request, no retries, this long at most


class TrackingError(FoldbenchError):
    """The MLflow store cannot be reached, read or written."""


# What workers creating one schema at once fail with (SQLite, alembic's version row, Optuna's)
# SQLite: a locked file, a table made twice, a row inserted twice; PostgreSQL (workers creating a
# fresh database's schema at once): `CREATE TYPE`/`CREATE TABLE` of one name (UniqueViolation on
# pg_type, DuplicateObject, DuplicateTable), the version row inserted twice, a DDL deadlock.
RACES = (
    "database is locked",
    "already exists",
    "unique constraint failed",
    "expected to match one row",
    "violates unique constraint",
    "uniqueviolation",
    "duplicateobject",
    "duplicatetable",
    "deadlock detected",
)


def retry_races(fn: Callable[[], T], tries: int = 6, wait_s: float = 0.1) -> T:
    """`fn()`, again after a short random backoff (5 s in all at most) while it fails with a race."""
    for attempt in range(tries - 1):
        try:
            return fn()
        except Exception as e:
            if not any(r in _chain_text(e) for r in RACES):
                raise
        time.sleep(wait_s * 2**attempt * (0.5 + random.random()))
    return fn()


def open_store(uri: str, experiment: str):
    """(MlflowClient, experiment id), the experiment created or restored; TrackingError if unusable."""
    from mlflow.tracking import MlflowClient  # importing mlflow sets its loggers' levels: quiet them after

    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # a failed async write is raised by `Tracker.end` in one line; MLflow's queue would log it too
    logging.getLogger("mlflow.utils.async_logging").setLevel(logging.CRITICAL)
    # and its SQL store logs every failed statement with a traceback before raising it (to us)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    shown = redact(uri)  # in messages: the URI without its password
    if uri.startswith(("http://", "https://")):
        try:
            with _short_requests():
                client = MlflowClient(tracking_uri=uri)
                return client, _experiment(client, experiment)
        except Exception as e:
            text = _chain_text(e)
            if "api request to" in text and "failed with exception" in text:
                raise TrackingError(
                    f"MLflow tracking server {shown} is unreachable ({short_reason(e)}); start it, {HINT}"
                ) from None
            raise TrackingError(
                f"MLflow tracking server {shown} refused the check ({short_reason(e)}); check the server, {HINT}"
            ) from None
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite(uri, path)
    with _folder_lock(path and path.parent):  # one worker at a time creates a fresh file's schema
        existed = path is None or path.exists()
        try:
            client = retry_races(lambda: MlflowClient(tracking_uri=uri))
            # artifacts beside the database, not in whatever folder the command ran from
            artifacts = (path.parent / "mlruns").resolve().as_uri() if path is not None else None
            return client, retry_races(lambda: _experiment(client, experiment, artifacts))
        except Exception as e:
            if not existed:  # leave no half-made database behind (others wait on the lock meanwhile)
                for p in (path, path.with_name(path.name + "-journal")):
                    p.unlink(missing_ok=True)
            raise TrackingError(
                f"MLflow store {shown} cannot be opened ({short_reason(e)}); check it, {HINT}"
            ) from None


def _experiment(client, name: str, artifacts: str | None = None) -> str:
    """The experiment's id, created (its artifacts under `artifacts`, MLflow's choice when None) or
    restored if it was deleted; tagged to open on its runs table (EXPERIMENT_TAGS)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
        except MlflowException as e:  # another worker created it meanwhile
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in EXPERIMENT_TAGS.items():  # an experiment made before, or by MLflow itself
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def _short_requests():
    """MLflow's HTTP settings for one quick check: no retries (not ~4 minutes of them), a short timeout."""
    from unittest import mock  # puts the environment back as it was, whatever happens

    return mock.patch.dict(
        os.environ, {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT_S)}
    )


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///path` URI (relative to the working directory); None for memory."""
    name = uri[len("sqlite:///") :].split("?")[0] if uri.startswith("sqlite:///") else ""
    return None if name in ("", ":memory:") else Path(name)


def _check_sqlite(uri: str, path: Path) -> None:
    """Its folder exists; an existing file is a SQLite database this process may write (nothing kept)."""
    if not path.parent.is_dir():
        raise TrackingError(f"MLflow store {uri}: folder {path.parent} does not exist; create it, {HINT}")
    if not path.exists():
        return
    try:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as e:  # a folder, say
        raise TrackingError(f"MLflow store {uri}: cannot open {path} ({e}); name a file, {HINT}") from None
    try:
        try:
            con.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as e:
            raise TrackingError(
                f"MLflow store {uri}: {path} is not a SQLite database ({e}); move it away, {HINT}"
            ) from None
        try:  # a write that is rolled back: needs the file and its folder (the journal) writable
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE foldbench_write_check (x)")
        except sqlite3.Error as e:
            raise TrackingError(
                f"MLflow store {uri}: {path} is read-only ({e}); make it and its folder writable, {HINT}"
            ) from None
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")
    finally:
        con.close()


@contextmanager
def _folder_lock(folder: Path | None) -> Iterator[None]:
    """An exclusive lock on `folder` (flock on the folder itself: no lock file is left behind)."""
    if folder is None or os.name != "posix":  # elsewhere: no lock; the retries remain
        yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _chain(e: BaseException | None) -> list[BaseException]:
    """The exception and what caused it, outermost first."""
    chain = []
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _chain_text(e: BaseException) -> str:
    """The whole chain as one lowercase string, to recognise a known failure."""
    return " | ".join(f"{type(x).__name__}: {x}" for x in _chain(e)).lower()


REASONS = {
    "connection refused": "connection refused",
    "timed out": "timed out",
    "name or service not known": "unknown host",
    "nodename nor servname": "unknown host",
    "temporary failure in name resolution": "unknown host",
    # MLflow 3 refuses a file store (file:///..., ./mlruns); its hint is past the first line's cut
    "mlflow_allow_file_store": "this MLflow refuses file stores: use sqlite:///<folder>/mlflow.db, "
    "or set MLFLOW_ALLOW_FILE_STORE=true",
}


def short_reason(e: BaseException) -> str:
    """A short reason for people: connection refused, timed out, or the error's first line."""
    text = _chain_text(e)
    for needle, reason in REASONS.items():
        if needle in text:
            return reason
    # SQLAlchemy (possibly wrapped by MLflow): the database driver's own error, without the SQL
    e = next((x.orig for x in _chain(e) if getattr(x, "orig", None) is not None), e)
    line = redact((str(e).strip().splitlines() or [type(e).__name__])[0])
    return line if len(line) <= 200 else line[:200] + "..."
