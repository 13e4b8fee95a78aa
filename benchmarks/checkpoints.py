"""Checkpoint saving: how long a training step is held up by ``lab.Checkpoints.save``, waiting
for the write (the behaviour before session 13) against orbax's asynchronous save.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/checkpoints.py --out results/benchmarks/checkpoints.md
  python benchmarks/checkpoints.py --quick       # smoke: a small state, a few seconds

For each state size (float32 parameters plus an Adam-like state of twice that), saves are
timed ALTERNATELY in one run, each into its own directory, step numbers increasing; "blocked"
is the time until ``save`` returns. For the async variant, "to disk" adds the ``wait()`` that
the next save (or the end of the run) would otherwise absorb: it is the write time the training
loop no longer pays as long as a step takes longer than the write. Medians of ``repeats``.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import shutil
import sys
import tempfile
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import lab  # noqa: E402


def _state(n_params: int) -> dict:
    k = jax.random.split(jax.random.key(0), 3)
    w = jax.random.normal(k[0], (n_params,))
    return {"params": {"w": w}, "opt": {"mu": w * 0.1, "nu": w * w}}


def run(sizes_m: list[float], repeats: int) -> list[dict]:
    rows = []
    for size in sizes_m:
        state = _state(int(size * 1e6))
        jax.block_until_ready(state)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="pruneax-ckpt-bench-"))
        try:
            ckpts = {
                "waited": lab.Checkpoints(tmp / "waited", max_to_keep=1),
                "async": lab.Checkpoints(tmp / "async", max_to_keep=1),
            }
            steps = itertools.count(1)
            times: dict[str, list[float]] = {"waited": [], "async": [], "async to disk": []}
            for r in range(repeats + 1):  # round 0: warm-up
                step = next(steps)
                for name, ckpt in ckpts.items():
                    t = time.perf_counter()
                    ckpt.save(step, state, {"step": step}, wait=name == "waited")
                    blocked = time.perf_counter() - t
                    ckpt.wait()
                    if r:
                        times[name].append(blocked)
                        if name == "async":
                            times["async to disk"].append(time.perf_counter() - t)
            med = lab.medians(times)
            mb = 3 * size * 4
            rows.append({"state_MB": mb, **{k: v * 1e3 for k, v in med.items()}})
            print(
                f"  {mb:7.1f} MB: waited {med['waited'] * 1e3:8.1f} ms, async blocks "
                f"{med['async'] * 1e3:7.1f} ms ({med['async to disk'] * 1e3:.1f} ms to disk)",
                flush=True,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="a Markdown table is written here")
    parser.add_argument("--quick", action="store_true", help="one small state, 2 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    sizes, repeats = ([0.2], 2) if args.quick else ([1.0, 10.0, 50.0], args.repeats)
    rows = run(sizes, repeats)
    if args.out:
        lines = [
            f"Machine: {lab.describe(lab.machine())}. Command: `python benchmarks/checkpoints.py`;"
            f" medians of {repeats} alternated saves (ms).",
            "",
            "| state MB | save, waited | async save, blocked | async, to disk |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['state_MB']:.1f} | {r['waited']:.1f} | {r['async']:.1f} | "
            f"{r['async to disk']:.1f} |"
            for r in rows
        ]
        lab.write_text(args.out, "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
