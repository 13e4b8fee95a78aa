"""Instability analysis: is a network stable to SGD noise from iteration k?

Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"
(ICML 2020), the mechanism behind rewinding: IMP finds matching subnetworks when rewound to an
iteration k from which training is *stable*, i.e. two copies of the network trained from
iteration k with different SGD noise (data order, augmentation) end in minima joined by a
straight line of low error.

Commands:
  python -m pruneax.experiments.instability --preset tiny --workdir /tmp/inst  # smoke, digits
  python -m pruneax.experiments.instability --preset cpu_rewind_resnet \\
      --data_dir ../shared/data --spawn 0 250 --workdir runs/inst_rn

The presets are `pruneax.experiments.lottery_ticket`'s (same model, data, optimizer and iterations).
One parent run (seed ``--seed``) trains to the last spawn point, keeping its weights at every
spawn point k. From each k, ``--copies`` children train to the end, each with its own data order
and augmentation, a fresh optimizer state and the learning-rate schedule continued from k (as a
rewound ticket in ``lottery_ticket``). For every pair of children, the test error of
``(1 - a) * w_1 + a * w_2`` at ``--points`` evenly spaced ``a`` gives the *error barrier* (the
paper's instability): the highest error on the path minus the mean error of the two ends. A
barrier near 0 means stable from k. BatchNorm running statistics of each interpolated network
are re-estimated on training batches: interpolated statistics are not the statistics of the
interpolated network.

Every finished training run is checkpointed with orbax under ``WORKDIR/checkpoints``; a killed
run resumes after its last finished run. Outputs: ``WORKDIR/results.json``, ``results.csv`` (one
row per pair) and ``instability.png`` (test error along the path, one curve per spawn point).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax import lab
from pruneax import weights as W
from pruneax.experiments import _common as common
from pruneax.experiments import lottery_ticket as lt


def error_barrier(errors) -> float:
    """The LMC paper's instability: the highest error along the path (``errors`` from one end
    to the other) minus the mean of the two ends' errors."""
    e = np.asarray(errors, np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"errors must be a 1-D sequence of at least 2 values; got shape {e.shape}")
    return float(e.max() - (e[0] + e[-1]) / 2)


def _jobs(spawn: tuple[int, ...], copies: int) -> list[tuple[str, int, int]]:
    """("parent", k_max, 0), then ("child", k, c) for every spawn point and copy."""
    jobs = [("parent", max(spawn), 0)] if max(spawn) > 0 else []
    return jobs + [("child", k, c) for k in spawn for c in range(copies)]


class Interpolator:
    """Test error of interpolated weights, with BatchNorm statistics re-estimated."""

    def __init__(self, trainer: lt.Trainer, data: dict[str, jax.Array], bn_batches: int):
        self.trainer, self.data = trainer, data
        x = data["x_train"]  # the first training images, in batches of 256 (fewer if small)
        size = min(256, x.shape[0])
        count = max(1, min(bn_batches, x.shape[0] // size))
        self.bn_x = x[: count * size].reshape(count, size, *x.shape[1:])
        self._stats = jax.jit(self._stats_impl)

    def _stats_impl(self, params, rest, x):
        model = nnx.merge(self.trainer.graph_train, params, rest, copy=True)
        model(x)  # train mode: BatchNorm moves its running statistics towards this batch
        return nnx.split(model, nnx.Param, ...)[2]

    def errors(self, a, b, points: int) -> list[float]:
        (pa, ra), (pb, rb) = a, b
        has_stats = any(
            isinstance(v, nnx.BatchStat)
            for v in jax.tree.leaves(ra, is_leaf=lambda v: isinstance(v, nnx.Variable))
        )
        out = []
        for alpha in np.linspace(0.0, 1.0, points):
            mix = lambda u, v, al=alpha: (
                (1 - al) * u + al * v if jnp.issubdtype(u.dtype, jnp.floating) else u
            )
            params, rest = jax.tree.map(mix, pa, pb), jax.tree.map(mix, ra, rb)
            if has_stats and 0.0 < alpha < 1.0:  # the two ends keep their own statistics
                for x in self.bn_x:
                    rest = self._stats(params, rest, x)
            _, acc = self.trainer._eval(params, rest, self.data["x_test"], self.data["y_test"])
            out.append(1.0 - float(acc))
        return out


def run(
    cfg: lt.Config,
    workdir: str | pathlib.Path,
    data_dir: str | None = None,
    spawn: tuple[int, ...] = (0,),
    copies: int = 2,
    seed: int = 0,
    points: int = 11,
    bn_batches: int = 40,
) -> dict[str, Any]:
    """Runs (or resumes) the analysis; returns the dict also written to results.json."""
    spawn = tuple(sorted(set(int(k) for k in spawn)))
    if not spawn or spawn[0] < 0 or spawn[-1] >= cfg.iterations:
        raise ValueError(f"spawn must be iterations in [0, {cfg.iterations}); got {spawn}")
    if copies < 2:
        raise ValueError(f"copies must be at least 2 (pairs are compared); got {copies}")
    if points < 3:
        raise ValueError(f"points must be at least 3; got {points}")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    arrays = lt.prepare(cfg, data_dir)
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    input_shape = tuple(arrays["x_train"].shape[1:])
    setup = {
        "config": lab.config_json(cfg),
        "spawn": list(spawn),
        "copies": copies,
        "seed": seed,
        "points": points,
        "bn_batches": bn_batches,
    }
    model = lt.make_model(cfg, input_shape, jax.random.key(seed))
    _, theta0, rest0 = nnx.split(model, nnx.Param, ...)
    trainer = lt.Trainer(cfg, model)
    jobs = _jobs(spawn, copies)
    ckpt = lab.Checkpoints(workdir / "checkpoints")
    state: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    first = 0
    latest = ckpt.latest()
    if latest is not None:
        step, state, meta = latest
        if meta["setup"] != setup:
            raise ValueError(
                f"workdir {workdir} holds checkpoints of a different setup; use a new --workdir"
            )
        runs, first = meta["runs"], step + 1
        print(f"[instability] resuming after run {step + 1}/{len(jobs)}", flush=True)
    masks = W.layerwise_masks(W.magnitude_scores(theta0), 0.0)  # dense: nothing pruned
    base = jax.random.key(seed)
    metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0
    for j in lab.progress(range(first, len(jobs)), desc="instability runs"):
        kind, k, c = jobs[j]
        label = f"{kind} from 0 to {k}" if kind == "parent" else f"child {c} from {k}"
        print(f"[instability] run {j + 1}/{len(jobs)}: {label}", flush=True)
        if kind == "parent":
            parent = lt.Trainer(dataclasses.replace(cfg, iterations=k), model)
            *_, curve, captured = parent.train(
                theta0, rest0, masks, data, jax.random.fold_in(base, 1 << 20), 0, spawn, label
            )
            for s in spawn[1:]:
                state[f"theta_{s}"], state[f"rest_{s}"] = captured[s]
        else:
            params = common.restore_like(theta0, state[f"theta_{k}"]) if k else theta0
            rest = common.restore_like(rest0, state[f"rest_{k}"]) if k else rest0
            key = jax.random.fold_in(base, 1000 * k + c)
            params, rest, curve, _ = trainer.train(params, rest, masks, data, key, k, label=label)
            state[f"final_{k}_{c}"], state[f"final_rest_{k}_{c}"] = params, rest
            runs.append({"spawn": k, "copy": c, "final_test_acc": curve[-1][3]})
        tag = f"parent_to_{k}" if kind == "parent" else f"spawn{k}_copy{c}"
        for it, val_loss, val_acc, test_acc in curve:
            metrics.scalar(f"{tag}/val_loss", val_loss, it)
            metrics.scalar(f"{tag}/val_acc", val_acc, it)
            metrics.scalar(f"{tag}/test_acc", test_acc, it)
        state = common.state_to_numpy(state)
        ckpt.save(j, state, {"setup": setup, "runs": runs}, flat=False, wait=True)

    interp = Interpolator(trainer, data, bn_batches)
    pairs = []
    for k in spawn:
        for c1, c2 in itertools.combinations(range(copies), 2):
            ends = [
                (
                    common.restore_like(theta0, state[f"final_{k}_{c}"]),
                    common.restore_like(rest0, state[f"final_rest_{k}_{c}"]),
                )
                for c in (c1, c2)
            ]
            errors = interp.errors(*ends, points)
            for alpha, err in zip(np.linspace(0.0, 1.0, points), errors, strict=True):
                metrics.scalar(
                    f"spawn{k}/copies{c1}_{c2}/test_error_vs_alpha_percent", err, round(100 * alpha)
                )
            pairs.append(
                {
                    "spawn": k,
                    "copies": [c1, c2],
                    "errors": errors,
                    "barrier": error_barrier(errors),
                    "end_errors": [errors[0], errors[-1]],
                }
            )
            print(f"[instability] spawn {k} copies {c1},{c2}: barrier {pairs[-1]['barrier']:.4f}")
    metrics.close()
    return _write_outputs(workdir, setup, runs, pairs)


def _write_outputs(workdir: pathlib.Path, setup, runs, pairs) -> dict[str, Any]:
    summary = []
    for k in setup["spawn"]:
        b = [p["barrier"] for p in pairs if p["spawn"] == k]
        summary.append({"spawn": k, "barrier_mean": float(np.mean(b)), "pairs": len(b)})
    out = {**setup, "machine": lab.machine(), "runs": runs, "pairs": pairs, "summary": summary}
    lab.write_json(workdir / "results.json", out)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["spawn", "copy_a", "copy_b", "barrier", "error_a", "error_b"])
    for p in pairs:
        writer.writerow([p["spawn"], *p["copies"], p["barrier"], *p["end_errors"]])
    lab.write_text(workdir / "results.csv", buf.getvalue())
    _plot(workdir / "instability.png", setup, pairs)
    return out


def _plot(path: pathlib.Path, setup, pairs) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    alphas = np.linspace(0.0, 1.0, setup["points"])
    for i, k in enumerate(setup["spawn"]):
        for n, p in enumerate(q for q in pairs if q["spawn"] == k):
            ax.plot(
                alphas,
                100 * np.asarray(p["errors"]),
                "o-",
                color=colors[i % len(colors)],
                alpha=0.8,
                label=f"spawned at k={k} (barrier {100 * p['barrier']:.1f})" if n == 0 else None,
            )
    cfg = setup["config"]
    ax.set_xlabel("interpolation a: (1 - a) w1 + a w2")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"instability: {cfg['model']} on {cfg['dataset']}, seed {setup['seed']}")
    ax.legend()
    fig.tight_layout()
    common.save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # every field of the lottery ticket's config is a flag too (--iterations, --learning_rate..)
    parser = common.ConfigParser(lt.PRESETS, description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(lt.PRESETS), default="tiny")
    parser.add_argument("--workdir", required=True, help="results, plot and checkpoints go here")
    parser.add_argument("--data_dir", default=None, help="dataset dir (or PRUNEAX_DATA_DIR)")
    parser.add_argument("--spawn", type=int, nargs="+", default=[0], help="spawn iterations k")
    parser.add_argument("--copies", type=int, default=2, help="children per spawn point")
    parser.add_argument("--seed", type=int, default=0, help="the parent's seed")
    parser.add_argument("--points", type=int, default=11, help="interpolation points")
    args = parser.parse_args(argv)
    cfg = common.replace_given(lt.PRESETS[args.preset], args)
    if cfg.dataset == "digits":
        print("[instability] no data dir: using scikit-learn's bundled digits", flush=True)
    spawn = tuple(args.spawn)
    out = run(cfg, args.workdir, args.data_dir, spawn, args.copies, args.seed, args.points)
    for row in out["summary"]:
        print(f"spawn {row['spawn']}: mean error barrier {100 * row['barrier_mean']:.2f} points")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
