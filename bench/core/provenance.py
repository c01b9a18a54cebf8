"""`run.json`: what was run in a run folder, and when: the command, code version, host and times.

    began = clock()                                                 # when the job starts
    attempt = Attempt.begin(folder.path, resume, code_version(), began)  # once it has its folder
    ...                                                             # train
    attempt.end("finished")                                        # before the report reads it

    runs/<name>/run.json
      command, code_version, foldbench_version, host   of the first attempt (what made the run)
      started, ended, duration_s                       first start, last end, seconds spent running
                                                       (the attempts' durations summed)
      attempts: [{command, code_version, host, started, ended, duration_s, status}, ...]

A resumed job appends an attempt and keeps the first start. An attempt still marked "running" when
the next one begins was killed (kill -9, a power cut): it becomes "interrupted", with no end.
run.json is provenance, not results: no DONE digest covers it (a later attempt rewrites it), so it
carries its own: `digest`, the SHA-256 of the rest. A run.json whose digest does not match (edited,
or written by a foldbench before the digest) is not read: reports say so, a resume starts a new
record and notes that it replaced one it could not trust.
"""

from __future__ import annotations

import shlex
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.core.records import read_record, record_digest
from bench.core.redact import redact

_command: list[str] | None = None  # set by cli.main; otherwise sys.argv


def set_command(argv: list[str] | None) -> None:
    """The command line this process runs (cli.main(argv) from Python: sys.argv is not it);
    None: sys.argv again."""
    global _command
    _command = None if argv is None else list(argv)


def command_line() -> str:
    """The command as typed: `python cli.py kfold ...` (shlex-quoted, so it can be pasted), with the
    password of a --storage or --tracking-uri URL replaced by *** (`redact`)."""
    argv = list(_command if _command is not None else sys.argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(redact(a) for a in argv)


def foldbench_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("foldbench")
    except PackageNotFoundError:
        return None


def now() -> str:
    """Local time with its UTC offset, to the second: `2026-01-31T14:05:09+01:00`."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


__all__ = ["Attempt", "clock", "command_line", "read_run_json", "record_digest", "run_json_state", "set_command"]


def read_run_json(run_dir) -> dict:
    """run.json as a dict, or {} when the run has none (made before run.json), it is unreadable, or
    its digest does not vouch for it (`run_json_state` tells which; one without a digest: unverified)."""
    record, state = read_record(Path(run_dir) / "run.json")
    return record if state == "ok" else {}


def run_json_state(run_dir) -> str:
    """'missing', 'unverified' (there, but its digest does not match, or it has none) or 'ok'."""
    state = read_record(Path(run_dir) / "run.json")[1]
    return "unverified" if state == "undigested" else state


def clock() -> tuple[str, float]:
    """When a job starts (before it loads its data): pass it to `Attempt.begin`."""
    return now(), time.monotonic()


class Attempt:
    """One job's entry in run.json: written when it has its folder, rewritten when it ends."""

    def __init__(self, run_dir: Path, record: dict, index: int, t0: float):
        from bench.core.runfolder import RunFolder  # here: the CLI imports this module before pandas

        self.folder, self.record, self.index, self._t0 = RunFolder(run_dir), record, index, t0

    @classmethod
    def begin(
        cls,
        run_dir,
        resume: bool,
        code_version: str,
        started: tuple[str, float] | None = None,
        threads: str | None = None,
    ) -> "Attempt":
        """`started`: the job's `clock()` at its start (default: now); `threads`: the torch thread
        setup (results can differ in the last bits between thread counts: --threads N repeats it)."""
        started = started or clock()
        old = read_run_json(run_dir) if resume else {}
        replaced = resume and run_json_state(run_dir) == "unverified"
        attempts = [a for a in old.get("attempts", []) if isinstance(a, dict)]
        for a in attempts:
            if a.get("status") == "running":
                a["status"] = "interrupted"  # its process died without ending it
        this = {
            "command": command_line(),
            "code_version": code_version,
            "foldbench_version": foldbench_version(),
            "host": socket.gethostname(),
            "started": started[0],
            "ended": None,
            "duration_s": None,
            "status": "running",
        }
        if threads:
            this["threads"] = threads
        attempts.append(this)
        first = attempts[0]
        record = {k: first.get(k) for k in ("command", "code_version", "foldbench_version", "host")}
        record.update(started=first.get("started"), ended=None, duration_s=None, attempts=attempts)
        if replaced:
            record["replaced"] = "an earlier run.json whose digest did not match was not read"
        attempt = cls(run_dir, record, len(attempts) - 1, started[1])
        attempt._write()
        return attempt

    def note(self, **fields) -> None:
        """More about this attempt (the threads Ray tasks trained with), written now."""
        self.record["attempts"][self.index].update(fields)
        self._write()

    def end(self, status: str) -> None:
        """Record the end (again: a later call, e.g. a report that failed, replaces it)."""
        this = self.record["attempts"][self.index]
        this.update(ended=now(), duration_s=round(time.monotonic() - self._t0, 1), status=status.lower())
        spent = [a["duration_s"] for a in self.record["attempts"] if isinstance(a.get("duration_s"), (int, float))]
        self.record.update(ended=this["ended"], duration_s=round(sum(spent), 1))
        self._write()

    def _write(self) -> None:
        self.folder.write_record("run.json", self.record)
