"""`datasets check`: what is in a dataset and what would make a kfold run on it wrong (and
`datasets list`: the kinds and protocols).

Every file is decoded once, into the waveform cache that kfold then reuses: files that cannot be
used (missing, empty, undecodable, silent, non-finite: kfold quarantines them) and identical audio
(a hash of the cached samples, as kfold sees them) come from there; very short or very long files
and the mix of sample rates, channel counts and formats come from the file headers.
Structural problems of the layout and the metadata (an empty class folder, a link leaving the
root, a metadata row with a fold kfold refuses or a classID that contradicts another row, one file
reached from two rows) are all listed, in one pass: the loader leaves those entries out and the
rest is checked. Then the fold plan kfold would use (`protocols.plan.make_plan`, the same code), over
every clip as kfold checks it before decoding and over the usable clips: clips per class and fold,
copies of one recording in two folds or under two labels, groups in two folds.

A finding is an `error` when the kfold run would be refused or wrong (a structural problem,
leakage, conflicting labels, a plan that cannot be built), a `warning` when kfold goes on but sets
something aside or pads/trims a lot, and
`info` otherwise. `datasets check` exits 1 when there is an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import soundfile as sf

from protocols import ProtocolError
from protocols.checks import check_groups

from bench.data.cache import Waveforms, load_waveforms
from bench.core.config import RunConfig
from bench.data.datasets import Dataset, DatasetError, create_dataset
from bench.core.errors import USER_ERRORS
from protocols.plan import copies_across_folds, duplicate_sets, label_conflicts, make_plan, protocol_name
from bench.drivers.prepare import check_config, prepare

SHORT, LONG = 0.25, 4.0  # very short / very long: under a quarter / over four times the median
PROBLEMS = {  # BadAudio message prefix -> check name
    "file not found": "missing",
    "empty file": "empty",
    "no audio frames": "empty",
    "cannot decode": "undecodable",
    "non-finite": "non-finite",
    "silent": "silent",
    "truncated": "truncated",
    "not a regular file": "not-a-file",
}


@dataclass
class Finding:
    level: str  # "error", "warning" or "info"
    check: str  # short name: undecodable, duplicate-across-folds, groups-cross-folds, ...
    message: str
    clips: list[str] = field(default_factory=list)  # the clips concerned (at most 20)


@dataclass
class CheckResult:
    dataset: str
    root: str
    n_clips: int
    classes: list[str]
    protocol: str
    counts: pd.DataFrame  # clips per class (rows) and fold (columns); one "clips" column without a plan
    formats: dict[str, dict[str, int]]  # sample_rate / channels / format -> value -> clips
    durations: dict[str, float]  # min, median, max (seconds)
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "n_clips": self.n_clips,
            "classes": self.classes,
            "protocol": self.protocol,
            "ok": self.ok,
            "counts": {str(c): {str(k): int(v) for k, v in row.items()} for c, row in self.counts.iterrows()},
            "formats": self.formats,
            "durations": self.durations,
            "findings": [asdict(f) for f in self.findings],
        }


def file_header(path: str, reason: str | None = None) -> dict:
    """Sample rate, channels, format and duration from the file's header (no decoding); nothing
    for a file the cache set aside as not a regular file (a FIFO would block the read)."""
    try:
        if reason and reason.startswith("not a regular file"):
            raise ValueError(reason)
        info = sf.info(path)
        return {
            "sample_rate": info.samplerate,
            "channels": info.channels,
            "format": f"{info.format} {info.subtype}",
            "duration": info.frames / info.samplerate,
        }
    except Exception:  # noqa: BLE001  the waveform cache says why the file cannot be used
        return {"sample_rate": None, "channels": None, "format": None, "duration": np.nan}


def _problem(reason: str | None) -> str | None:
    if reason is None:
        return None
    return next((name for prefix, name in PROBLEMS.items() if reason.startswith(prefix)), "undecodable")


def scan_audio(dataset: Dataset, waves: Waveforms) -> pd.DataFrame:
    """Per clip, in manifest order: its header, and from the waveform cache (built by the caller,
    then reused by kfold, so each file is decoded once) the problem that sets it aside and a hash
    of its samples."""
    reasons = dict(zip(waves.quarantine["index"].astype(int), waves.quarantine["reason"]))
    rows = [
        {
            **file_header(path, reasons.get(i)),
            "reason": reasons.get(i),
            "problem": _problem(reasons.get(i)),
            "hash": waves.hashes[i],
        }
        for i, path in enumerate(dataset.table["path"])
    ]
    scan = pd.DataFrame(rows)
    return pd.concat([dataset.table[["clip", "class"]].reset_index(drop=True), scan], axis=1)


def _clips(df: pd.DataFrame) -> list[str]:
    return df["clip"].head(20).tolist()


def _examples(clips: list[str], n: int = 3) -> str:
    return ", ".join(clips[:n]) + (" ..." if len(clips) > n else "")


def file_findings(scan: pd.DataFrame, strict: bool) -> list[Finding]:
    out = []
    for problem, df in scan[scan["problem"].notna()].groupby("problem", sort=True):
        level = "error" if strict else "warning"
        out.append(
            Finding(
                level,
                problem,
                f"{len(df)} file(s) {problem}: kfold "
                f"{'stops (--strict)' if strict else 'quarantines them'}: "
                + "; ".join(f"{c}: {r}" for c, r in zip(df["clip"].head(3), df["reason"].head(3))),
                _clips(df),
            )
        )
    durations = scan.loc[scan["problem"].isna(), "duration"]
    if len(durations):
        median = float(durations.median())
        for name, mask, what in (
            ("very-short", scan["duration"] < SHORT * median, f"under {SHORT * median:.2f} s"),
            ("very-long", scan["duration"] > LONG * median, f"over {LONG * median:.2f} s"),
        ):
            df = scan[mask & scan["problem"].isna()]
            if len(df):
                out.append(
                    Finding(
                        "warning",
                        name,
                        f"{len(df)} clip(s) {what} (median {median:.2f} s): {_examples(df['clip'].tolist())}",
                        _clips(df),
                    )
                )
    return out


def _plan_refused(cfg: RunConfig, dataset: Dataset) -> str | None:
    """What kfold's check before decoding (the plan over every clip) refuses, or None."""
    try:
        make_plan(cfg, dataset, np.ones(len(dataset.table), dtype=bool))
    except (ProtocolError, DatasetError) as e:
        return str(e)
    return None


def _kfold_refuses(cfg: RunConfig, dataset: Dataset, waves: Waveforms) -> str | None:
    """kfold's own checks (`prepare`, on the manifest and cache already loaded), so that check never
    says "ready" where kfold refuses; the message, or None."""
    try:
        prepare(cfg, progress=False, tracking=False, dataset=dataset, waves=waves)
    except USER_ERRORS as e:
        return str(e)
    return None


def check_dataset(cfg: RunConfig, progress: bool = True) -> CheckResult:
    """Load, decode and plan `cfg`'s dataset; every finding, none raised (loader errors that leave
    nothing to check excepted: no root, no metadata, a missing column, bad group settings)."""
    check_config(cfg)  # a config mistake is refused as kfold refuses it
    problems: list[str] = []
    dataset = create_dataset(cfg.dataset, cfg.cache_dir, problems)
    findings = [Finding("error", "structure", problem) for problem in problems]
    name = protocol_name(cfg, dataset)
    refused = _plan_refused(cfg, dataset)
    if refused:
        findings.append(Finding("error", "plan", f"protocol {name}: {refused}"))
    waves = load_waveforms(dataset, cfg.audio, cfg.cache_dir, progress=progress)
    scan = scan_audio(dataset, waves)
    findings += [Finding("info", "skipped", note) for note in dataset.notes]
    findings += file_findings(scan, cfg.dataset.strict)
    ok = scan["problem"].isna().to_numpy()
    protocol, counts, folds, dups = _usable_plan(cfg, dataset, scan, ok, name, refused, findings)
    findings += duplicate_findings(dups, folds)
    if not any(f.level == "error" for f in findings):
        refusal = _kfold_refuses(cfg, dataset, waves)
        if refusal:
            findings.append(Finding("error", "kfold", f"kfold would refuse this dataset: {refusal}"))
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.level])
    return CheckResult(
        dataset.name,
        str(dataset.root),
        len(dataset.table),
        dataset.classes,
        protocol,
        counts,
        _formats(scan),
        _durations(scan[ok]),
        findings,
    )


def _usable_plan(cfg: RunConfig, dataset: Dataset, scan, ok, name: str, refused: str | None, findings: list):
    """The fold plan of protocol `name` over the usable clips (`ok`), as kfold makes it: (protocol,
    clips per class and fold, the clips' folds or None without a plan, the sets of identical audio).
    Its findings (clips left out, groups across folds, a refusal not already `refused`) are added
    to `findings`."""
    try:
        plan = make_plan(cfg, dataset, ok, scan["hash"].to_numpy())
        protocol, table, folds, dups = repr(plan.protocol), plan.table, plan.folds, plan.duplicates
        if plan.repeats > 1:
            protocol += (
                f", {plan.repeats} repeats (vary: "
                f"{'fold assignment' if plan.repeats_vary == 'folds' else 'training seed only'})"
            )
        counts = pd.crosstab(table["class"], pd.Series(folds, name="fold")).reindex(dataset.classes, fill_value=0)
        if plan.left_out:
            findings.append(
                Finding(
                    "info",
                    "left-out",
                    f"protocol {name} leaves out {len(plan.left_out)} "
                    f"clip(s) in none of its lists: {_examples(plan.left_out)}",
                    plan.left_out[:20],
                )
            )
        shuffled = plan.repeat_folds if plan.protocol.reshufflable else [plan.folds]  # fixed: once
        for r, repeat_folds in enumerate(shuffled, start=1):  # the table shows repeat 1's folds
            for warning in check_groups(table, repeat_folds):
                findings.append(Finding("error", "groups-cross-folds", warning if r == 1 else f"repeat {r}: {warning}"))
    except (ProtocolError, DatasetError) as e:
        protocol, folds = name, None
        if str(e) != refused:
            findings.append(Finding("error", "plan", f"protocol {name}: {e}"))
        table = dataset.table[ok].reset_index(drop=True)
        dups = duplicate_sets(table, None, scan["hash"][ok].to_numpy())
        counts = table.groupby("class").size().reindex(dataset.classes, fill_value=0).to_frame("clips")
    return protocol, counts, folds, dups


def duplicate_findings(dups: pd.DataFrame, folds) -> list[Finding]:
    """Identical audio: under two labels, in two folds (`folds`: None without a plan), or else a warning."""
    out = []
    conflict = label_conflicts(dups)
    if conflict:
        out.append(Finding("error", "duplicate-labels", conflict, _clips(dups)))
    across = copies_across_folds(dups) if folds is not None else None
    if across:
        out.append(Finding("error", "duplicate-across-folds", across, _clips(dups)))
    elif len(dups) and not conflict:
        out.append(
            Finding(
                "warning",
                "duplicates",
                f"{dups['set'].nunique()} set(s) of identical "
                f"audio ({len(dups)} clips): {_examples(dups['clip'].tolist())}",
                _clips(dups),
            )
        )
    return out


def _formats(scan: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Clips per sample rate, channel count and format (from the headers that could be read)."""
    return {
        col: {
            str(k): int(v)
            for k, v in scan[col].dropna().astype(str if col == "format" else int).value_counts().sort_index().items()
        }
        for col in ("sample_rate", "channels", "format")
    }


def _durations(usable: pd.DataFrame) -> dict[str, float]:
    """Min, median and max duration (seconds) of the usable clips; nothing when there are none."""
    return (
        {k: round(float(getattr(usable["duration"], k)()), 3) for k in ("min", "median", "max")} if len(usable) else {}
    )


def render_text(result: CheckResult, duration: float | None = None) -> str:
    """The table for people."""
    lines = [
        f"dataset {result.dataset} at {result.root}: {result.n_clips} clips, "
        f"{len(result.classes)} classes; protocol {result.protocol}",
        "",
    ]
    counts = result.counts.copy()
    counts.columns = [f"fold {c}" if counts.columns.name == "fold" else str(c) for c in counts.columns]
    if counts.shape[1] > 1:
        counts["total"] = counts.sum(axis=1)
    counts.index.name = "class"
    lines += [
        "clips per class" + (" and fold" if "fold 1" in counts.columns else "") + " (usable clips in the plan)",
        counts.to_string(),
        "",
    ]
    for col, title in (("sample_rate", "sample rates (Hz)"), ("channels", "channels"), ("format", "formats")):
        mix = result.formats.get(col, {})
        lines.append(f"{title:<18} " + (", ".join(f"{k}: {v}" for k, v in mix.items()) or "-"))
    d = result.durations
    if d:
        lines.append(
            f"{'durations (s)':<18} min {d['min']:.2f}, median {d['median']:.2f}, max {d['max']:.2f}"
            + (f"; kfold pads or trims every clip to {duration:g} s" if duration else "")
        )
    lines.append("")
    if result.findings:
        lines.append("findings")
        lines += [f"  {f.level.upper():<8} {f.check:<23} {f.message}" for f in result.findings]
    else:
        lines.append("findings: none")
    n_err = sum(f.level == "error" for f in result.findings)
    n_warn = sum(f.level == "warning" for f in result.findings)
    lines += [
        "",
        f"{n_err} error(s), {n_warn} warning(s): "
        + ("a kfold run on this dataset would be refused or wrong" if n_err else "ready for kfold"),
    ]
    return "\n".join(lines)


def render_list() -> str:
    """`datasets list`: the dataset kinds with their default protocol and layout, then the protocols."""
    from protocols import PROTOCOLS

    from bench.data.datasets import DATASETS

    lines = ["dataset kinds (--dataset):"]
    for name in sorted(DATASETS):
        kind = DATASETS[name]
        folds = "its own folds" if kind.protocol == "predefined" else f"{kind.folds} folds"
        lines += [f"  {name:<8} default protocol {kind.protocol} ({folds})", f"           layout: {kind.layout}"]
    lines += ["", "protocols (--protocol):"]
    for name in sorted(PROTOCOLS):
        doc = " ".join((PROTOCOLS[name].__doc__ or "").split())
        lines.append(f"  {name:<15} {doc}")
    return "\n".join(lines)
