"""``python -m pruneax.experiments.vlm_bench --checkpoint DIR --benchmark pope --data DIR
--methods none fastervlm fastv --keep 0.5 0.222 0.111 --workdir W``: see ``run_benchmark``."""

from __future__ import annotations

import argparse

from pruneax.experiments.vlm_bench import BENCHMARKS, method_names, run_benchmark


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and calls ``run_benchmark``."""
    p = argparse.ArgumentParser(prog="python -m pruneax.experiments.vlm_bench",
                                description=run_benchmark.__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="transformers checkpoint folder or hub id")
    p.add_argument("--benchmark", required=True, help=f"one of {sorted(BENCHMARKS)}")
    p.add_argument("--data", required=True, help="the benchmark's local data folder")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=["none"], help=" ".join(method_names()))
    p.add_argument("--keep", nargs="+", type=float, default=[0.5])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--mesh", default=None, help="e.g. data=1,model=1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fastv_layer", type=int, default=2)
    p.add_argument("--bucket", type=int, default=16)
    p.add_argument("--timing_repeats", type=int, default=5)
    p.add_argument("--max_batches", type=int, default=None)
    a = p.parse_args(argv)
    run_benchmark(
        a.checkpoint, a.benchmark, a.data, workdir=a.workdir, methods=a.methods, keep=a.keep,
        split=a.split, limit=a.limit, batch_size=a.batch_size, dtype=a.dtype, mesh=a.mesh,
        seed=a.seed, fastv_layer=a.fastv_layer, bucket=a.bucket,
        timing_repeats=a.timing_repeats, max_batches=a.max_batches,
    )  # fmt: skip


if __name__ == "__main__":
    main()
