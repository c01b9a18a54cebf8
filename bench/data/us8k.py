"""UrbanSound8K (`us8k`), a `CsvCorpus` declaration, and its synthetic look-alike (`demo`)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.core.config import DatasetConfig
from bench.data.csv_corpus import CsvCorpus
from bench.data.manifest import Dataset, register_dataset

# 8,732 clips of 10 urban sound classes in 10 predefined folds; group = fsID (the Freesound recording).
US8K = CsvCorpus(
    metadata="metadata/UrbanSound8K.csv",
    file="slice_file_name",
    label="classID",
    class_name="class",
    fold="fold",
    group="fsID",
    n_folds=10,
    clip="fold{fold}/{slice_file_name}",
    layout="metadata/UrbanSound8K.csv (slice_file_name,fsID,start,end,salience,fold,classID,class) "
    "and audio/fold1..fold10/<slice_file_name>",
)
US8K.register("us8k")


@register_dataset(
    "demo",
    protocol="predefined",
    layout="generated on first use under <cache_dir>/demo, in the UrbanSound8K layout",
    needs_root=False,
)
def load_demo(cfg: DatasetConfig, cache_dir: Path, problems: list[str]) -> Dataset:
    """A small synthetic UrbanSound8K look-alike (600 clips): runs anywhere, shows real learning."""
    from bench.data.synth import make_demo

    root = Path(cfg.root).expanduser() if cfg.root else cache_dir / "demo"
    if not (root / ".complete").exists():  # about 20 s, once: said, not a silent wait
        print(f"generating the demo dataset (first run only) in {root} ...", file=sys.stderr, flush=True)
    make_demo(root)
    return US8K.read(root.resolve(), "demo", problems)
