"""How a Ray task gets a run's features, measured: the driver's feature bank through Ray's object
store (what `kfold --executor ray` does), or the dataset path on the worker (`prepare` and the
feature bank there, what a tune worker does). A benchmark that prints figures:

    python tests/benchmarks/ray_speed.py --replica /tmp/us8k-replica     # the full-size UrbanSound8K replica
    python tests/benchmarks/ray_speed.py --dataset demo
"""

from __future__ import annotations

import argparse
import time
import warnings


def _through_store(bank) -> float:
    """In the task: the features as a tensor (zero-copy from the object store on the same node)."""
    import torch

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        features = torch.from_numpy(bank)
    float(features[::97].sum())  # touched, not only mapped
    return time.perf_counter() - start


def _through_path(cfg) -> tuple[float, float]:
    """In the task: `prepare` (manifest, cache, plan) and the feature bank from the dataset path."""
    import torch

    from bench.drivers.prepare import prepare

    torch.set_num_threads(1)
    start = time.perf_counter()
    prepared = prepare(cfg, progress=False, tracking=False)
    ready = time.perf_counter() - start
    prepared.bank(cfg, progress=False)
    return ready, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--replica", metavar="DIR", help="the full-size UrbanSound8K replica (generated once)")
    parser.add_argument("--cache-dir")
    args = parser.parse_args(argv)
    import torch

    from bench.core.config import RunConfig, merge
    from bench.drivers.prepare import prepare
    from bench.scale.ray_engine import session
    from bench.drivers.speed import use_replica

    torch.set_num_threads(1)
    cfg = merge(
        RunConfig(),
        {
            "dataset.name": args.dataset,
            "cache_dir": args.cache_dir,
            "train.threads": 1,
            "tracking.mlflow": False,
            "train.device": "cpu",
        },
    )
    if args.replica:
        cfg = use_replica(cfg, args.replica)
    start = time.perf_counter()
    prepared = prepare(cfg, progress=True)
    print(f"driver: prepare {time.perf_counter() - start:.1f} s (cache build included when it was missing)")
    start = time.perf_counter()
    bank = prepared.bank(cfg, progress=False)
    print(
        f"driver: feature bank {time.perf_counter() - start:.1f} s, {len(bank):,} clips, "
        f"{bank.numel() * bank.element_size() / 1e9:.2f} GB"
    )
    with session(cpus=2) as ray:
        ray.get(ray.remote(lambda: None).remote())  # a worker started before the clock runs
        start = time.perf_counter()
        ref = ray.put(bank.numpy())
        put = time.perf_counter() - start
        start = time.perf_counter()
        inside = ray.get(ray.remote(_through_store).remote(ref))
        print(
            f"object store: put {put:.2f} s (once per run); a task has the features after "
            f"{time.perf_counter() - start:.2f} s ({inside:.3f} s of it inside the task)"
        )
        start = time.perf_counter()
        ready, total = ray.get(ray.remote(_through_path).remote(cfg))
        print(
            f"dataset path: a task has the features after {time.perf_counter() - start:.1f} s "
            f"(prepare {ready:.1f} s, feature bank {total - ready:.1f} s)"
        )


if __name__ == "__main__":
    main()
