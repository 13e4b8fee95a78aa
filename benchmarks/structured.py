"""Structured pruning (heads / GQA groups + MLP channels): dense vs pruned ViT and Llama LM.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/structured.py --out results/benchmarks/structured.md
  python benchmarks/structured.py --smoke        # smoke: tiny models, a few seconds

For each model (random weights: speed does not depend on training) the units are scored by
magnitude (``head_importance`` / ``mlp_importance``), a global allocation (``allocate_units``,
``kind="params"``, at least one head / GQA group per layer: on random weights all heads score
alike and the allocation could otherwise empty whole attention layers) keeps 0.75 and 0.5 of
the dense parameters, and ``prune_structured`` builds the smaller models. The dense and
pruned jitted forward passes (ViT: logits of a batch of images; LLM: logits of a batch of
prompts, no cache) are timed ALTERNATELY in one run, each timing a loop of ``iters`` calls;
the speed-up is the ratio of the medians, the ideal one the ratio of ``config_flops``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import lab, models  # noqa: E402
from pruneax.models import structured as S  # noqa: E402
from pruneax.weights import leaf_names  # noqa: E402

BUDGETS = (0.75, 0.5)


def _random_model(model_type, config, seed: int = 0):
    """A model with N(0, 0.02^2) weights (norm scales 1) drawn by NumPy: building the model
    abstractly and filling it avoids compiling every JAX initializer (slow on a busy CPU)."""
    abstract = nnx.eval_shape(lambda: model_type(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    leaves = []
    for name, leaf in zip(leaf_names(state), jax.tree.leaves(state), strict=True):
        value = rng.normal(0.0, 0.02, leaf.shape) + name.endswith("scale")
        leaves.append(jnp.asarray(value, leaf.dtype))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def _forward(model):
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits)
    return lambda x: fwd(state, x)


def bench(name: str, model, x, *, tokens: int, repeats: int, iters: int) -> list[dict]:
    cfg = model.config
    heads, mlp = S.head_importance(model), S.mlp_importance(model)
    variants = {"dense": model}
    for b in BUDGETS:
        keep = S.allocate_units(
            heads, mlp, config=cfg, budget=b, kind="params", min_per_layer=(1, 0)
        )
        variants[f"{b:g}"] = S.prune_structured(model, keep)
    fwd = {k: _forward(m) for k, m in variants.items()}
    fns = {k: (lambda f=f: f(x)) for k, f in fwd.items()}
    times = lab.time_alternating(fns, repeats=repeats, number=iters)
    med = lab.medians(times)
    flops = {k: S.config_flops(m.config, tokens=tokens) for k, m in variants.items()}
    rows = []
    for k, m in variants.items():
        row = {
            "model": name,
            "budget": k,
            "params": models.param_count(m),
            "params_ratio": models.param_count(m) / models.param_count(model),
            "flops": flops[k],
            "heads": list(m.config.heads_per_layer),
            "mlp": list(m.config.mlp_per_layer),
            "median_s": med[k],
            "times_s": times[k],
            "speedup": med["dense"] / med[k],
            "ideal_speedup": flops["dense"] / flops[k],
        }
        rows.append(row)
        print(
            f"{name:10s} {k:5s} params {row['params']:>10,d} ({row['params_ratio']:.3f})  "
            f"GFLOPs {flops[k] / 1e9:8.3f}  {med[k] * 1e3:8.2f} ms  speed-up "
            f"{row['speedup']:.2f} (ideal {row['ideal_speedup']:.2f})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/structured.md")
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if args.smoke:
        vits = [("mnist/4", {"hidden_size": 32, "mlp_dim": 64, "num_layers": 2}, 4, 2, 1)]
        llm = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2)  # fmt: skip
        llm_batch, llm_len, llm_rep, llm_iters = 2, 8, 2, 1
    else:
        # (variant, overrides, batch, repeats, calls per timing); S/16 at 224 px is about
        # 4.6 GFLOPs per image, batch 8 on a 2-core CPU
        vits = [("mnist/4", {}, 64, args.repeats, 5), ("S/16", {}, 8, args.repeats, 1)]
        # a small Llama: D=512, 8 layers, 8 query / 4 KV heads (hd 64), F=1408, V=8000
        llm = dict(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_layers=8,
                   num_heads=8, num_kv_heads=4)  # fmt: skip
        llm_batch, llm_len, llm_rep, llm_iters = 4, 256, args.repeats, 1
    rows = []
    for name, ov, batch, repeats, iters in vits:
        cfg = models.vit_config(name, **ov)
        model = _random_model(models.ViT, cfg)
        h, w = cfg.image_hw
        x = jax.random.normal(jax.random.key(1), (batch, h, w, cfg.num_channels), jnp.float32)
        rows += bench(f"ViT {name}", model, x, tokens=cfg.num_prefix + cfg.num_patches,
                      repeats=repeats, iters=iters)  # fmt: skip
    lcfg = models.LlamaConfig(**llm)
    lm = _random_model(models.LlamaLM, lcfg)
    ids = jax.random.randint(jax.random.key(2), (llm_batch, llm_len), 0, lcfg.vocab_size)
    # FLOPs per token at the mean causal context of the prompt
    rows += bench("Llama", lm, ids, tokens=(llm_len + 1) // 2, repeats=llm_rep, iters=llm_iters)
    result = {
        "machine": lab.machine(),
        "llm_config": llm,
        "llm_batch_tokens": [llm_batch, llm_len],
        "rows": rows,
    }
    header = ["model", "kept params", "params", "ratio", "GFLOPs", "median ms", "speed-up", "ideal"]
    table = lab.markdown_table(
        header,
        [
            [r["model"], r["budget"], f"{r['params']:,}", f"{r['params_ratio']:.3f}",
             f"{r['flops'] / 1e9:.3f}", f"{r['median_s'] * 1e3:.2f}", f"{r['speedup']:.2f}",
             f"{r['ideal_speedup']:.2f}"]
            for r in rows
        ],
    )  # fmt: skip
    text = f"Machine: {lab.describe(result['machine'])}.\n\n{table}"
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
