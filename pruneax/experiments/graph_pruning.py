"""Structured pruning of a model through its jaxpr (``pruneax.graph``), with fine-tuning.

Commands:
  python -m pruneax.experiments.graph_pruning --preset tiny --workdir /tmp/gp  # digits, ~1 min
  python -m pruneax.experiments.graph_pruning --preset cpu --data_dir ../shared/data \
      --workdir runs/graph_pruning
  python -m pruneax.experiments.graph_pruning --preset gpu --data_dir ../shared/data \
      --workdir runs/graph_pruning_gpu

A ResNet-20 is trained (SGD, batch-norm in training mode), then its inference function (batch
norm from running statistics) is traced once; ``pruneax.graph`` finds the coupled channel
groups (residual streams across a stage, each block's inner channels). At each FLOPs budget
(a fraction of the traced FLOPs removed) three selections are compared:

- ``global_l2``: Structurally-Prune-Anything style: every group scored by its squared L2 norm
  over all coupled kernels, divided by the group's mean, ranked globally;
- ``global_taylor``: the same with first-order Taylor scores ``|w * dL/dw|`` summed over
  ``calib_batches`` training batches;
- ``uniform_l1``: magnitude structured pruning: the same fraction of every group, by group L1
  norm (the fraction searched so the model meets the same FLOPs budget);
- ``masksparsity`` (MaskSparsity, pruning-aware sparse regularisation): the channels
  ``global_l2`` removes are chosen first; training then continues from the dense model for
  ``sparsity_iterations`` with ``s * sign(gamma)`` added to the gradient of exactly their
  batch-norm scales (``pruneax.weights.mask_sparsity``; every coupled scale of a residual
  channel), so that removing them loses less; then the same pruning and fine-tuning. It gets
  ``sparsity_iterations`` more training than the others.

Training-time unstructured pruning, at each of ``weight_sparsities`` (a fraction of every
kernel removed), trained from scratch with the dense schedule: ``iss_p`` (ISS-P: the smallest
weights of each layer multiplied by 0.95 after every step for ``soft_fraction`` of the
iterations, then a fixed mask) and ``iht`` (the same with 0: iterative hard thresholding).
These keep the dense shapes: they are reported against nonzero parameters, not FLOPs.

The pruned parameters are physically smaller. Accuracy before fine-tuning is the pruned
inference program with the dense model's batch-norm running averages (no recalibration). The
training-mode forward is traced too, its updated running averages as ``free_outputs`` (they
shrink with their channels), and the pruned training program (``PrunedFunction``) is
fine-tuned for ``finetune_iterations`` with batch statistics, its running averages updated as
in training. Accuracy is reported before and after fine-tuning, with parameters, FLOPs and the
measured speed-up of the jitted pruned program over the dense one (medians, alternated in one
process). CIFAR-10 is read from the JPEG copy in the data directory (lossy: not the original
pixels).

Dense training and every fine-tune are checkpointed with orbax under ``WORKDIR/checkpoints``; a
finished job is recorded in ``WORKDIR/progress.json`` and not run again. Outputs:
``WORKDIR/results.json``, ``results.csv``, ``graph_pruning.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruneax import graph as G
from pruneax import lab, models
from pruneax import weights as W
from pruneax.experiments import _common as common

METHODS = ("global_l2", "global_taylor", "uniform_l1", "masksparsity")
UNSTRUCTURED = ("iss_p", "iht")


@dataclasses.dataclass(frozen=True)
class Config:
    """One graph-pruning experiment; iterations count optimizer steps."""

    dataset: str = "digits"  # digits | cifar10
    width: int = 8  # ResNet-20's first-stage filters
    train_size: int = 0  # 0 = the whole training split
    iterations: int = 600
    finetune_iterations: int = 150
    batch_size: int = 64
    learning_rate: float = 0.1  # SGD momentum 0.9, cosine decay
    finetune_lr: float = 0.01
    weight_decay: float = 5e-4
    augment: bool = False
    amounts: tuple[float, ...] = (0.3, 0.5, 0.7)  # fractions of the FLOPs removed
    methods: tuple[str, ...] = METHODS
    calib_batches: int = 4
    weight_sparsities: tuple[float, ...] = ()  # ISS-P / IHT jobs (none by default)
    unstructured: tuple[str, ...] = UNSTRUCTURED
    soft_fraction: float = 0.75
    # MaskSparsity: steps of regularised training and its strength. The shrinkage a scale can
    # receive, lr_mean * s * steps / (1 - momentum), is ~1.25 at the cpu preset; the published
    # CIFAR ResNet runs (s ~ 1e-4, 64K steps at lr ~ 0.05) give ~3.
    sparsity_iterations: int = 100
    sparsity_s: float = 0.05
    sparsity_lr: float = 0.05
    eval_size: int = 0  # 0 = the whole test split
    eval_batch: int = 200
    throughput_batch: int = 64
    throughput_repeats: int = 7
    ckpt_every: int = 200
    log_every: int = 50
    seed: int = 0


PRESETS: dict[str, Config] = {
    # Smoke test on the embedded digits (8x8): a width-8 ResNet-20 trained for seconds.
    "tiny": Config(
        iterations=300,
        finetune_iterations=60,
        amounts=(0.3, 0.6),
        eval_size=360,
        weight_sparsities=(0.9,),
    ),
    # (cpu: MaskSparsity regularises for 1,000 steps at s = 0.005)
    # CIFAR-10 (JPEG copy), width-8 ResNet-20 on 20K training images, ~10 epochs (3,000
    # steps of 64) with augmentation, 500 fine-tuning steps per pruned model.
    "cpu": Config(
        dataset="cifar10",
        train_size=20_000,
        iterations=3_000,
        finetune_iterations=500,
        augment=True,
        eval_size=5_000,
        ckpt_every=500,
        sparsity_iterations=1_000,
        sparsity_s=0.005,
    ),
    # The usual CIFAR-10 ResNet-20 (width 16): 64K steps of 128 (~160 epochs), 5K fine-tuning.
    "gpu": Config(
        dataset="cifar10",
        width=16,
        iterations=64_000,
        finetune_iterations=5_000,
        batch_size=128,
        augment=True,
        amounts=(0.3, 0.5, 0.7, 0.85),
        sparsity_iterations=10_000,
        sparsity_s=1e-3,
        ckpt_every=2_000,
        log_every=200,
    ),
}


def check_config(cfg: Config) -> None:
    if cfg.dataset not in ("digits", "cifar10"):
        raise ValueError(f"dataset: expected 'digits' or 'cifar10', got {cfg.dataset!r}")
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"methods: expected names from {METHODS}, got {m!r}")
    for a in cfg.amounts:
        if not 0.0 < a < 1.0:
            raise ValueError(f"amounts: expected fractions in (0, 1), got {a}")
    for a in cfg.weight_sparsities:
        if not 0.0 < a < 1.0:
            raise ValueError(f"weight_sparsities: expected fractions in (0, 1), got {a}")
    for m in cfg.unstructured:
        if m not in UNSTRUCTURED:
            raise ValueError(f"unstructured: expected names from {UNSTRUCTURED}, got {m!r}")
    if not 0.0 <= cfg.soft_fraction <= 1.0:
        raise ValueError(f"soft_fraction: expected a fraction in [0, 1], got {cfg.soft_fraction}")
    for name in ("iterations", "batch_size", "eval_batch", "throughput_batch", "calib_batches"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: expected >= 1, got {getattr(cfg, name)}")


# ----------------------------------------------------------------------------- model and data
def prepare(cfg: Config, data_dir: str | None) -> dict[str, np.ndarray]:
    data = common.load_standardized(cfg.dataset, data_dir)
    if cfg.train_size and cfg.train_size < len(data["x_train"]):
        idx = np.random.default_rng(cfg.seed).permutation(len(data["x_train"]))[: cfg.train_size]
        data["x_train"], data["y_train"] = data["x_train"][idx], data["y_train"][idx]
    if cfg.eval_size and cfg.eval_size < len(data["x_test"]):
        data["x_test"], data["y_test"] = (
            data["x_test"][: cfg.eval_size],
            data["y_test"][: cfg.eval_size],
        )
    return data


def _model(cfg: Config, num_classes: int, channels: int) -> nnx.Module:
    return models.CifarResNet(
        "resnet20",
        width=cfg.width,
        num_classes=num_classes,
        in_channels=channels,
        rngs=nnx.Rngs(cfg.seed),
    )


class Dense:
    """The ResNet as two pure functions of one pytree of NumPy-able dicts: training mode (batch
    statistics, returns the updated running averages) and inference mode (what is traced)."""

    def __init__(self, model: nnx.Module):
        model.train()
        self.train_gd, state = nnx.split(model)
        model.eval()
        self.eval_gd, _ = nnx.split(model)
        self.abstract = state
        self.state0 = nnx.to_pure_dict(state)

    def _merge(self, graphdef, p):
        st = jax.tree.map(lambda v: v, self.abstract)
        nnx.replace_by_pure_dict(st, p)
        return nnx.merge(graphdef, st)

    def infer(self, p, x):
        return self._merge(self.eval_gd, p)(x)

    def train_logits(self, p, x):
        m = self._merge(self.train_gd, p)
        logits = m(x)
        return logits, nnx.to_pure_dict(nnx.state(m))


def _sgd(cfg: Config, lr: float, steps: int, tree) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(lr, max(steps, 1))
    decay = jax.tree.map(lambda v: np.ndim(v) >= 2, tree)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=decay),
        optax.sgd(schedule, momentum=0.9),
    )


def _batches(cfg: Config, data, tag: str, step: int):
    n = len(data["x_train"])
    per_epoch = n // cfg.batch_size
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng((cfg.seed, zlib.crc32(tag.encode()), epoch)).permutation(n)
    idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
    return data["x_train"][idx], data["y_train"][idx]


def train(cfg, data, tag, params, loss_fn, tx, steps, ckpt_dir, *, with_stats=False, metrics=None):
    """SGD for ``steps`` steps from ``params`` (resumed from ``ckpt_dir``); ``loss_fn(p, x, y)``
    returns ``(loss, new_stats)`` when ``with_stats`` (training-mode batch norm). The loss
    curve goes to ``metrics`` (a ``lab.MetricWriter``) under ``<tag>/loss``."""
    ckpt = lab.Checkpoints(ckpt_dir)
    opt_state = tx.init(params)
    start = 0
    restored = ckpt.latest((params, opt_state))
    if restored is not None:
        start, (params, opt_state), _ = restored
        print(f"  [{tag}] resuming at step {start}/{steps}", flush=True)

    @jax.jit
    def step_fn(params, opt_state, x, y, key):
        if cfg.augment:
            x = common.random_crop_flip(key, x)
        if with_stats:
            (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        else:
            loss, g = jax.value_and_grad(loss_fn)(params, x, y)
            stats = params
        updates, opt_state = tx.update(g, opt_state, params)
        new = optax.apply_updates(params, updates)
        if with_stats:  # running averages come from the forward pass, not the optimizer
            new = jax.tree.map(lambda n, s, t: n if t else s, new, stats, train_mask(params))
        return new, opt_state, loss

    t0, window = time.perf_counter(), []
    for step in lab.progress(range(start, steps), desc=tag):
        x, y = _batches(cfg, data, tag, step)
        key = jax.random.fold_in(jax.random.key(cfg.seed + 7), step)
        params, opt_state, loss = step_fn(params, opt_state, x, y, key)
        window.append(loss)
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
            rate = (done - start) / (time.perf_counter() - t0)
            mean = float(jnp.mean(jnp.stack(window)))
            print(f"  [{tag}] step {done:6d}/{steps}  loss {mean:.4f}  ({rate:.1f} steps/s)")
            if metrics is not None:
                metrics.scalar(f"{tag}/loss", mean, done)
            window = []
        if done % cfg.ckpt_every == 0 or done == steps:
            ckpt.save(done, (params, opt_state), {}, wait=done == steps)
    return params


def train_mask(tree):
    """True for trainable leaves (not batch-norm running averages) of a pure-dict state."""
    marks = [not n.endswith(("/mean", "/var")) for n in W.leaf_names(tree)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), marks)


def _stats_output(path: str) -> bool:
    """The updated state a training-mode forward returns beside its logits (output 1)."""
    return path.startswith("1/")


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(fn, params, data, batch: int) -> float:
    f = jax.jit(fn)
    x, y = data["x_test"], data["y_test"]
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        pad = batch - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        pred = np.asarray(f(params, jnp.asarray(xb))).argmax(-1)[: batch - pad]
        correct += int((pred == y[i : i + batch]).sum())
    return correct / len(x)


# ----------------------------------------------------------------------------- selection
def taylor_scores(cfg, data, dense: Dense, params, g) -> dict[int, np.ndarray]:
    """Group sums of |w * dL/dw| accumulated over ``calib_batches`` training batches."""
    grad = jax.jit(jax.grad(lambda p, x, y: _ce(dense.infer(p, x), y)))
    acc = jax.tree.map(np.zeros_like, params)
    for b in range(cfg.calib_batches):
        x, y = _batches(cfg, data, "calib", b)
        gr = grad(params, jnp.asarray(x), jnp.asarray(y))
        acc = jax.tree.map(
            lambda a, w, d: a + np.abs(np.asarray(w) * np.asarray(d)), acc, params, gr
        )
    return G.group_scores(g, params, acc)


def choose(cfg, method: str, amount: float, g, params, scores) -> dict:
    """The kept channels of ``method`` at ``amount`` of the FLOPs removed."""
    if method in ("global_l2", "global_taylor", "masksparsity"):
        key = "global_l2" if method == "masksparsity" else method
        return G.select(g, scores[key], amount, by="flops")
    target = (1.0 - amount) * G.flops(g)
    lo, hi = 0.0, 0.999
    for _ in range(30):  # the smallest uniform fraction that meets the FLOPs budget
        mid = (lo + hi) / 2
        keep = G.select(g, scores["uniform_l1"], mid, scope="local")
        lo, hi = (lo, mid) if G.flops(g, keep) <= target else (mid, hi)
    return G.select(g, scores["uniform_l1"], hi, scope="local")


def bn_masks(g, params, keep):
    """MaskSparsity's mask tree: True on the batch-norm scale entries of removed channels."""
    kept = G.mask(g, jax.tree.map(np.ones_like, params), keep)  # 0 where removed
    return W.bn_prune_masks(kept, 0.5)


def regularise(cfg, data, dense: Dense, params, g, keep, tag, ckpt_dir, metrics=None):
    """MaskSparsity's step 4: training with s * sign(gamma) on the scales of removed channels;
    returns the parameters and the mean |gamma| of those scales before and after."""
    masks = bn_masks(g, params, keep)

    def gamma(p):
        vals = []

        def grab(m, v):
            if m is not None:
                vals.append(np.abs(np.asarray(v))[np.asarray(m)])

        jax.tree.map(grab, masks, p, is_leaf=lambda x: x is None)
        return float(np.mean(np.concatenate(vals))) if vals else float("nan")

    def loss(p, x, y):
        logits, stats = dense.train_logits(p, x)
        return _ce(logits, y), stats

    sgd = _sgd(cfg, cfg.sparsity_lr, cfg.sparsity_iterations, params)
    tx = optax.chain(W.mask_sparsity(cfg.sparsity_s, masks), sgd)
    out = train(cfg, data, tag, params, loss, tx, cfg.sparsity_iterations, ckpt_dir,
                with_stats=True, metrics=metrics)  # fmt: skip
    out = jax.tree.map(np.asarray, out)
    return out, {"gamma_before": gamma(params), "gamma_after": gamma(out)}


def unstructured(cfg, data, dense: Dense, loss, method, sparsity, ckpt_dir, metrics=None):
    """ISS-P (shrink 0.95) or IHT (shrink 0) from scratch with the dense schedule."""
    params = dense.state0
    inner = _sgd(cfg, cfg.learning_rate, cfg.iterations, params)
    tx = W.iss_p(
        inner,
        sparsity,
        shrink=0.95 if method == "iss_p" else 0.0,
        soft_steps=int(cfg.soft_fraction * cfg.iterations),
    )
    tag = f"{method}@w{sparsity}"
    out = train(
        cfg, data, tag, params, loss, tx, cfg.iterations, ckpt_dir, with_stats=True, metrics=metrics
    )
    out = jax.tree.map(np.asarray, out)
    names = W.prunable_names(out)
    kernels = [
        v for n, v in zip(W.leaf_names(out), jax.tree.leaves(out), strict=True) if n in names
    ]
    zeros = sum(int((v == 0).sum()) for v in kernels)
    return {
        "method": method,
        "amount": sparsity,
        "weight_sparsity": zeros / sum(v.size for v in kernels),
        "zeros": zeros,
        "flops_ratio": 1.0,
        "accuracy_before_ft": None,
        "accuracy": accuracy(dense.infer, out, data, cfg.eval_batch),
        "dense_s": None,
        "pruned_s": None,
        "speedup": None,
    }


def speedup(cfg, dense: Dense, params, run, small, x) -> dict[str, float]:
    f_dense, f_small = jax.jit(dense.infer), jax.jit(run)
    times = lab.time_alternating(
        {"dense": lambda: f_dense(params, x), "pruned": lambda: f_small(small, x)},
        repeats=cfg.throughput_repeats,
        warmup=1,
    )
    med = lab.medians(times)
    return {
        "dense_s": med["dense"],
        "pruned_s": med["pruned"],
        "speedup": med["dense"] / med["pruned"],
    }


# ----------------------------------------------------------------------------- run
def run(cfg: Config, workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
    check_config(cfg)
    workdir = pathlib.Path(workdir)
    progress = lab.Progress(workdir, cfg, ("dense", "jobs"))
    data = prepare(cfg, data_dir)
    classes = int(data["y_train"].max()) + 1
    dense = Dense(_model(cfg, classes, data["x_train"].shape[-1]))
    params = dense.state0
    ckdir = workdir / "checkpoints"
    metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0

    def dense_loss(p, x, y):
        logits, stats = dense.train_logits(p, x)
        return _ce(logits, y), stats

    tx = _sgd(cfg, cfg.learning_rate, cfg.iterations, params)
    params = train(cfg, data, "dense", params, dense_loss, tx, cfg.iterations, ckdir / "dense",
                   with_stats=True, metrics=metrics)  # fmt: skip
    params = jax.tree.map(np.asarray, params)
    x_eval = jnp.asarray(data["x_train"][: cfg.throughput_batch])
    g = G.trace(dense.infer, params, x_eval)
    x_batch = jnp.asarray(data["x_train"][: cfg.batch_size])
    g_train = G.trace(dense.train_logits, params, x_batch, free_outputs=_stats_output)
    if "accuracy" not in progress["dense"]:
        progress["dense"] = {
            "accuracy": accuracy(dense.infer, params, data, cfg.eval_batch),
            "flops": G.flops(g),
            "params": G.param_count(g),
            "groups": len(g.groups),
            "prunable": len(g.prunable()),
            "inexact": len(g.prunable(True)) - len(g.prunable()),
        }
        progress.save()
    print(f"[graph_pruning] dense {progress['dense']}", flush=True)
    print(g.summary().split("\n")[0], flush=True)
    scores = {
        "global_l2": G.group_scores(g, params),
        "uniform_l1": G.group_scores(g, params, jax.tree.map(np.abs, params)),
    }
    if "global_taylor" in cfg.methods:
        scores["global_taylor"] = taylor_scores(cfg, data, dense, params, g)
    for method in cfg.methods:
        for amount in cfg.amounts:
            name = f"{method}@{amount}"
            if name in progress["jobs"]:
                continue
            keep = choose(cfg, method, amount, g, params, scores)
            start, extra = params, {}
            if method == "masksparsity":
                start, extra = regularise(cfg, data, dense, params, g, keep, f"reg-{name}",
                                          ckdir / f"reg-{name}", metrics)  # fmt: skip
            small, pruned = G.prune(g, start, keep)
            before = accuracy(pruned, small, data, cfg.eval_batch)
            tx = _sgd(cfg, cfg.finetune_lr, cfg.finetune_iterations, small)
            _, pruned_train = G.prune(g_train, start, G.map_keep(g, g_train, keep))

            def ft_loss(p, x, y, pruned_train=pruned_train):
                logits, stats = pruned_train(p, x)
                return _ce(logits, y), stats

            tuned = train(cfg, data, f"ft-{name}", small, ft_loss, tx, cfg.finetune_iterations,
                          ckdir / f"ft-{name}", with_stats=True, metrics=metrics)  # fmt: skip
            row = {
                "method": method,
                "amount": amount,
                "flops": G.flops(g, keep),
                "params": G.param_count(g, keep),
                "accuracy_before_ft": before,
                "accuracy": accuracy(pruned, tuned, data, cfg.eval_batch),
                "channels_kept": {str(k): len(v) for k, v in keep.items()},
                **extra,
                **speedup(cfg, dense, params, pruned, tuned, x_eval),
            }
            row["flops_ratio"] = row["flops"] / progress["dense"]["flops"]
            permille = round(1000 * row["flops_ratio"])  # the curve's x: FLOPs kept, per mille
            metrics.scalar(f"eval/{method}/accuracy_vs_flops_permille", row["accuracy"], permille)
            progress["jobs"][name] = row
            progress.save()
            print(f"[graph_pruning] {name}: {_fmt(row)}", flush=True)
    for method in cfg.unstructured:
        for sparsity in cfg.weight_sparsities:
            name = f"{method}@w{sparsity}"
            if name not in progress["jobs"]:
                row = unstructured(
                    cfg, data, dense, dense_loss, method, sparsity, ckdir / name, metrics
                )
                row["params"] = progress["dense"]["params"] - row.pop("zeros")
                progress["jobs"][name] = row
                progress.save()
                print(f"[graph_pruning] {name}: accuracy {row['accuracy']:.4f}", flush=True)
    result = {
        "config": lab.config_json(cfg),
        "machine": lab.machine(),
        "dense": progress["dense"],
        "jobs": progress["jobs"],
        "graph": g.summary(),
    }
    metrics.close()
    write_outputs(workdir, result)
    return result


def _fmt(row: dict) -> str:
    return (
        f"flops {row['flops_ratio']:.3f}  acc {row['accuracy_before_ft']:.4f} -> "
        f"{row['accuracy']:.4f}  speed-up {row['speedup']:.2f}x"
    )


def write_outputs(workdir: pathlib.Path, result: dict[str, Any]) -> None:
    lab.write_json(workdir / "results.json", result)
    fields = ("method", "amount", "flops_ratio", "params", "accuracy_before_ft", "accuracy",
              "dense_s", "pruned_s", "speedup")  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(fields)
    for row in result["jobs"].values():
        w.writerow([row.get(f) for f in fields])
    lab.write_text(workdir / "results.csv", buf.getvalue())
    plot(workdir / "graph_pruning.png", result)


def plot(path: pathlib.Path, result: dict[str, Any]) -> None:
    plt = common.pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.2))
    dense = result["dense"]
    a1.axhline(dense["accuracy"], color="k", ls=":", label="dense")
    for method in METHODS:
        rows = sorted((r for r in result["jobs"].values() if r["method"] == method),
                      key=lambda r: r["flops_ratio"])  # fmt: skip
        if not rows:
            continue
        fr = [r["flops_ratio"] for r in rows]
        line = a1.plot(fr, [r["accuracy"] for r in rows], "o-", label=f"{method} (fine-tuned)")
        a1.plot(fr, [r["accuracy_before_ft"] for r in rows], "x--", color=line[0].get_color(),
                alpha=0.6, label=f"{method} (before)")  # fmt: skip
        a2.plot([1 / f for f in fr], [r["speedup"] for r in rows], "o-", label=method)
        a3.plot([r["params"] / dense["params"] for r in rows], [r["accuracy"] for r in rows],
                "o-", label=f"{method} (structured, fine-tuned)")  # fmt: skip
    for method in UNSTRUCTURED:
        rows = sorted((r for r in result["jobs"].values() if r["method"] == method),
                      key=lambda r: r["params"])  # fmt: skip
        if rows:
            a3.plot([r["params"] / dense["params"] for r in rows], [r["accuracy"] for r in rows],
                    "s--", label=f"{method} (unstructured, from scratch)")  # fmt: skip
    a3.axhline(dense["accuracy"], color="k", ls=":", label="dense")
    a3.set(xlabel="nonzero parameters (fraction of dense)", ylabel="test accuracy",
           title="structured vs unstructured")  # fmt: skip
    a3.legend(fontsize=7)
    top = max([2.0] + [1 / r["flops_ratio"] for r in result["jobs"].values()])
    a2.plot([1, top], [1, top], "k:", label="FLOPs ratio (ideal)")
    a1.set(xlabel="FLOPs kept (fraction of dense)", ylabel="test accuracy",
           title=f"ResNet-20 ({result['config']['dataset']})")  # fmt: skip
    a2.set(xlabel="dense / pruned FLOPs", ylabel="measured speed-up (median)",
           title="physically pruned vs dense, jitted")  # fmt: skip
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    common.save_figure(fig, path)


# ----------------------------------------------------------------------------- claims
def claims(r: dict[str, Any]) -> list[lab.Claim]:
    n = common.n_test_images(r["config"])
    out = []
    jobs = r["jobs"]
    for amount in r["config"]["amounts"]:
        out.append(
            lab.versus(
                "SPA (Wang et al., 2024)",
                f"global group pruning over the graph matches magnitude structured pruning "
                f"(uniform per group) after fine-tuning, {amount:.0%} of the FLOPs removed",
                jobs.get(f"global_l2@{amount}"),
                jobs.get(f"uniform_l1@{amount}"),
                n,
                f"ResNet-20, {r['config']['dataset']}",
                more=False,
            )
        )
    for amount in r["config"]["amounts"]:
        ms, base = jobs.get(f"masksparsity@{amount}"), jobs.get(f"global_l2@{amount}")
        where = f"ResNet-20, {r['config']['dataset']}, the same channels removed"
        out.append(
            lab.versus(
                "MaskSparsity (Jiang et al., 2022)",
                f"regularising only the channels to be pruned makes removing them lose less "
                f"(before fine-tuning), {amount:.0%} of the FLOPs removed",
                ms,
                base,
                n,
                where,
                key="accuracy_before_ft",
            )
        )
        out.append(
            lab.versus(
                "MaskSparsity (Jiang et al., 2022)",
                f"and matches or beats pruning without it after fine-tuning, {amount:.0%} removed",
                ms,
                base,
                n,
                where,
                more=False,
            )
        )
    for sparsity in r["config"].get("weight_sparsities", ()):
        out.append(
            lab.versus(
                "ISS-P (Wang et al., 2023)",
                f"iterative soft shrinkage beats iterative hard thresholding at {sparsity:.0%} "
                "of every kernel removed (trained from scratch)",
                jobs.get(f"iss_p@w{sparsity}"),
                jobs.get(f"iht@w{sparsity}"),
                n,
                f"ResNet-20, {r['config']['dataset']}",
            )
        )
    rows = [j for j in jobs.values() if j["method"] == "global_l2"]
    if rows:
        best = max(rows, key=lambda j: j["amount"])
        verdict = lab.HOLDS if best["speedup"] > 1.05 else lab.FAILS
        measured = (f"{best['speedup']:.2f}x measured at {1 / best['flops_ratio']:.2f}x fewer "
                    "FLOPs (jitted, medians)")  # fmt: skip
        out.append(
            lab.Claim("pruneax", "the physically pruned program runs faster", measured, verdict)
        )
    return out


EXPERIMENT = common.Experiment(
    name="graph_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=True,
    claims=claims,
    summary="ResNet-20 channel groups found in the jaxpr; global vs uniform group pruning "
    "with fine-tuning at FLOPs budgets, and the measured speed-up of the smaller program.",
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.experiment_parser(__doc__, PRESETS)
    parser.add_argument("--amounts", type=float, nargs="+", help="fractions of FLOPs removed")
    parser.add_argument("--finetune_iterations", type=int)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="the selections compared")
    parser.add_argument("--weight_sparsities", type=float, nargs="+", help="ISS-P / IHT jobs")
    args = parser.parse_args(argv)
    cfg = common.config_from_args(args, PRESETS)
    result = run(cfg, args.workdir, args.data_dir or os.environ.get("PRUNEAX_DATA_DIR"))
    for c in claims(result):
        print(f"[{c.verdict}] {c.paper}: {c.claim} -- {c.measured}")
    return result


if __name__ == "__main__":
    main()
