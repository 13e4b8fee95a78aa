"""ViT token pruning: realised speed-up of the jitted forward pass vs the FLOPs-ideal speed-up.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/vit_speedup.py --out results/benchmarks/vit_speedup.md
  python benchmarks/vit_speedup.py --quick        # smoke: a tiny ViT, a few seconds

For each variant (random weights: speed does not depend on training) and each method pruning
to ``keep`` from block ``layer``, the dense and the pruned forward passes (jitted,
logits only) are timed ALTERNATELY in one run, each timing a loop of ``iters`` calls; the
realised speed-up is the ratio of the medians (against the fused dense model, the baseline a
GPU / TPU user runs, and against the same model with explicit softmax attention, the baseline
before session 7), the ideal one the ratio of block FLOPs
(``pruneax.models.vit.vit_flops``). To say where a shortfall comes from,
the benchmark also times (a) the selection stage alone (``apply_stage`` on a stored stream)
and (b) an "oracle" pass that runs the same blocks on a stream that is already short (a
contiguous slice of the tokens), i.e. the cost of the blocks with no selection, gather or
bookkeeping.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import lab, models  # noqa: E402
from pruneax.experiments import vit_token_pruning as vtp  # noqa: E402
from pruneax.models.vit import apply_stage, vit_flops  # noqa: E402

METHODS = ("random", "topk", "evit", "tome", "divprune", "kcenter", "maxsum", "coverage",
           "hiprune", "feather", "holov")  # fmt: skip


def bench_variant(name: str, overrides: dict, *, layer: int, keep: float, batch: int,
                  methods: tuple[str, ...], repeats: int, iters: int) -> list[dict]:  # fmt: skip
    cfg = models.vit_config(name, **overrides)
    model = models.ViT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    h, w = cfg.image_hw
    x = jax.random.normal(jax.random.key(1), (batch, h, w, cfg.num_channels), jnp.float32)
    key = jax.random.key(2)

    fwd = jax.jit(
        lambda s, x, plan: nnx.merge(graphdef, s)(x, plan=plan, key=key).logits,
        static_argnames="plan",
    )
    # the dense model with explicit softmax attention in every block (what the dense baseline
    # was before attention was fused): asking for the probabilities forces that path
    explicit = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, return_attention=True).logits)

    # (b) oracle: the blocks on an already-short stream (no selection, no gather)
    def oracle_fn(s, x, n_keep):
        m = nnx.merge(graphdef, s)
        t = m.embed(x)
        for i, blk in enumerate(m.blocks):
            if i == layer:
                t = t[:, : m.num_prefix + n_keep]
            t, _, _ = blk(t)
        t = m.norm(t) if m.norm is not None else t
        return m.head(t[:, 0])

    oracle = jax.jit(oracle_fn, static_argnums=2)
    # stream and attention entering the stage, for timing the selection alone
    out = model(x, return_attention=True, return_hidden_states=True)
    stream = out.hidden_states[layer]
    aux = {i: {"attn": out.attentions[i], "keys": None} for i in range(layer)}
    size = jnp.ones(stream.shape[:2], jnp.float32)
    n = model.num_patches
    ids = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))

    rows = []
    dense_flops = vit_flops(cfg)
    for method in methods:
        try:
            plan = vtp.make_plan(method, layer, keep, cfg)
        except ValueError as e:
            rows.append({"variant": name, "method": method, "skipped": str(e)})
            continue
        n_keep = plan.block_tokens(cfg.num_layers, cfg.num_patches)[-1][1]
        fns = {
            "dense": lambda: fwd(state, x, None),
            "dense_explicit": lambda: explicit(state, x),
            "pruned": lambda plan=plan: fwd(state, x, plan),
            "oracle": lambda n=n_keep: oracle(state, x, n),
        }
        if method != "tome":  # ToMe needs keys of every merging block; its stage is in "pruned"
            stage = plan.stages[0]
            select = jax.jit(
                lambda st, a, stage=stage: apply_stage(
                    stage, st, size=size, aux=a, patch_ids=ids, num_prefix=model.num_prefix,
                    grid=model.grid, key=key,
                )[0]
            )  # fmt: skip
            fns["selection"] = lambda select=select: select(stream, aux)
        times = lab.time_alternating(fns, repeats=repeats, number=iters)
        med = lab.medians(times)
        ideal = dense_flops / vit_flops(cfg, plan)
        row = {
            "variant": name,
            "method": method,
            "layer": layer,
            "keep": keep,
            "batch": batch,
            "median_s": med,
            "times_s": times,
            "speedup": med["dense"] / med["pruned"],
            "speedup_vs_explicit": med["dense_explicit"] / med["pruned"],
            "oracle_speedup": med["dense"] / med["oracle"],
            "ideal_speedup": ideal,
        }
        row["efficiency"] = row["speedup"] / ideal
        rows.append(row)
        sel = f"{med['selection'] * 1e3:7.2f} ms" if "selection" in med else "   (in pass)"
        print(
            f"{name:8s} {method:9s} dense {med['dense'] * 1e3:7.2f} ms (explicit "
            f"{med['dense_explicit'] * 1e3:7.2f} ms)  pruned "
            f"{med['pruned'] * 1e3:7.2f} ms  oracle {med['oracle'] * 1e3:7.2f} ms  selection "
            f"{sel}  speed-up {row['speedup']:.2f} (oracle {row['oracle_speedup']:.2f}, "
            f"ideal {ideal:.2f}, {100 * row['efficiency']:.0f}% of ideal)",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/vit_speedup.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args(argv)
    if args.quick:
        variants = [("mnist/4", {"hidden_size": 32, "mlp_dim": 64, "num_layers": 4}, 8, 2, 2)]
    else:
        # (variant, overrides, batch, repeats, calls per timing): Ti/16 at 224 px costs about
        # 0.16 TFLOP per batch of 64 on a 2-core CPU, so it runs at batch 16
        variants = [("mnist/4", {}, 64, args.repeats, 5), ("Ti/16", {}, 16, 7, 1)]
    rows = []
    for name, ov, batch, repeats, iters in variants:
        rows += bench_variant(
            name, ov, layer=3, keep=0.5, batch=batch, methods=tuple(args.methods),
            repeats=repeats, iters=iters,
        )  # fmt: skip
    result = {
        "machine": lab.machine(),
        "rows": rows,
    }
    lines = [
        "| variant | method | dense ms (fused) | dense ms (explicit) | pruned ms | oracle ms | "
        "selection ms | speed-up vs fused | vs explicit | oracle | ideal | % of ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | {r['method']} | skipped: {r['skipped']} |")
            continue
        m = r["median_s"]
        sel = f"{m['selection'] * 1e3:.2f}" if "selection" in m else "-"
        lines.append(
            f"| {r['variant']} | {r['method']} | {m['dense'] * 1e3:.2f} | "
            f"{m['dense_explicit'] * 1e3:.2f} | {m['pruned'] * 1e3:.2f} "
            f"| {m['oracle'] * 1e3:.2f} | {sel} | {r['speedup']:.2f} | "
            f"{r['speedup_vs_explicit']:.2f} | {r['oracle_speedup']:.2f} "
            f"| {r['ideal_speedup']:.2f} | {100 * r['efficiency']:.0f}% |"
        )
    text = f"Machine: {lab.describe(result['machine'])}.\n\n" + "\n".join(lines) + "\n"
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
