"""Weight-pruning benchmark: the cost of masking a training step, and of computing masks.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/weights.py --out results/benchmarks/weights.md
  python benchmarks/weights.py --quick          # smoke: tiny sizes, a few seconds

1. A jitted training step (forward, backward, optimizer, apply) with and without
   ``pruneax.weights.masked_optimizer`` at 80% sparsity: same model, same batch, same machine,
   timed alternately in one run; reported as the ratio of medians (target <= 1.10). Each timed
   call runs ``steps`` optimizer steps in a ``lax.scan`` so dispatch does not dominate; on the
   CPU backend the conv-net cases (``--convnets``) call a jitted step from Python instead
   (``pruneax.experiments._common.steps_from_python``: XLA:CPU convolutions in a while loop
   are slow).
2. ``global_masks`` (global magnitude top-k) on a 100M-parameter pytree: median wall time.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import lab, models  # noqa: E402
from pruneax import weights as W  # noqa: E402
from pruneax.experiments._common import steps_from_python  # noqa: E402


def _step_case(name, model, x, y, tx, steps, repeats, sparsity=0.8, loop="scan"):
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    masks = W.layerwise_masks(W.magnitude_scores(params), sparsity)

    def loss(p, r, xb, yb):
        m = nnx.merge(graph, p, r, copy=True)  # copy: BatchNorm updates its statistics
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

    def make(opt):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p, rest, x, y)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        if loop == "scan":
            return jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps)[0])
        one = jax.jit(lambda p, s: body((p, s), None)[0])

        def run(p, s):
            for _ in range(steps):
                p, s = one(p, s)
            return p, s

        return run

    plain, masked = tx, W.masked_optimizer(tx, masks)
    p_masked = W.apply_masks(params, masks)
    runs = {
        "dense": (make(plain), params, plain.init(params)),
        "masked": (make(masked), p_masked, masked.init(p_masked)),
    }
    # dense and masked alternate so both see the same machine state; compiled first (warmup)
    fns = {k: (lambda r=r, p=p, s=s: r(p, s)) for k, (r, p, s) in runs.items()}
    med = lab.medians(lab.time_alternating(fns, repeats=repeats))
    dense, masked_t = med["dense"] / steps, med["masked"] / steps
    out = runs["masked"][0](p_masked, runs["masked"][2])[0]
    zero = all(
        bool(jnp.all(jnp.where(m, True, w == 0)))
        for w, m in zip(
            jax.tree.leaves(out), jax.tree.leaves(masks, is_leaf=lambda v: v is None), strict=True
        )
        if m is not None
    )
    return {
        "case": name,
        "params": int(sum(np.size(v) for v in jax.tree.leaves(params))),
        "batch": int(x.shape[0]),
        "dense_ms_per_step": dense * 1e3,
        "masked_ms_per_step": masked_t * 1e3,
        "ratio": masked_t / dense,
        "pruned_stay_zero": zero,
    }


def step_benchmark(quick: bool, convnets: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    cases = []
    rngs = nnx.Rngs(0)
    steps, repeats = (5, 3) if quick else (200, 9)
    if quick:
        x = jnp.asarray(rng.random((16, 8, 8, 1), np.float32))
        y = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
        cases.append(
            ("LeNet-300-100 (8x8), adam", models.LeNet300100(in_features=64, rngs=rngs), x, y)
        )
    else:
        x = jnp.asarray(rng.random((60, 28, 28, 1), np.float32))
        y = jnp.asarray(rng.integers(0, 10, 60), jnp.int32)
        cases.append(("LeNet-300-100, MNIST batch 60, adam", models.LeNet300100(rngs=rngs), x, y))
    if convnets:
        xc = jnp.asarray(rng.random((60, 32, 32, 3), np.float32))
        yc = jnp.asarray(rng.integers(0, 10, 60), jnp.int32)
        cases.append(("Conv-4, CIFAR batch 60, adam", models.ConvNet("conv4", rngs=rngs), xc, yc))
    out = []
    for name, model, xb, yb in cases:
        print(f"[weights] training step: {name}", flush=True)
        conv = "Conv" in name
        out.append(
            _step_case(
                name,
                model,
                xb,
                yb,
                optax.adam(1e-3),
                20 if conv else steps,
                repeats,
                loop="python" if steps_from_python(conv) else "scan",
            )
        )
    if convnets:
        xr = jnp.asarray(rng.random((128, 32, 32, 3), np.float32))
        yr = jnp.asarray(rng.integers(0, 10, 128), jnp.int32)
        model = models.ResNet20(rngs=rngs)
        model.train()
        name = "ResNet-20, CIFAR batch 128, sgd momentum"
        loop = "python" if steps_from_python(True) else "scan"
        print(f"[weights] training step: {name}", flush=True)
        out.append(_step_case(name, model, xr, yr, optax.sgd(0.1, momentum=0.9), 10, 5, loop=loop))
    return out


def mask_benchmark(quick: bool) -> dict:
    total = 1_000_000 if quick else 100_000_000
    leaves = 10
    rng = np.random.default_rng(1)
    per = total // leaves
    params = {
        f"layer{i}": {"kernel": jnp.asarray(rng.standard_normal((per // 1000, 1000), np.float32))}
        for i in range(leaves)
    }
    scores = W.magnitude_scores(params)
    fn = jax.jit(lambda s: W.global_masks(s, 0.8))
    t = lab.medians(lab.time_alternating({"m": lambda: fn(scores)}, repeats=3 if quick else 1))["m"]
    masks = fn(scores)
    report = W.sparsity_report(masks)
    return {
        "params": total,
        "leaves": leaves,
        "sparsity_target": 0.8,
        "sparsity_got": report.sparsity,
        "seconds_median": t,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="results/benchmarks/weights.md")
    parser.add_argument(
        "--convnets", action="store_true", help="also Conv-4 and ResNet-20 (slow on CPU)"
    )
    args = parser.parse_args(argv)
    machine = lab.machine()
    steps = step_benchmark(args.quick, args.convnets)
    mask = mask_benchmark(args.quick)
    lines = [
        "# Weight-pruning benchmark",
        "",
        f"Machine: {lab.describe(machine)}. Command: `python benchmarks/weights.py"
        f"{' --quick' if args.quick else ''}{' --convnets' if args.convnets else ''}`.",
        "",
        "| training step | params | batch | dense ms/step | masked ms/step | ratio "
        "| pruned stay 0 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in steps:
        lines.append(
            f"| {r['case']} | {r['params']:,} | {r['batch']} | {r['dense_ms_per_step']:.3f} | "
            f"{r['masked_ms_per_step']:.3f} | {r['ratio']:.3f} | {r['pruned_stay_zero']} |"
        )
    lines += [
        "",
        f"Global magnitude masks (`jit(global_masks)`, sparsity 0.8) on {mask['params']:,} "
        f"parameters in {mask['leaves']} leaves: {mask['seconds_median']:.2f} s "
        f"(got sparsity {mask['sparsity_got']:.6f}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    result = {"machine": machine, "steps": steps, "masks": mask}
    lab.write_report(args.out, text, result)
    return result


if __name__ == "__main__":
    main()
