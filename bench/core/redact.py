"""Credentials out of everything foldbench shows or keeps: one function, used at every outlet.

    redact("postgresql://ann:s3cret@db/optuna")   -> "postgresql://ann:***@db/optuna"
    redact("... host=db password=s3cret user=ann") -> "... host=db password=*** user=ann"

A storage URL (`--storage postgresql://user:password@host/db`) or a tracking URI
(`--tracking-uri http://user:password@host`) may carry a password. foldbench passes the URL as
given to the database driver or MLflow, and shows it only through `redact`: in its messages
(cli.main), in the log lines of every library (`redacting_logs`), in run.json's command line, in
MLflow tags and params (bench.tracking.tracker) and in the config.yaml a run keeps (bench.core.config.dump_yaml).
A leaf module: it imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

MASK = "***"
# scheme://user:password@host: the password runs to the last @ before the host (a URL's own
# password cannot hold an unescaped / or whitespace)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^/\s]*@")
# key=value credentials: a libpq DSN (password=...), a URL's query (?password=...&)
_KEY_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?P<quote>['\"]?)[^\s&'\";,)]+(?P=quote)", re.IGNORECASE
)


def redact(text: object) -> str:
    """`text` (any object: its str) with every URL password and `password=` value replaced by ***."""
    text = str(text)
    if "@" not in text and "=" not in text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KEY_PASSWORD.sub(lambda m: f"{m['head']}{m['quote']}{MASK}{m['quote']}", text)


def is_redacted(url: str | None) -> bool:
    """Whether `url` had its password replaced (a saved URL that cannot log in as it is)."""
    return bool(url) and f":{MASK}@" in url


def _strip_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record's message redacted; a Ctrl-C's traceback left out (the interruption is one line)."""
    try:
        message = record.getMessage()
    except Exception:  # bad arguments: logging reports them itself when the record is emitted
        return record
    record.msg, record.args = redact(message), ()
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        record.exc_info, record.exc_text = None, None
        record.interrupted = True  # for filters that drop an interruption's lines (bench.drivers.tune)
    return record


@contextlib.contextmanager
def redacting_logs() -> Iterator[None]:
    """While inside: every log record of every library (Optuna, MLflow, SQLAlchemy, Ray's driver)
    is made with its message redacted and without a KeyboardInterrupt's traceback."""
    make = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *a, **kw: _strip_record(make(*a, **kw)))
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)
