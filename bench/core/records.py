"""The run folder's JSON files and digests: read leniently, write atomically, self-digested records.

`RunFolder` (bench/core/runfolder.py, where the layout is described) writes every file of a run
folder through these; they know nothing of the layout themselves.

A *record* is a JSON file that no DONE digest covers because a later job rewrites it (run.json,
search.json): it carries its own `digest`, the SHA-256 of the rest, and one whose digest does not
match is not trusted (`read_record` says which of 'missing', 'unverified', 'undigested', 'ok').
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.core.atomic import atomic_write_text

# What of plan.json a DONE vouches for: all of it (DONE's "seal": 2), or, for a DONE written before
# every field was (no "seal"), these keys only; `RunFolder.vouched_plan` then shows readers no other field.
PLAN_KEYS = ("protocol", "leaky", "leak_reason", "splits")
SEAL = 2
# model.pt: the chosen weights and what using them needs (bench/train/predict.py), for splits that score a
# test fold. Runs made before it have no model.pt and none in their DONE: they still verify.
SPLIT_FILES = ("predictions.csv", "history.csv", "split.json", "confusion_counts.csv", "model.pt")


def fold_column(repeat: int) -> str:
    """folds.csv's column of repeat `repeat`'s fold ids: `fold` (repeat 1, as before repeats), `fold_<r>`."""
    return "fold" if repeat == 1 else f"fold_{repeat}"


def plan_view(plan: dict, seal: int | None = SEAL) -> dict:
    """What of plan.json a DONE vouches for: every field (seal 2), or PLAN_KEYS (an older DONE), where
    a split's `repeat` of 1 is left out, as plan.json had no repeats before repeated CV (so the
    digests of those runs still hold)."""
    if seal == SEAL:
        return dict(plan)
    view = {k: plan.get(k) for k in PLAN_KEYS}
    if isinstance(view["splits"], list):
        view["splits"] = [
            {k: v for k, v in s.items() if not (k == "repeat" and v == 1)} if isinstance(s, dict) else s
            for s in view["splits"]
        ]
    return view


def read_json(path: Path) -> dict:
    """A JSON object, or {} when the file is absent, unreadable or holds something else."""
    try:
        data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, obj, indent: int | None = None) -> None:
    """`obj` as JSON (one line unless `indent`; what JSON lacks as its str), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_digest(record: dict) -> str:
    """The SHA-256 a record carries as `digest`: of every other field."""
    body = {k: v for k, v in record.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_record(path: Path, record: dict) -> dict:
    """`record` with its `digest` (set in `record` too), as indented JSON; returns it."""
    record["digest"] = record_digest(record)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def read_record(path: Path) -> tuple[dict, str]:
    """A record and its state: ({}, 'missing'), ({}, 'unverified') (unreadable, or its digest does
    not match), (body, 'undigested') (no digest: written before records had one; the caller decides)
    or (body without the digest, 'ok')."""
    path = Path(path)
    if not path.is_file():
        return {}, "missing"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, "unverified"
    if not isinstance(data, dict):
        return {}, "unverified"
    if "digest" not in data:
        return data, "undigested"
    if data["digest"] != record_digest(data):
        return {}, "unverified"
    return {k: v for k, v in data.items() if k != "digest"}, "ok"
