"""pruneax.graph: the cost of the analysis, and the pruned program against the original one.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/graph.py --out results/benchmarks/graph.md
  python benchmarks/graph.py --quick     # smoke: small models, a few seconds

1. Analysis: seconds for ``trace`` (jaxpr + layouts + union-find + zero analysis) on abstract
   parameters (``jax.ShapeDtypeStruct``: no weights are materialised) of a SmolLM2-135M-sized
   ``LlamaLM`` (30 layers), a ViT-B/16 and a CIFAR ResNet-20; equations walked and groups found.
2. Runner overhead: the jitted original function against the jitted ``PrunedFunction`` with
   nothing removed (the same shapes: any difference is the runner's), then with every prunable
   group cut to half its channels, and with one channel removed from every group (odd counts:
   the speed-up next to the FLOPs ratio). Random weights (speed
   does not depend on training); variants timed alternately (``pruneax.lab.time_alternating``),
   medians.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import graph as G  # noqa: E402
from pruneax import lab, models  # noqa: E402
from pruneax import weights as W  # noqa: E402


def _abstract(build, output=None):
    model = nnx.eval_shape(build)
    return G.from_nnx(model, output)


def _random(build, output=None, seed: int = 0):
    """``build()``'s model with N(0, 1 / fan_in) weights drawn by NumPy (no JAX initialisers);
    norm scales and batch-norm variances 1, other vectors N(0, 0.01)."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    leaves = []
    for name, x in zip(W.leaf_names(state), jax.tree.leaves(state), strict=True):
        if x.ndim >= 2:
            v = rng.normal(0.0, 1 / np.sqrt(np.prod(x.shape[:-1])), x.shape)
        elif name.endswith(("var", "scale")):
            v = np.ones(x.shape)
        else:
            v = rng.normal(0.0, 0.01, x.shape)
        leaves.append(jnp.asarray(v, x.dtype))
    model = nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))
    model.eval()
    return G.from_nnx(model, output)


def analysis(quick: bool) -> list[dict]:
    llama = models.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_layers=4 if quick else 30, num_heads=9, num_kv_heads=3,
    )  # fmt: skip
    vit = models.vit_config("Ti/16" if quick else "B/16")
    cases = [
        ("LlamaLM (SmolLM2-135M size)", lambda: models.LlamaLM(llama, rngs=nnx.Rngs(0)),
         lambda o: o.logits, jax.ShapeDtypeStruct((1, 64), jnp.int32)),
        (f"ViT {vit.hidden_size}-wide x {vit.num_layers}",
         lambda: models.ViT(vit, rngs=nnx.Rngs(0)),
         lambda o: o.logits, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)),
        ("CIFAR ResNet-20", lambda: models.CifarResNet("resnet20", rngs=nnx.Rngs(0)), None,
         jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)),
    ]  # fmt: skip
    rows = []
    for name, build, out, x in cases:
        fn, state = _abstract(build, out)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            g = G.trace(fn, state, x)
            times.append(time.perf_counter() - t)
        rows.append({
            "model": name, "trace_s": float(np.median(times)), "equations": g.equations,
            "groups": len(g.groups), "prunable_exact": len(g.prunable()),
            "prunable_all": len(g.prunable(allow_inexact=True)), "gflops": G.flops(g) / 1e9,
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def runner(quick: bool, repeats: int) -> list[dict]:
    small_llama = models.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=2 if quick else 4,
        num_heads=8, num_kv_heads=2,
    )  # fmt: skip
    images = np.random.default_rng(1).normal(size=(8 if quick else 64, 32, 32, 3))
    tokens = np.random.default_rng(2).integers(0, 512, (2, 32 if quick else 128))
    cases = [
        (f"CIFAR ResNet-20 (width {w}), batch {len(images)}",
         lambda w=w: models.CifarResNet("resnet20", width=w, rngs=nnx.Rngs(0)), None,
         images.astype(np.float32))
        for w in ((8,) if quick else (8, 16))
    ] + [
        (f"LlamaLM {small_llama.num_layers}x{small_llama.hidden_size}, "
         f"2 x {tokens.shape[1]} tokens",
         lambda: models.LlamaLM(small_llama, rngs=nnx.Rngs(0)), lambda o: o.logits,
         tokens.astype(np.int32)),
    ]  # fmt: skip
    rows = []
    for name, build, out, x in cases:
        fn, state = _random(build, out)
        x = jnp.asarray(x)
        g = G.trace(fn, state, x)
        half = {grp.id: np.arange(grp.size // 2 or 1) for grp in g.prunable()}
        minus1 = {grp.id: np.arange(grp.size - 1) for grp in g.prunable() if grp.size > 1}
        _, same = G.prune(g, state, {})
        small, cut = G.prune(g, state, half)
        small1, cut1 = G.prune(g, state, minus1)
        f0, f1, f2, f3 = jax.jit(fn), jax.jit(same), jax.jit(cut), jax.jit(cut1)
        diff = float(jnp.max(jnp.abs(f0(state, x) - f1(state, x))))
        calls = {
            "original": lambda f0=f0, s=state, x=x: f0(s, x),
            "runner": lambda f1=f1, s=state, x=x: f1(s, x),
            "half": lambda f2=f2, s=small, x=x: f2(s, x),
            "minus1": lambda f3=f3, s=small1, x=x: f3(s, x),
        }
        times = lab.time_alternating(calls, repeats=repeats, warmup=1, number=3)
        med = lab.medians(times)
        rows.append({
            "model": name, "original_ms": med["original"] * 1e3, "runner_ms": med["runner"] * 1e3,
            "runner_ratio": med["runner"] / med["original"], "half_ms": med["half"] * 1e3,
            "speedup_half": med["original"] / med["half"],
            "flops_ratio_half": G.flops(g) / G.flops(g, half), "max_abs_diff_runner": diff,
            "minus1_ms": med["minus1"] * 1e3, "speedup_minus1": med["original"] / med["minus1"],
            "flops_ratio_minus1": G.flops(g) / G.flops(g, minus1),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/graph.md")
    parser.add_argument("--quick", "--smoke", action="store_true", help="small models")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    a, r = analysis(args.quick), runner(args.quick, repeats)
    result = {"machine": lab.machine(), "repeats": repeats, "analysis": a, "runner": r}
    t1 = lab.markdown_table(
        ["model", "trace + analysis s", "equations", "groups", "prunable (exact / all)", "GFLOPs"],
        [[x["model"], f"{x['trace_s']:.2f}", x["equations"], x["groups"],
          f"{x['prunable_exact']} / {x['prunable_all']}", f"{x['gflops']:.2f}"] for x in a],
    )  # fmt: skip
    t2 = lab.markdown_table(
        ["model", "original ms", "runner ms (nothing removed)", "ratio", "half: speed-up",
         "half: FLOPs ratio", "one channel less: speed-up", "FLOPs ratio", "max abs diff"],
        [[x["model"], f"{x['original_ms']:.2f}", f"{x['runner_ms']:.2f}",
          f"{x['runner_ratio']:.3f}", f"{x['speedup_half']:.2f}",
          f"{x['flops_ratio_half']:.2f}", f"{x['speedup_minus1']:.2f}",
          f"{x['flops_ratio_minus1']:.2f}", f"{x['max_abs_diff_runner']:.1e}"] for x in r],
    )  # fmt: skip
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/graph.py", *given])
    text = (
        "# pruneax.graph: analysis cost and the pruned program\n\n"
        f"Machine: {lab.describe(result['machine'])}. Command: `{command}`.\n\n"
        f"## Analysis (abstract parameters)\n\n{t1}\n\n"
        f"## Jitted original vs runner (median of {repeats} x 3 calls, alternated)\n\n{t2}\n"
    )
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
