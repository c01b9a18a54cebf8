"""Every fault of a command ends in one line on stderr and a documented exit status (docs/faults.md),
credentials redacted (bench.core.redact) in it and in every library's log lines:

  0 done; 1 `datasets check` found problems, or a bug (its traceback); 2 a user mistake, refused in
  one line (FoldbenchError.exit_status); 3 the disk (or quota) is full; 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Callable

EXIT_DISK_FULL, EXIT_INTERRUPTED = 3, 130
KEPT = {  # per command: what a stopped run leaves behind, and how to go on
    "kfold": "finished splits are kept; continue with --resume",
    "nested": "finished outer splits and trials are kept; continue with --resume",
    "suite": "finished entries and splits are kept; continue with --resume",
    "tune": "finished trials are kept; run the same command to continue the study",
}
NOTHING_KEPT = "no file is half-written; run the command again"


def after_fault(args: argparse.Namespace | None) -> str:
    """What a stopped command leaves and how to go on, for its one line."""
    return KEPT.get(getattr(args, "command", None), NOTHING_KEPT)


def disk_full_line(e: OSError, args: argparse.Namespace | None) -> str:
    """`error: No space left on device (writing in <folder>): finished splits are kept; ...`."""
    where = f" (writing in {Path(e.filename).resolve()})" if e.filename else ""
    return f"error: {e.strerror or 'No space left on device'}{where}: {after_fault(args)} once space is free"


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (`kill`, a scheduler's stop) ends a job as Ctrl-C does


def run_command(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The command (`args.func`), with its command line recorded (run.json) and SIGTERM taken as
    Ctrl-C; a user mistake is one line (its exit status, 2)."""
    from bench.core.errors import FoldbenchError
    from bench.core.provenance import set_command
    from bench.core.redact import redact

    set_command(sys.argv if argv is None else ["cli.py", *argv])  # what run.json records
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except FoldbenchError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return e.exit_status
    finally:
        set_command(None)


def guarded(parse: Callable[[list[str] | None], argparse.Namespace], argv: list[str] | None) -> int:
    """Parse `argv` and run its command; every fault ends in one line and its exit status."""
    from bench.core.redact import redact, redacting_logs

    args, on_sigint = None, signal.getsignal(signal.SIGINT)
    try:
        args = parse(argv)
        with redacting_logs():
            return run_command(args, argv)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line short
        print(f"\ninterrupted: {after_fault(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `cli.py datasets list | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        from bench.core.atomic import DISK_FULL

        if e.errno not in DISK_FULL:
            return bug(e)
        print(redact(disk_full_line(e, args)), file=sys.stderr)
        return EXIT_DISK_FULL
    except Exception as e:
        return bug(e)
    finally:
        signal.signal(signal.SIGINT, on_sigint)


def bug(e: Exception) -> int:
    """Not a fault foldbench knows: its traceback (credentials redacted), exit 1."""
    import traceback

    from bench.core.redact import redact

    print(redact("".join(traceback.format_exception(e))).rstrip(), file=sys.stderr)
    return 1
