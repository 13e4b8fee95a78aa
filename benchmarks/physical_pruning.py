"""Filter pruning: masked vs physically pruned ConvNet forward pass (issue 17).

Command (numbers in BUILD_NOTES.md):
  python benchmarks/physical_pruning.py --out results/benchmarks/physical_pruning.md
  python benchmarks/physical_pruning.py --quick     # smoke: Conv-2, batch 4, a few seconds

For each ConvNet (Conv-2 / Conv-4 / Conv-6 on MNIST-shaped input, 28x28x1, random weights:
speed does not depend on training) and each fraction (30%, 50%, 70%) of the filters of EVERY
conv layer removed (``round(fraction * width)`` filters per layer, a uniform random choice with
a fixed seed): the masked model (the original with ``apply_masks(params, filter_masks(...))``,
what ``iterative_filter_pruning`` leaves) and the physically pruned one (``remove_filters``) run
their jitted forward pass on a batch of 256 images. All variants of a model are timed
ALTERNATELY in one run (``pruneax.lab.time_alternating``, results blocked on); the speed-up is
the ratio of the medians, the ideal one the ratio of multiply-accumulates (conv + dense). The
removed model's logits are checked against the masked model's (max abs difference reported).
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
from pruneax import weights as W  # noqa: E402

FRACTIONS = (0.3, 0.5, 0.7)
INPUT_SHAPE = (28, 28, 1)  # MNIST


def _random_model(build, seed: int = 0) -> nnx.Module:
    """``build()``'s model with N(0, 2 / fan_in) kernels and N(0, 0.01) biases drawn by NumPy:
    building the model abstractly and filling it avoids compiling every JAX initializer."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    leaves = []
    for name, leaf in zip(W.leaf_names(state), jax.tree.leaves(state), strict=True):
        std = np.sqrt(2 / np.prod(leaf.shape[:-1])) if name.endswith("kernel") else 0.01
        leaves.append(jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32))
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def random_filters(model, fraction: float, seed: int) -> list[tuple[str, int]]:
    """``round(fraction * width)`` filters of every conv layer, uniformly at random (at least
    one kept)."""
    rng = np.random.default_rng(seed)
    pruned = []
    for i, conv in enumerate(model.convs):
        width = conv.out_features
        n = min(round(fraction * width), width - 1)
        pruned += [(f"convs/{i}", int(j)) for j in rng.choice(width, n, replace=False)]
    return pruned


def macs(model) -> int:
    """Multiply-accumulates of one example's forward pass (3x3 SAME convs, dense layers)."""
    h, w, c = model.input_shape
    total, i = 0, 0
    for n in model.stage_sizes:
        for _ in range(n):
            out = model.convs[i].out_features
            total += h * w * 9 * c * out
            c, i = out, i + 1
        h, w = h // 2, w // 2
    return total + sum(fc.in_features * fc.out_features for fc in [*model.fcs, model.out])


def _forward(model):
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda x: fwd(state, x)


def bench(variant: str, *, batch: int, repeats: int, number: int, seed: int) -> list[dict]:
    model = _random_model(
        lambda: models.ConvNet(variant, input_shape=INPUT_SHAPE, rngs=nnx.Rngs(0))
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(seed), (batch, *INPUT_SHAPE), jnp.float32)
    variants, pruned_sets = {}, {}
    for k, fraction in enumerate(FRACTIONS):
        pruned = random_filters(model, fraction, seed + k)
        masked = W.apply_masks(params, W.filter_masks(params, pruned))
        variants[f"masked {fraction:g}"] = nnx.merge(graphdef, masked, rest)
        variants[f"removed {fraction:g}"] = models.remove_filters(model, pruned)
        pruned_sets[fraction] = pruned
    fwd = {name: _forward(m) for name, m in variants.items()}
    fns = {name: (lambda f=f: f(x)) for name, f in fwd.items()}  # masked and removed alternate
    times = lab.time_alternating(fns, repeats=repeats, number=number)
    med = lab.medians(times)
    rows = []
    for fraction in FRACTIONS:
        m_name, r_name = f"masked {fraction:g}", f"removed {fraction:g}"
        masked, removed = variants[m_name], variants[r_name]
        diff = float(jnp.abs(fwd[m_name](x) - fwd[r_name](x)).max())
        row = {
            "model": variant,
            "fraction": fraction,
            "filters_removed": len(pruned_sets[fraction]),
            "filters": sum(c.out_features for c in model.convs),
            "widths": list(removed.widths),
            "batch": batch,
            "params_masked": models.param_count(masked),
            "params_removed": models.param_count(removed),
            "masked_median_s": med[m_name],
            "removed_median_s": med[r_name],
            "masked_times_s": times[m_name],
            "removed_times_s": times[r_name],
            "speedup": med[m_name] / med[r_name],
            "ideal_speedup": macs(masked) / macs(removed),
            "max_abs_logit_diff": diff,
        }
        rows.append(row)
        print(
            f"{variant} {fraction:.0%} removed: masked {med[m_name] * 1e3:8.2f} ms  removed "
            f"{med[r_name] * 1e3:8.2f} ms  speed-up {row['speedup']:.2f} (ideal "
            f"{row['ideal_speedup']:.2f})  max |dlogit| {diff:.1e}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/physical_pruning.md")
    parser.add_argument("--quick", "--smoke", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--variants", nargs="+", default=["conv2", "conv4", "conv6"],
                        choices=sorted(models.CONVNET_VARIANTS))  # fmt: skip
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--number", type=int, default=3, help="calls per timed sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        variants, batch, repeats, number = ["conv2"], 4, 2, 1
    else:
        variants, batch, repeats, number = args.variants, args.batch, args.repeats, args.number
    rows = []
    for variant in variants:
        rows += bench(variant, batch=batch, repeats=repeats, number=number, seed=args.seed)
    result = {
        "machine": lab.machine(),
        "input_shape": list(INPUT_SHAPE),
        "batch": batch,
        "repeats": repeats,
        "number": number,
        "seed": args.seed,
        "rows": rows,
    }
    header = ["model", "filters removed", "params masked", "params removed", "masked ms",
              "removed ms", "speed-up", "ideal", "max abs diff"]  # fmt: skip
    table = lab.markdown_table(
        header,
        [
            [r["model"], f"{r['fraction']:.0%} ({r['filters_removed']}/{r['filters']})",
             f"{r['params_masked']:,}", f"{r['params_removed']:,}",
             f"{r['masked_median_s'] * 1e3:.2f}", f"{r['removed_median_s'] * 1e3:.2f}",
             f"{r['speedup']:.2f}", f"{r['ideal_speedup']:.2f}", f"{r['max_abs_logit_diff']:.1e}"]
            for r in rows
        ],
    )  # fmt: skip
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/physical_pruning.py", *given])
    text = (
        "# Masked vs physically pruned ConvNet (forward pass)\n\n"
        f"Machine: {lab.describe(result['machine'])}. Command: `{command}`. Input "
        f"{INPUT_SHAPE} (MNIST), batch {batch}, median of {repeats} samples of {number} "
        "call(s), masked and removed timed alternately.\n\n"
        f"{table}"
    )
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
