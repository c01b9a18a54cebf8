"""`RunFolder`: the one owner and writer of `runs/<name>/`: claim, atomic writes, DONE with a digest,
verified reads, and what kind of run a folder holds. The layout, described here and nowhere else:

    runs/<name>/config.yaml                 the full effective config
    runs/<name>/folds.csv, plan.json        the fold plan, written before any training (repeated
                                            CV: folds.csv's `fold` is repeat 1's, `fold_<r>` repeat r's)
    runs/<name>/quarantine.csv              files that could not be used, with the reason
    runs/<name>/run.json                    what was run, when (bench/core/provenance.py); a record
                                            with its own digest
    runs/<name>/mlflow.json                 the job's MLflow parent run and experiment (absent when
                                            tracking is off)
    runs/<name>/splits/<k>/predictions.csv  one row per test clip (absent when tests are not scored)
    runs/<name>/splits/<k>/history.csv, split.json, confusion_counts.csv
    runs/<name>/splits/<k>/model.pt         the chosen weights, normalisation and settings (scored splits)
    runs/<name>/splits/<k>/DONE             written last: a digest of the files above and of the
                                            settings and fold plan they were made with
    runs/<name>/scores.json, per_fold.csv, per_class.csv, confusion_{counts,normalized}.{csv,png},
        fold_scores.png, learning_curves.png, report.md, report.html
                                            the report, from the verified splits only, published
                                            together (`publishing`)
  a nested run (`kind()` 'nested'): the above for its outer splits, and
    runs/<name>/search.json                 the search settings (a record with its own digest)
    runs/<name>/inner/<k>/                  outer split k's study (a study folder, below)
    runs/<name>/non-nested/                 the non-nested study, and kfold/ (a kfold run folder)
    runs/<name>/nested.md, nested.json      both estimates and the choices per outer split
  a study folder (`kind()` 'tune': runs/tune-<study>/, or a nested run's inner/<k>/):
    study.db (unless --storage), trials/<n>/ (a kfold run folder per trial, tests not scored),
    trials.csv, best.yaml, mlflow.json ({"study": run id}), report.md and its plots

A claim creates the folder atomically (a new run) and takes an exclusive lock on it (flock), held
for the whole job, resume included, so two processes never train into one folder. A split counts only
when its DONE digest matches its files, the saved settings and `folds.csv`, and its predictions are
exactly the test fold's clips, each once, with their labels (bench/core/verify.py); anything else is
named, never scored. JSON files and records: bench/core/records.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.core import records
from bench.core.atomic import atomic_path, atomic_write_csv, atomic_write_text, staged
from bench.core.config import ConfigError, RunConfig, dump_yaml, flatten, load_yaml, plain_name
from bench.core.errors import FoldbenchError
from bench.core.records import PLAN_KEYS, SEAL, SPLIT_FILES, fold_column, plan_view, read_json
from bench.core.records import sha as _sha
from bench.core.verify import split_problem

# Sections that decide the results: a resumed run must match them exactly.
RESULT_KEYS = ("dataset", "protocol", "audio", "features", "augment", "model", "train", "splits")
NOT_RESULT_KEYS = ("train.device", "train.threads")
# Result settings added after runs were made: left out of `result_view` at these values (which is
# what those runs did), so their resume checks and DONE digests still hold.
LATER_DEFAULTS = {"protocol.repeats": 1}


class RunFolderError(FoldbenchError, ValueError):
    """A run folder that cannot be started, resumed or read as asked."""


def result_view(cfg: RunConfig) -> dict:
    """The flattened settings that decide results (what a resumed run or study must match)."""
    return {
        k: v
        for k, v in flatten(cfg).items()
        if k.split(".")[0] in RESULT_KEYS
        and k not in NOT_RESULT_KEYS
        and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])
    }


def saved_result_view(run_dir: str | Path) -> dict:
    """`result_view` of a run folder's config.yaml; {} when it cannot be read."""
    try:
        return result_view(load_yaml(Path(run_dir) / "config.yaml"))
    except (ConfigError, OSError):
        return {}


def default_name(cfg: RunConfig) -> str:
    return f"{cfg.dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run(runs_dir: str | Path, dataset: str | None, nested: bool = False) -> str | None:
    """The newest run folder of this dataset (None: of any dataset): what `--resume` without
    `--name` continues; kfold runs, or with `nested` the nested runs (`RunFolder.kind`)."""
    found = []
    for cfg_file in Path(runs_dir).glob("*/config.yaml"):
        if RunFolder(cfg_file.parent).kind() != ("nested" if nested else "kfold"):  # the other command's run
            continue
        try:
            if (
                dataset is None
                or (yaml.safe_load(cfg_file.read_text()) or {}).get("dataset", {}).get("name") == dataset
            ):
                found.append((cfg_file.stat().st_mtime, cfg_file.parent.name))
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return max(found)[1] if found else None


class RunFolder:
    """`RunFolder(path)` reads a run; `RunFolder.claim(cfg, resume)` owns one for a job."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._created = False

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def kind(self) -> str:
        """What the folder holds, decided here only: 'nested' (search.json, or the inner/ studies of
        a nested run killed before it), 'tune' (a study folder: study.db or trials/, no config.yaml)
        or 'kfold' (anything else, a tune trial's folder and a nested run's non-nested/kfold included)."""
        if (self.path / "search.json").exists() or (self.path / "inner").is_dir():
            return "nested"
        if not (self.path / "config.yaml").exists() and (
            (self.path / "study.db").exists() or (self.path / "trials").is_dir()
        ):
            return "tune"
        return "kfold"

    # ---- files: every one written through these (the split files: `write_split`) ----

    def read_json(self, name: str) -> dict:
        """A JSON file of the folder, or {} when absent or unreadable (mlflow.json, plan.json)."""
        return read_json(self.path / name)

    def write_json(self, name: str, obj, indent: int | None = None) -> None:
        records.write_json(self.path / name, obj, indent)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def write_csv(self, name: str, table: pd.DataFrame) -> None:
        atomic_write_csv(self.path / name, table)

    def write_record(self, name: str, record: dict) -> dict:
        """A record (run.json, search.json): JSON with its own digest (bench/core/records.py)."""
        return records.write_record(self.path / name, record)

    def read_record(self, name: str) -> tuple[dict, str]:
        """A record without its digest, and its state: 'missing', 'unverified', 'undigested', 'ok'."""
        return records.read_record(self.path / name)

    @contextlib.contextmanager
    def publishing(self):
        """Yield a staging folder; when the block succeeds every file made in it replaces its
        namesake in the run folder: a set of files that belong together (the report) appears at once."""
        with staged(self.path) as out:
            yield out

    # ---- claim and release ----

    @classmethod
    def claim(cls, cfg: RunConfig, resume: bool) -> "RunFolder":
        """Lock `runs_dir/name` for this job; a new run's folder is created, a resumed one must hold a
        run with the same settings. Raises RunFolderError, leaving nothing behind, otherwise."""
        runs_dir = Path(cfg.runs_dir).expanduser()
        folder = cls(runs_dir / plain_name(cfg.name, "--name"))
        if not folder.path.resolve().parent == runs_dir.resolve():
            raise RunFolderError(f"--name {cfg.name!r}: the run folder must lie inside {runs_dir}")
        runs_dir.mkdir(parents=True, exist_ok=True)
        try:
            folder._open(cfg, resume)
        except BaseException:
            folder.release(failed=True)
            raise
        return folder

    @classmethod
    def shared(cls, path: str | Path) -> "RunFolder":
        """A folder several processes write at once (a tune study's: its storage arbitrates), created
        when absent, never locked. `release(failed=True)` removes it only when this call created it
        and `keep` was not called (a study that could not be opened leaves nothing behind)."""
        folder = cls(path)
        folder._created = not folder.path.exists()
        folder.path.mkdir(parents=True, exist_ok=True)
        return folder

    def _lock(self) -> None:
        """flock on the folder itself: held until `release`, and by nobody else meanwhile."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(
                f"{self.path} is in use by another foldbench process; wait for it to finish or pick another --name"
            ) from None
        self._lock_fd = fd

    def _open(self, cfg: RunConfig, resume: bool) -> None:
        saved = self.path / "config.yaml"
        if resume:
            if not saved.is_file():
                raise RunFolderError(f"--resume: no run at {self.path}")
            self._lock()
            old, new = result_view(load_yaml(saved)), result_view(cfg)
            diff = [
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
            if diff:
                raise RunFolderError(
                    f"--resume {self.path}: the settings differ from the saved "
                    f"config.yaml ({'; '.join(diff[:5])}), so finished splits would "
                    f"not be comparable; resume with the same settings or start a new run"
                )
            return
        # Creating is one step for other claims: they wait on the parent's lock (held for this block
        # only), so none sees the new folder before its lock and config.yaml are in place.
        parent_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(parent_fd, fcntl.LOCK_EX)
            try:
                self.path.mkdir()  # atomic: of two jobs with one name, exactly one creates the folder
            except FileExistsError:
                what = (
                    "already holds a run: pass --resume to continue it, or --name to start another"
                    if saved.exists()
                    else "exists and is not a foldbench run; pick another --name or remove it"
                )
                raise RunFolderError(f"{self.path} {what}") from None
            self._created = True
            self._lock()
            atomic_write_text(saved, dump_yaml(cfg))
        finally:
            os.close(parent_fd)

    def release(self, failed: bool = False) -> None:
        """Unlock; after a failure, a folder this job created that holds no finished split is removed
        (nothing is lost, and `--resume` never picks a dead folder)."""
        if failed and self._created and not self.done():
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def keep(self) -> None:
        """Keep this folder after a failure even with no finished split: the job saved other work
        in it (nested CV's inner studies), which `--resume` continues."""
        self._created = False

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)

    # ---- the plan ----

    def write_plan(self, table: pd.DataFrame, folds, plan: dict, quarantine: pd.DataFrame) -> None:
        """folds.csv, plan.json and quarantine.csv, before any training; a resumed run must see the
        same clips, labels, folds and dataset fingerprint its finished splits saw. `folds`: the fold
        ids, or a list of them, one per repeat (columns fold, then fold_2, ... after group)."""
        repeats = [folds] if isinstance(folds, np.ndarray) else list(folds)
        fresh = table[["clip", "path", "label", "class"]].assign(fold=repeats[0], group=table.get("group"))
        for r, more in enumerate(repeats[1:], start=2):
            fresh[fold_column(r)] = more
        path = self.path / "folds.csv"
        if path.exists():
            old_plan = read_json(self.path / "plan.json")
            old_fp = old_plan.get("dataset_fingerprint")
            if old_fp not in (None, plan.get("dataset_fingerprint")) and not str(old_fp).startswith("c1-"):
                raise RunFolderError(
                    f"--resume {self.path}: this run was started by a foldbench whose "
                    f"dataset fingerprint was made of file times, not content, so it "
                    f"cannot tell whether the dataset changed; start a new run"
                )
            if old_fp not in (None, plan.get("dataset_fingerprint")):
                raise RunFolderError(
                    f"--resume {self.path}: the dataset changed since this run started "
                    f"(a file, a label or the clip list differs); start a new run"
                )
            old = pd.read_csv(path, dtype={"clip": str})
            for col in ("clip", "label", *(fold_column(r) for r in range(1, len(repeats) + 1))):
                if col not in old or old[col].tolist() != fresh[col].tolist():
                    raise RunFolderError(
                        f"--resume {path}: the fold plan's {col} column changed since this run started; start a new run"
                    )
        else:
            atomic_write_csv(path, fresh)
        atomic_write_text(self.path / "plan.json", json.dumps(plan, indent=1) + "\n")
        atomic_write_csv(self.path / "quarantine.csv", quarantine)

    def settings_digest(self, seal: int | None = SEAL) -> str:
        """What a DONE marker vouches for besides its files: the saved settings and the fold plan
        (folds.csv, plan.json and quarantine.csv; `seal` None: what an older DONE vouched for:
        folds.csv and PLAN_KEYS of plan.json)."""
        cfg = load_yaml(self.path / "config.yaml")
        plan = read_json(self.path / "plan.json")
        text = json.dumps([result_view(cfg), plan_view(plan, seal)], sort_keys=True, default=str)
        files = [_sha(self.path / "folds.csv")]
        if seal == SEAL and (self.path / "quarantine.csv").is_file():  # what the report lists
            files.append(_sha(self.path / "quarantine.csv"))
        return hashlib.sha256(text.encode() + "".join(files).encode()).hexdigest()

    def sealed_whole(self, splits: list[int]) -> bool:
        """Whether the DONE markers of `splits` all vouch for the whole of plan.json and quarantine.csv."""
        return all(read_json(self.split_dir(k) / "DONE").get("seal") == SEAL for k in splits)

    def vouched_plan(self, splits: list[int]) -> dict:
        """plan.json as far as the DONE markers of `splits` (verified) vouch for it: all of it when
        every one was sealed over the whole file, else the older markers' PLAN_KEYS only."""
        plan = read_json(self.path / "plan.json")
        if self.sealed_whole(splits):
            return plan
        return {k: plan[k] for k in PLAN_KEYS if k in plan}

    def planned(self) -> list[int]:
        """The split numbers of plan.json (1..n of folds.csv's folds when it has none)."""
        splits = read_json(self.path / "plan.json").get("splits")
        if splits:
            numbers = [
                s.get("split") if isinstance(s, dict) else None
                for s in (splits if isinstance(splits, list) else [None])
            ]
            if not all(type(k) is int and k >= 1 for k in numbers) or len(set(numbers)) != len(numbers):
                raise RunFolderError(
                    f"{self.path / 'plan.json'}: its split list is damaged (each split "
                    f"must be a distinct whole number from 1); start a new run"
                )
            return sorted(numbers)
        if not (self.path / "folds.csv").exists():
            return []
        n = pd.read_csv(self.path / "folds.csv", usecols=["fold"])["fold"].nunique()
        return list(range(1, n + 1))

    def asked(self) -> list[int]:
        """The splits the run was asked for: config.yaml's `splits` (`--splits 1,2`), else every split
        of the plan (else 1..n, n = number of distinct folds in folds.csv)."""
        planned = self.planned()
        try:
            saved = yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            saved = None
        asked = saved.get("splits") if isinstance(saved, dict) else None
        if isinstance(asked, list) and asked:
            return sorted({k for k in asked if type(k) is int and k in planned} or planned)
        return planned

    # ---- splits ----

    def split_dir(self, index: int) -> Path:
        return self.path / "splits" / str(index)

    def done(self) -> list[int]:
        """The planned splits that have a DONE marker (not yet verified)."""
        return [k for k in self.planned() if (self.split_dir(k) / "DONE").is_file()]

    def strays(self) -> list[str]:
        """Entries under splits/ that are not a planned split's folder (`splits/02` beside
        `splits/2`, a split the plan does not have, a stray file): never read, never scored."""
        root = self.path / "splits"
        if not root.is_dir():
            return []
        names = {self.split_dir(k).name for k in self.planned()}
        return sorted(p.name for p in root.iterdir() if p.name not in names)

    def write_split(
        self,
        index: int,
        info: dict,
        history: pd.DataFrame,
        predictions: pd.DataFrame | None,
        confusion: pd.DataFrame | None = None,
        model: bytes | None = None,
    ) -> None:
        """The split's files, then DONE with their digest, truly last. `model`: model.pt's bytes."""
        folder = self.split_dir(index)
        (folder / "DONE").unlink(missing_ok=True)  # a retrained split is unfinished until its new DONE
        for name in SPLIT_FILES:
            (folder / name).unlink(missing_ok=True)
        if predictions is not None:
            atomic_write_csv(folder / "predictions.csv", predictions)
        if confusion is not None:
            atomic_write_text(folder / "confusion_counts.csv", confusion.to_csv())
        if model is not None:
            with atomic_path(folder / "model.pt") as tmp:
                tmp.write_bytes(model)
        atomic_write_csv(folder / "history.csv", history)
        atomic_write_text(folder / "split.json", json.dumps(info, indent=1))
        self.seal(index)

    def seal(self, index: int) -> None:
        """Write split `index`'s DONE: the digest of the files it holds now and of the settings."""
        folder = self.split_dir(index)
        files = {n: _sha(folder / n) for n in SPLIT_FILES if (folder / n).is_file()}
        done = {
            "split": index,
            "seal": SEAL,
            "settings": self.settings_digest(),
            "files": files,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(folder / "DONE", json.dumps(done, indent=1) + "\n")

    def problem(self, index: int, score_test: bool = True, settings: str | None = None) -> str | None:
        """Why split `index` does not count (None: it does): bench/core/verify.py's `split_problem`.
        `settings`: `settings_digest()` when the caller checks several splits at once."""
        return split_problem(self, index, score_test, settings)

    def read_split_info(self, index: int) -> dict:
        return json.loads((self.split_dir(index) / "split.json").read_text())

    def verified(self, splits: list[int] | None = None, score_test: bool = True) -> list[int]:
        """The DONE splits (or `splits`), each checked; a split that fails, or anything under
        splits/ that is not a planned split's folder, is an error naming it."""
        strays = self.strays()
        if strays:
            raise RunFolderError(
                f"{self.path / 'splits'}: {', '.join(strays[:5])} "
                f"{'is' if len(strays) == 1 else 'are'} not a split of the fold plan "
                f"(plan.json: {', '.join(map(str, self.planned())) or 'none'}); remove "
                f"{'it' if len(strays) == 1 else 'them'} or start a new run"
            )
        splits = self.done() if splits is None else splits
        settings = self.settings_digest() if splits else None
        for k in splits:
            reason = self.problem(k, score_test, settings)
            if reason is not None:
                raise RunFolderError(
                    f"{self.path}: split {k} cannot be scored: {reason}; run "
                    f"`kfold --name {self.path.name} --resume` to train it again"
                )
        return splits
