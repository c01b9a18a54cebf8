"""The command line's config: defaults (or a resumed run's saved config) < --preset < --config <
--set < the flags (bench.core.flags' table), and the mistakes that need no data refused before any
heavy module is imported: a field out of its range (named by its flag when a flag set it), an
unknown dataset kind, a dataset without its --root.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from bench.core import config as C
from bench.core import flags
from bench.core.names import dataset_names, rootless_datasets
from bench.core.presets import PRESETS, apply_preset
from bench.core.validation import validate

NOT_GIVEN = object()


def build_config(
    args: argparse.Namespace, base: C.RunConfig | None = None, *, preset=NOT_GIVEN, config=NOT_GIVEN
) -> C.RunConfig:
    """`base` (the defaults; a resumed run: its saved config) < --preset < --config < --set < flags.
    A --config file never names the run: its `name` is ignored (--name or the default decides).
    `preset`, `config`: instead of the command line's (a suite entry)."""
    cfg = base or C.RunConfig()
    preset = getattr(args, "preset", None) if preset is NOT_GIVEN else preset
    config = getattr(args, "config", None) if config is NOT_GIVEN else config
    if preset:
        cfg = apply_preset(cfg, preset)
    if config:
        cfg = C.load_yaml(config, base=cfg, with_name=False)
    cfg = C.merge(cfg, C.parse_overrides(getattr(args, "set", [])), "--set")
    return C.merge(cfg, flags.overrides(args), "command line")


def resumed_config(args: argparse.Namespace, latest: Callable[[str, str | None], str | None]) -> C.RunConfig | None:
    """--resume: the run's own config.yaml (run --name, else `latest(runs_dir, --dataset or None)`,
    the newest), with runs_dir set to where it was found; None without --resume."""
    if not args.resume:
        return None
    runs_dir = args.runs_dir or C.RunConfig().runs_dir
    name = args.name or latest(runs_dir, args.dataset)
    if name is None:
        what = f"{args.dataset} run" if args.dataset else "run"
        raise C.ConfigError(f"--resume: no earlier {what} in {runs_dir}/; give --name and --runs-dir")
    saved = Path(runs_dir).expanduser() / C.plain_name(name, "--name") / "config.yaml"
    if not saved.is_file():
        raise C.ConfigError(f"--resume: no run at {saved.parent} (no config.yaml); check --name and --runs-dir")
    return C.merge(C.load_yaml(saved), {"name": name, "runs_dir": runs_dir})


def latest_kfold(runs_dir: str, dataset: str | None) -> str | None:
    from bench.core.runfolder import latest_run

    return latest_run(runs_dir, dataset)


def latest_nested(runs_dir: str, dataset: str | None) -> str | None:
    from bench.drivers.nested import latest_nested

    return latest_nested(runs_dir, dataset)


def checked(cfg: C.RunConfig, args: argparse.Namespace | None = None, *, root: bool = True) -> C.RunConfig:
    """`cfg` validated before anything heavy is imported: every field's range (a field a flag of
    `args` set is named by that flag), the dataset kind, and (`root`) a --root where the kind needs one.
    `prepare` checks the same again, with the registries, the model and the device."""
    validate(cfg, flags.given(args) if args is not None else None)
    kind = cfg.dataset.name
    if kind not in dataset_names():
        raise C.ConfigError(f"--dataset {kind!r}: unknown; known: {', '.join(dataset_names())}")
    if root and not cfg.dataset.root and kind not in rootless_datasets():
        raise C.ConfigError(f"dataset {kind!r} needs --root, the folder that holds it")
    return cfg


def suite_entries(args: argparse.Namespace) -> list[tuple[str, C.RunConfig]]:
    """(label, config) per --presets entry, then per --configs file, each over the command line's
    options; checked (suite.run_suite names every entry's run itself)."""
    entries = []
    for label in [p for p in (args.presets or "").split(",") if p]:
        if label not in PRESETS:
            raise C.ConfigError(f"--presets: unknown preset {label!r}; known: {', '.join(PRESETS)}")
        entries.append((label, build_config(args, preset=label, config=None)))
    for path in [p for p in (args.configs or "").split(",") if p]:
        entries.append((Path(path).stem, build_config(args, preset=None, config=path)))
    if not entries:
        raise C.ConfigError("suite: give --presets a,b,... and/or --configs x.yaml,y.yaml")
    for _, cfg in entries:
        checked(cfg, args)
        cfg.name = None
    return entries
