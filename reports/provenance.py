"""The report's first section, "What was run": data, protocol, settings, command, code, times.

Read from the run folder only: plan.json (dataset fingerprint, protocol, repeats, the planned
splits), config.yaml (the settings that decide results, `bench.core.runfolder.result_view`: the ones
every DONE digest vouches for) and run.json (command, code version, host, start and duration,
`bench.core.provenance`). A run made before run.json existed says so instead of guessing.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from bench.core.provenance import read_run_json, run_json_state
from bench.core.runfolder import saved_result_view
from reports.document import Block, Heading, Note, Table

SECTIONS = ("audio", "features", "augment", "model", "train")  # settings tables, in this order
VALIDATION = {"next": "fold k+1 chooses the epoch", "none": "none (the last epoch is kept)"}


def settings(run_dir) -> dict[str, dict]:
    """config.yaml's result settings grouped by section: {"features": {"n_mels": 64, ...}, ...}."""
    grouped: dict[str, dict] = {}
    for key, value in saved_result_view(run_dir).items():
        section, _, name = key.partition(".")
        grouped.setdefault(section, {})[name or section] = value
    return grouped


def duration_text(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    s = int(round(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _when(stamp) -> str:
    """`2026-01-31 14:05:09+01:00` from run.json's ISO time (as written, if it does not parse)."""
    try:
        t = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    return t.isoformat(sep=" ")


def _attempt_text(a: dict) -> str:
    status = a.get("status")
    if status == "running":
        return (
            f"started {_when(a.get('started'))}; no end recorded (still running when this report "
            f"was written, or killed)"
        )
    end = f", {status}" if status and status != "finished" else ""
    threads = f"; {a['threads']}" if isinstance(a.get("threads"), str) else ""  # results differ by thread count
    return f"started {_when(a.get('started'))}, took {duration_text(a.get('duration_s'))}{end}{threads}"


def _protocol_text(plan: dict, val) -> str:
    text = f"`{plan['protocol']}`" if plan.get("protocol") else "–"
    if plan.get("leaky"):
        text += " (**LEAKY**)"
    if val in VALIDATION:
        text += f"; validation: {VALIDATION[val]}"
    repeats = int(plan.get("repeats") or 1)
    if repeats > 1:
        vary = {"folds": "reshuffled folds", "seed": "training seeds"}.get(
            plan.get("repeats_vary"), plan.get("repeats_vary")
        )
        text += f"; {repeats} repeats ({vary})"
    return text


def _value(v) -> str:
    return "none" if v is None else str(v)


def _enclosing_run(run_dir) -> Path | None:
    """The run folder (with a run.json) that holds `run_dir` within two levels (a nested run's
    non-nested/kfold), or None."""
    for parent in list(Path(run_dir).resolve().parents)[:2]:
        if (parent / "run.json").is_file() and (parent / "config.yaml").is_file():
            return parent
    return None


def what_was_run(run_dir, plan: dict, asked: list[int], nested: bool) -> list[Block]:
    """The "What was run" section of report.md / report.html."""
    grouped = settings(run_dir)
    run = read_run_json(run_dir)
    dataset = grouped.get("dataset", {})
    data = f"**{dataset.get('name', '?')}**"
    if plan.get("dataset_fingerprint"):
        data += f", fingerprint `{plan['dataset_fingerprint']}`"
    if plan.get("n_clips") is not None:
        data += f", {plan['n_clips']} clips" + (
            f" ({plan['left_out']} left out by the protocol)" if plan.get("left_out") else ""
        )
    planned = plan.get("splits") or []
    chosen = grouped.get("splits", {}).get("splits")
    splits = (
        f"{len(asked)} of {len(planned)} planned: {', '.join(map(str, asked))} (`--splits`)"
        if chosen
        else f"all {len(asked)}"
    )
    rows = [
        ["dataset", data],
        ["protocol", _protocol_text(plan, grouped.get("protocol", {}).get("val"))],
        ["splits", splits],
    ]
    if run:
        attempts = run.get("attempts")  # unverified provenance: entries that are not records are skipped
        attempts = [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []
        version = f"`{run.get('code_version') or 'unknown'}`"
        if run.get("foldbench_version"):
            version += f" (foldbench {run['foldbench_version']})"
        rows += [
            ["command", f"`{run.get('command', '?')}`"],
            ["code version", version],
            ["host", str(run.get("host") or "?")],
        ]
        if len(attempts) <= 1:
            rows.append(["time", _attempt_text(attempts[0]) if attempts else _when(run.get("started"))])
        else:
            rows.append(
                [
                    "time",
                    f"started {_when(run.get('started'))}; {len(attempts)} attempts, "
                    f"{duration_text(run.get('duration_s'))} in all",
                ]
            )
            rows += [
                [f"attempt {i}", f"{_attempt_text(a)}: `{a.get('command', '?')}`"]
                for i, a in enumerate(attempts, start=1)
            ]
    elif (outer := _enclosing_run(run_dir)) is not None:  # nested's non-nested/kfold: no run.json of its own
        rows.append(["command", f"recorded by the run this one is part of: {outer / 'run.json'}"])
    elif run_json_state(run_dir) == "unverified":
        rows.append(
            [
                "command",
                "not shown: run.json does not match its digest (edited, or written by "
                "a foldbench before run.json had one)",
            ]
        )
    else:
        rows.append(["command", "not recorded (run.json is missing: a run made before foldbench wrote it)"])
    doc: list[Block] = [Heading(2, "What was run"), Table(["", "value"], rows)]
    if nested:
        doc.append(
            Note(
                "The outer splits of a nested run: each split trained the settings its inner "
                "search chose (split.json `chosen`; the table in [nested.md](nested.md)). The "
                "settings below are the base the searches started from."
            )
        )
    table = [[s, ", ".join(f"{k}={_value(v)}" for k, v in grouped[s].items())] for s in SECTIONS if grouped.get(s)]
    if table:
        doc += [Heading(3, "Settings that decide the results (config.yaml)"), Table(["section", "settings"], table)]
    return doc
