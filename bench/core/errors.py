"""One base class for what foldbench explains in one line (bad input or settings: a message for
people and the exit status the CLI returns), as opposed to a bug (a traceback). A leaf module: it
imports nothing of foldbench, and every layer's errors derive from `FoldbenchError`.

    class CacheError(FoldbenchError, RuntimeError): ...   # in bench/data/cache.py
    except FoldbenchError as e: print(f"error: {e}"); return e.exit_status   # cli.main
"""


class FoldbenchError(Exception):
    """A fault the user can act on: its message says what is wrong and how to fix it."""

    exit_status = 2  # refused before anything is written (docs/faults.md lists every status)


USER_ERRORS = (FoldbenchError,)  # what the CLI (and `datasets check`) turn into one line
