"""Selective scan: associative vs sequential, time and compiled memory, with chunking and remat.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/scan.py --out results/benchmarks/scan.md
  python benchmarks/scan.py --quick        # smoke: tiny shapes, a few seconds

``pruneax.ops.selective_scan`` at ViM-Tiny's shape (batch 64, L = 197 tokens, d_inner = 384,
d_state = 16, float32, with D and the gate z) in each variant: ``mode="sequential"``
(``lax.scan`` over time), ``mode="associative"`` over the whole sequence, and associative over
chunks of ``T`` steps (``chunk_size``), each with and without ``remat``. For every variant the
jitted forward pass and the jitted forward + backward pass (gradients of ``sum(y)`` with respect
to every input) are timed ALTERNATELY in one run (medians of ``repeats``), and their compiled
scratch memory is read from ``jax.jit(f).lower(...).compile().memory_analysis()``
(``temp_size_in_bytes``: buffers besides the arguments and outputs; XLA's static plan, not
a measured peak). Ratios are against the sequential scan. Also reported: the largest
difference of y from the sequential scan's.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import lab  # noqa: E402
from pruneax.ops import selective_scan  # noqa: E402


def _inputs(batch: int, length: int, d_inner: int, d_state: int) -> tuple[jax.Array, ...]:
    """Random scan inputs shaped like a Mamba mixer's (Mamba's init ranges for delta and A)."""
    k = jax.random.split(jax.random.key(0), 7)
    x = jax.random.normal(k[0], (batch, length, d_inner))
    # dt_proj bias init: softplus^-1 of log-uniform [1e-3, 0.1]; plus input-dependent noise.
    delta = jax.nn.softplus(jax.random.normal(k[1], (batch, length, d_inner)) - 4.0)
    A = -jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state))
    B = jax.random.normal(k[3], (batch, length, d_state))
    C = jax.random.normal(k[4], (batch, length, d_state))
    D = jnp.ones((d_inner,))
    z = jax.random.normal(k[5], (batch, length, d_inner))
    return x, delta, A, B, C, D, z


def _variants(chunks: list[int]) -> dict[str, dict]:
    out = {
        "sequential": dict(mode="sequential"),
        "associative": dict(mode="associative"),
        "associative remat": dict(mode="associative", remat=True),
    }
    for t in chunks:
        out[f"associative chunk {t}"] = dict(mode="associative", chunk_size=t)
        out[f"associative chunk {t} remat"] = dict(mode="associative", chunk_size=t, remat=True)
    return out


def _compile(fn: Callable, args: tuple) -> tuple[Callable, dict]:
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t
    mem = compiled.memory_analysis()
    info = {"compile_s": seconds}
    for field in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
        info[field] = int(getattr(mem, field)) if mem is not None else None
    return compiled, info


def run(
    *,
    batch: int,
    length: int,
    d_inner: int,
    d_state: int,
    chunks: list[int],
    repeats: int,
) -> dict:
    """Times and measures every variant; returns the JSON-able result."""
    args = _inputs(batch, length, d_inner, d_state)
    fns: dict[str, Callable] = {}
    rows: dict[str, dict] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, kw in _variants(chunks).items():
        fwd = lambda *a, kw=kw: selective_scan(*a, **kw)
        grad = jax.grad(
            lambda *a, kw=kw: jnp.sum(selective_scan(*a, **kw)), argnums=tuple(range(len(args)))
        )
        f_c, f_info = _compile(fwd, args)
        g_c, g_info = _compile(grad, args)
        outputs[name] = np.asarray(f_c(*args))
        jax.block_until_ready(g_c(*args))  # warm up
        fns[f"{name}|fwd"] = lambda f=f_c: f(*args)
        fns[f"{name}|fwd+bwd"] = lambda g=g_c: g(*args)
        rows[name] = {"options": kw, "fwd": f_info, "fwd+bwd": g_info}
    # alternated: every variant sees the same machine state (compiled and warmed up above)
    times = lab.time_alternating(fns, repeats=repeats, warmup=0)
    ref = outputs["sequential"]
    for name, row in rows.items():
        row["max_abs_diff_vs_sequential"] = float(np.max(np.abs(outputs[name] - ref)))
        for what in ("fwd", "fwd+bwd"):
            row[what]["times_s"] = times[f"{name}|{what}"]
            row[what]["median_s"] = float(np.median(times[f"{name}|{what}"]))
    for row in rows.values():
        for what in ("fwd", "fwd+bwd"):
            row[what]["time_vs_sequential"] = (
                row[what]["median_s"] / rows["sequential"][what]["median_s"]
            )
    return {
        "shape": dict(batch=batch, length=length, d_inner=d_inner, d_state=d_state),
        "dtype": "float32",
        "repeats": repeats,
        "machine": lab.machine(),
        "rows": rows,
    }


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    mib = n / 2**20
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.2f}"


def markdown(result: dict) -> str:
    s = result["shape"]
    lines = [
        f"Selective scan, batch {s['batch']}, L = {s['length']}, d_inner = {s['d_inner']}, "
        f"d_state = {s['d_state']}, float32, {result['machine']['devices']}, medians of "
        f"{result['repeats']} alternated repeats; temp = XLA's compiled scratch memory.",
        "",
        "| variant | fwd ms | fwd / seq | fwd temp MiB | fwd+bwd ms | fwd+bwd / seq | "
        "fwd+bwd temp MiB | max abs diff vs seq |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        f, g = r["fwd"], r["fwd+bwd"]
        lines.append(
            f"| {name} | {f['median_s'] * 1e3:.1f} | {f['time_vs_sequential']:.2f} | "
            f"{_mib(f['temp_size_in_bytes'])} | {g['median_s'] * 1e3:.1f} | "
            f"{g['time_vs_sequential']:.2f} | {_mib(g['temp_size_in_bytes'])} | "
            f"{r['max_abs_diff_vs_sequential']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/scan.md")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for the smoke test")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunks", type=int, nargs="*", default=[16, 64])
    args = parser.parse_args(argv)
    if args.quick:
        shape = dict(batch=2, length=9, d_inner=8, d_state=4)
        chunks, repeats = [4], 2
    else:
        shape = dict(batch=64, length=197, d_inner=384, d_state=16)
        chunks, repeats = args.chunks, args.repeats
    result = run(**shape, chunks=chunks, repeats=repeats)
    text = markdown(result)
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
