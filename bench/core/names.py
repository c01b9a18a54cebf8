"""The registered dataset kinds, protocols and models, by name, without importing torch or
scikit-learn: for the command line's choices and --help (which must answer in well under a second).

The names are read from the registering modules' source (`@register_dataset("demo", ...)` or a
`CsvCorpus`'s `US8K.register("us8k")`, `@register_protocol(...)`, `@register_model(...)`), so a
new registration shows up by itself; `tests/test_cli.py` checks that these lists equal the real
registries. A leaf module.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"dataset": ("bench/data/*.py",), "protocol": ("protocols/*.py",), "model": ("bench/models/*.py",)}


@lru_cache(maxsize=None)
def registered(kind: str) -> tuple[str, ...]:
    """Sorted names given to `@register_<kind>("name"...)` (datasets: or `<corpus>.register("name")`)
    in the modules that register them."""
    call = rf"@register_{kind}\(" + (r"|\w+\.register\(" if kind == "dataset" else "")  # + a CsvCorpus's
    pattern = re.compile(rf"^(?:{call})\s*[\"']([^\"']+)[\"']", re.MULTILINE)
    found: set[str] = set()
    for glob in SOURCES[kind]:
        for path in ROOT.glob(glob):
            found.update(pattern.findall(path.read_text(encoding="utf-8")))
    return tuple(sorted(found))


def dataset_names() -> list[str]:
    return list(registered("dataset"))


def protocol_names() -> list[str]:
    return list(registered("protocol"))


def model_names() -> list[str]:
    return list(registered("model"))


@lru_cache(maxsize=None)
def rootless_datasets() -> tuple[str, ...]:
    """The dataset kinds registered with `needs_root=False` (they make their own data: demo): every
    other kind needs --root, refused before anything heavy is imported."""
    call = re.compile(r"^@register_dataset\((.*?)\)\s*\ndef ", re.MULTILINE | re.DOTALL)
    name = re.compile(r"^\s*[\"']([^\"']+)[\"']")
    found: set[str] = set()
    for path in ROOT.glob(SOURCES["dataset"][0]):
        for args in call.findall(path.read_text(encoding="utf-8")):
            if re.search(r"\bneeds_root\s*=\s*False\b", args) and name.match(args):
                found.add(name.match(args).group(1))
    return tuple(sorted(found))
