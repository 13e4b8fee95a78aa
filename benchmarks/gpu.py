"""One short accelerator window: VLM prefill latency with pre-LLM selection and FastV, and the
share of prefill spent selecting, on a LLaVA-1.5-7B-shaped model (random weights, bfloat16).

Command (on a lent GPU / TPU; numbers in BUILD_NOTES.md):
  python -m benchmarks.gpu --out results/benchmarks/gpu.md --budget_s 420
  python -m benchmarks.gpu --tiny --out /tmp/gpu.md          # CPU smoke test (seconds)
  python -m benchmarks.gpu --size cpu --out results/benchmarks/vlm_prefill_cpu.md  # 2-core CPU
Then, if time is left: python -m benchmarks.selection --shapes llava15-d1024,llava15-d4096
--batches 1,64 --no-numpy (selection per image at LLaVA shapes).

Model: CLIP ViT-L/14-336 (24 blocks, width 1024; hidden state -2 feeds the projector: 23
blocks run), the LLaVA-1.5 ``mlp2x_gelu`` projector, and a Llama-2-7B decoder (32 layers,
width 4096), parameters drawn N(0, 0.02) in bfloat16 straight on the device (no host copy).
Prompt: 35 text tokens before the image, 576 visual tokens, 20 after (LLaVA-1.5's template
length), batch ``--batch``; prefill returns the last token's logits only.

Variants, timed ALTERNATELY in one run (``lab.time_alternating``; medians): the dense model
(fused attention in the LLM: no probabilities are asked), each pre-LLM method at 64 / 128 /
192 visual tokens, and FastV (K = 2, keep 64 / 128 / 192 of the 576). Each variant is its own
XLA program; compilation is timed separately (``lab.CompileClock``) and variants are added
in the order of ``VARIANTS`` until ``--budget_s`` would be exceeded, so the run fits its window.
For pre-LLM methods the selection is timed as (vision encoder + projector + selector) minus
(vision encoder + projector keeping every token), both jitted, and reported with its share of
that variant's prefill.
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

from pruneax import lab, models  # noqa: E402
from pruneax.weights import leaf_names  # noqa: E402

# in order of importance: what fits the window is measured
METHODS = ("fastervlm", "divprune", "fastv", "coverage", "hiprune", "holov", "kcenter", "random")
BUDGETS = (64, 128, 192)


def configs(size: str) -> tuple[models.VLMConfig, tuple[int, int]]:
    """The VLM config and (text tokens before, after) the image, for ``size``."""
    if size == "tiny":
        vision = models.ViTConfig(image_size=28, patch_size=7, hidden_size=32, num_layers=3,
                                  num_heads=4, mlp_dim=64, num_classes=0, pre_norm=True,
                                  hidden_act="quick_gelu", final_norm="pooled", pool="cls",
                                  patch_bias=False)  # fmt: skip
        llm = models.llm_config("tiny", num_layers=3)
        return models.VLMConfig(vision=vision, llm=llm), (5, 4)
    if size == "cpu":  # LLaVA-1.5's token counts (576 patches) on models a 2-core CPU can run
        vision = models.ViTConfig(image_size=336, patch_size=14, hidden_size=384, num_layers=12,
                                  num_heads=6, mlp_dim=1536, num_classes=0, pre_norm=True,
                                  hidden_act="quick_gelu", final_norm="pooled", pool="cls",
                                  layer_norm_eps=1e-5, patch_bias=False)  # fmt: skip
        llm = models.LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408,
                                 num_layers=8, num_heads=8, num_kv_heads=4)  # fmt: skip
        return models.VLMConfig(vision=vision, llm=llm), (35, 20)
    vision = models.ViTConfig(image_size=336, patch_size=14, hidden_size=1024, num_layers=24,
                              num_heads=16, mlp_dim=4096, num_classes=0, pre_norm=True,
                              hidden_act="quick_gelu", final_norm="pooled", pool="cls",
                              layer_norm_eps=1e-5, patch_bias=False)  # fmt: skip
    return models.VLMConfig(vision=vision, llm=models.llm_config("llama2-7b")), (35, 20)


def random_vlm(config: models.VLMConfig, dtype) -> models.VLM:
    """A VLM with N(0, 0.02) weights (norm scales 1) created on the device, leaf by leaf."""
    build = lambda: models.VLM(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype)
    graphdef, state = nnx.split(nnx.eval_shape(build))
    leaves = []
    for i, (name, leaf) in enumerate(zip(leaf_names(state), jax.tree.leaves(state), strict=True)):
        shape, dt = leaf.shape, leaf.dtype
        if name.endswith("scale"):
            leaves.append(jnp.ones(shape, dt))
            continue
        make = jax.jit(
            lambda key, shape=shape, dt=dt: (0.02 * jax.random.normal(key, shape)).astype(dt)
        )
        leaves.append(make(jax.random.key(i)))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def variants(
    n_visual: int, prefix: int, num_layers: int, budgets: tuple[int, ...] = BUDGETS
) -> list[tuple[str, dict]]:
    # the dense model twice: fused attention (no probabilities asked), and explicit softmax
    # attention in every LLM layer (asking for all of them: the pre-fusion baseline)
    out: list[tuple[str, dict]] = [
        ("dense", {}),
        ("dense, explicit LLM attention", {"return_attention_at": tuple(range(num_layers))}),
    ]
    for k in budgets:
        for method in METHODS:
            if method == "fastv":
                spec = models.FastVSpec(start=prefix, stop=prefix + n_visual, layer=2,
                                        keep_ratio=k / n_visual)  # fmt: skip
                out.append((f"fastv k={k}", {"prune": spec}))
            else:
                out.append(
                    (
                        f"{method} k={k}",
                        {"select": models.VisualSelect(method, keep=k), "key": jax.random.key(0)},
                    )
                )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/gpu.md")
    parser.add_argument("--size", choices=("tiny", "cpu", "7b"), default="7b")
    parser.add_argument("--tiny", action="store_true", help="--size tiny (CPU smoke test)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget_s", type=float, default=420.0, help="stop adding variants")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    size = "tiny" if args.tiny else args.size
    config, (before, after) = configs(size)
    dtype = jnp.bfloat16 if size == "7b" else jnp.float32
    vlm = random_vlm(config, dtype)
    graphdef, state = nnx.split(vlm)
    h, w = config.vision.image_hw
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch, h, w, 3)), dtype)
    prefix = jnp.asarray(rng.integers(0, config.llm.vocab_size, (args.batch, before)))
    question = jnp.asarray(rng.integers(0, config.llm.vocab_size, (args.batch, after)))
    n = config.num_visual
    layers = config.llm.num_layers
    if size == "tiny":
        todo = variants(n, before, layers, budgets=(4,))[:5]
    elif size == "cpu":
        todo = [v for v in variants(n, before, layers, budgets=(64,)) if "kcenter" not in v[0]]
    else:
        todo = variants(n, before, layers)
    fns, compile_s, select_fns = {}, {}, {}
    encode = jax.jit(  # vision encoder + projector, all tokens kept: subtracted from each method
        lambda s, images, q: nnx.merge(graphdef, s).select_visual(images, q)[0]
    )
    jax.block_until_ready(encode(state, images, question))
    select_fns["encode"] = lambda: encode(state, images, question)
    for name, kw in todo:
        if time.perf_counter() - started > args.budget_s:
            print(f"[gpu] budget reached: {name} and later variants not measured", flush=True)
            break

        def prefill(s, images, prefix, question, kw=kw):
            out = nnx.merge(graphdef, s)(images, prefix, question, logits_to_keep=1, **kw)
            if out.llm.attentions:  # keep the explicit probabilities alive
                return out.logits, sum(jnp.sum(a[:, :, -1]) for a in out.llm.attentions.values())
            return out.logits

        fn = jax.jit(prefill)
        with lab.CompileClock() as clock:
            jax.block_until_ready(fn(state, images, prefix, question))
        compile_s[name] = clock.seconds
        fns[name] = lambda fn=fn: fn(state, images, prefix, question)
        if "select" in kw:
            sel = jax.jit(
                lambda s, images, q, sel=kw["select"]: nnx.merge(graphdef, s).select_visual(
                    images, q, select=sel, key=jax.random.key(0)
                )[0]
            )
            jax.block_until_ready(sel(state, images, question))
            select_fns[name] = lambda sel=sel: sel(state, images, question)
        print(f"[gpu] compiled {name} in {clock.seconds:.1f} s", flush=True)
    times = lab.time_alternating({**fns, **{f"{k} [select]": v for k, v in select_fns.items()}},
                                 repeats=args.repeats, number=1)  # fmt: skip
    med = lab.medians(times)
    dense, enc = med["dense"], med["encode [select]"]
    rows = []
    for name in fns:
        with_sel = med.get(f"{name} [select]")
        sel = None if with_sel is None else with_sel - enc  # may be < 0: noise
        rows.append({
            "variant": name, "prefill_ms": med[name] * 1e3, "speedup": dense / med[name],
            "encode_ms": enc * 1e3, "select_ms": None if sel is None else sel * 1e3,
            "select_share": None if sel is None else sel / med[name],
            "compile_s": compile_s[name],
        })  # fmt: skip
    table = lab.markdown_table(
        ["variant", "prefill ms", "speed-up vs dense", "selection ms", "selection share",
         "compile s"],
        [[r["variant"], f"{r['prefill_ms']:.2f}", f"{r['speedup']:.2f}",
          "" if r["select_ms"] is None else f"{r['select_ms']:.2f}",
          "" if r["select_share"] is None else f"{r['select_share']:.1%}",
          f"{r['compile_s']:.1f}"] for r in rows],
    )  # fmt: skip
    table += (
        f"\nVision encoder + projector (all tokens, no selection): {enc * 1e3:.2f} ms; "
        "selection ms = (encoder + projector + selector) - that, medians of one run (a negative "
        "value is timing noise: the selector costs less than the run-to-run spread).\n"
    )
    result = {"machine": lab.machine(), "batch": args.batch, "size": size,
              "prompt": [before, n, after], "rows": rows, "raw": times,
              "wall_s": time.perf_counter() - started}  # fmt: skip
    text = (
        f"# VLM prefill ({size}: {config.vision.num_layers}-block ViT width "
        f"{config.vision.hidden_size}, {layers}-layer LLM width {config.llm.hidden_size}), "
        f"batch {args.batch}"
        f"\n\nMachine: {lab.describe(result['machine'])}.\n\n{table}"
    )
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
