"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, and its baselines.

Commands:
  python -m pruneax.experiments.lottery_ticket --preset tiny --workdir /tmp/lt  # smoke, digits
  python -m pruneax.experiments.lottery_ticket --preset cpu --data_dir ../shared/data \
      --workdir runs/lt
  python -m pruneax.experiments.lottery_ticket --preset cpu_rewind --data_dir ../shared/data \
      --workdir runs/lt_rw
  python -m pruneax.experiments.lottery_ticket --preset cpu_rewind_resnet \
      --data_dir ../shared/data --rewind_iteration 0 --workdir runs/lt_rn_rw0
      # and again with --rewind_iteration 250; then compare_rewind
  python -m pruneax.experiments.lottery_ticket --preset gpu --data_dir ../shared/data \
      --workdir runs/lt_gpu

Each IMP round trains the masked network, records test accuracy at the end and at the
early-stopping iteration (minimum validation loss), prunes ``rate`` of the remaining weights by
magnitude and rewinds the survivors to their values at iteration ``rewind_iteration`` (0 = the
original LTH; > 0 = "Stabilizing the LTH" / late resetting). At every sparsity the same run
also trains two baselines: the ticket's mask with a fresh random initialisation ("reinit") and
a random mask with the same layerwise sparsity from the rewound weights ("random_prune").

Every finished training run is checkpointed with orbax under ``WORKDIR/checkpoints``; a killed
run resumes after its last finished job and gives the same results (all randomness is derived
from ``(seed, job)``). Outputs: ``WORKDIR/results.json``, ``results.csv``, ``lottery_ticket.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruneax import data as pdata
from pruneax import lab, models
from pruneax import weights as W
from pruneax.experiments import _common as common


@dataclasses.dataclass(frozen=True)
class Config:
    """One lottery-ticket experiment. Iterations count optimizer steps (batches)."""

    model: str = "lenet300100"  # lenet300100 | conv2 | conv4 | conv6 | resnet20
    width: int = 16  # resnet20 only: filters of the first stage (open_lth's resnet_20_W)
    dataset: str = "digits"  # digits | mnist | cifar10
    optimizer: str = "adam"  # adam | sgd (momentum, weight decay, step lr)
    learning_rate: float = 1.2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = ()  # iterations where the lr is multiplied by 0.1
    batch_size: int = 60
    iterations: int = 50_000
    eval_every: int = 100
    val_size: int = 5_000
    augment: bool = False  # random crop (pad 4) + horizontal flip, for CIFAR
    rounds: int = 15  # pruning rounds after the dense run
    rate: float = 0.2  # fraction of the remaining weights pruned per round
    overrides: tuple[tuple[str, float], ...] = (("out/*", 0.1),)  # per-layer rates (globs)
    scope: str = "layerwise"  # layerwise (LTH) | global (open_lth)
    rewind_iteration: int = 0  # 0 = original LTH; k > 0 = rewind to iteration k
    baselines: tuple[str, ...] = ("reinit", "random_prune")
    seeds: tuple[int, ...] = (0,)


PRESETS: dict[str, Config] = {
    # Smoke test: the embedded digits, a tiny LeNet run; well under a minute on CPU.
    "tiny": Config(
        dataset="digits", iterations=300, eval_every=50, val_size=200, batch_size=60, rounds=3
    ),
    # Frankle & Carbin, LeNet-300-100 on MNIST: Adam 1.2e-3, batch 60, 50K iterations,
    # 20% per round layerwise (output layer 10%), evaluated every 100 iterations.
    "cpu": Config(dataset="mnist", rounds=15),
    # Scaled-down rewinding ("Stabilizing the LTH") for CPU: LeNet-300-100 on MNIST at a high
    # SGD learning rate (0.1, momentum 0.9, x0.1 at 7K of 10K iterations), where the LTH paper
    # reports iteration-0 tickets degrading for larger nets. Rewinds to iteration 500; run again
    # with --rewind_iteration 0 and compare (same seed = the same dense run).
    "cpu_rewind": Config(
        dataset="mnist",
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        lr_milestones=(7_000,),
        iterations=10_000,
        rounds=10,
        rewind_iteration=500,
        baselines=("random_prune",),
    ),
    # Scaled-down "Stabilizing the LTH" / "Linear mode connectivity" on CPU: ResNet-20 at
    # width 8 (a quarter of the FLOPs) on CIFAR-10 with augmentation, SGD 0.1 momentum 0.9
    # without warm-up (the regime where iteration-0 tickets fail for ResNet-20), batch 64,
    # 2,000 iterations (lr x0.1 at 1,500), two rounds of 60% global magnitude pruning (40% and
    # 16% remaining). Rewinds to iteration 250; run again with --rewind_iteration 0 and compare.
    "cpu_rewind_resnet": Config(
        model="resnet20",
        width=8,
        dataset="cifar10",
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        lr_milestones=(1_500,),
        batch_size=64,
        iterations=2_000,
        eval_every=250,
        augment=True,
        rounds=2,
        rate=0.6,
        overrides=(),
        scope="global",
        rewind_iteration=250,
        baselines=("random_prune",),
    ),
    # Conv-4 on CIFAR-10 (LTH: Adam 3e-4, batch 60, 25K iterations, conv 10% / fc 20% per round),
    # with rewinding to iteration 0 and to an early iteration compared in separate runs.
    "gpu": Config(
        model="conv4",
        dataset="cifar10",
        learning_rate=3e-4,
        iterations=25_000,
        rounds=12,
        overrides=(("conv*", 0.1), ("out/*", 0.1)),
        rewind_iteration=0,
    ),
    # open_lth's ResNet-20 ("Stabilizing the LTH"): SGD 0.1, momentum 0.9, weight decay 1e-4,
    # batch 128, 160 epochs (62.5K iterations) with lr x0.1 at epochs 80 and 120, global
    # magnitude pruning of 20% per level, augmentation; rewinding to iteration 500 (compare
    # with --rewind_iteration 0, where the paper finds IMP no better than random pruning).
    "gpu_resnet20": Config(
        model="resnet20",
        dataset="cifar10",
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        lr_milestones=(31_250, 46_875),
        batch_size=128,
        iterations=62_500,
        eval_every=500,
        augment=True,
        rounds=10,
        overrides=(),
        scope="global",
        rewind_iteration=500,
    ),
}


# ----------------------------------------------------------------------------- data


def prepare(cfg: Config, data_dir: str | None) -> dict[str, np.ndarray]:
    ds = pdata.load_dataset(cfg.dataset, data_dir)
    x_train, y_train = ds.train_images, ds.train_labels
    x_test, y_test = ds.test_images, ds.test_labels
    prep = lambda x: _as_nhwc(np.asarray(x, np.float32) / ds.pixel_max)
    x_train, x_test = prep(x_train), prep(x_test)
    if cfg.dataset == "cifar10":  # per-channel standardisation, as open_lth
        mean, std = x_train.mean((0, 1, 2)), x_train.std((0, 1, 2))
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    # Validation set for early stopping: a fixed slice of the training set (LTH: 5,000 of MNIST).
    if not 0 < cfg.val_size < len(x_train):
        raise ValueError(
            f"val_size must be in (0, {len(x_train)}) for {cfg.dataset}'s {len(x_train)} training "
            f"images; got {cfg.val_size}"
        )
    rng = np.random.default_rng(12345)
    order = rng.permutation(len(x_train))
    val, train = order[: cfg.val_size], order[cfg.val_size :]
    return {
        "x_train": x_train[train],
        "y_train": np.asarray(y_train)[train].astype(np.int32),
        "x_val": x_train[val],
        "y_val": np.asarray(y_train)[val].astype(np.int32),
        "x_test": x_test,
        "y_test": np.asarray(y_test).astype(np.int32),
    }


def _as_nhwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


# ----------------------------------------------------------------------------- model + training


def make_model(cfg: Config, input_shape: tuple[int, ...], seed_key: jax.Array) -> nnx.Module:
    rngs = nnx.Rngs(seed_key)
    if cfg.model == "lenet300100":
        return models.LeNet300100(in_features=int(np.prod(input_shape)), rngs=rngs)
    if cfg.model in models.CONVNET_VARIANTS:
        return models.ConvNet(cfg.model, input_shape=input_shape, rngs=rngs)
    if cfg.model == "resnet20":
        return models.ResNet20(in_channels=input_shape[-1], width=cfg.width, rngs=rngs)
    raise ValueError(
        f"model must be lenet300100, resnet20 or one of {sorted(models.CONVNET_VARIANTS)}; "
        f"got {cfg.model!r}"
    )


def _optimizer(cfg: Config) -> optax.GradientTransformation:
    if cfg.lr_milestones:
        lr = optax.piecewise_constant_schedule(
            cfg.learning_rate, dict.fromkeys(cfg.lr_milestones, 0.1)
        )
    else:
        lr = cfg.learning_rate
    if cfg.optimizer == "adam":
        return optax.adam(lr)
    if cfg.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay), optax.sgd(lr, momentum=cfg.momentum)
        )
    raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {cfg.optimizer!r}")


class Trainer:
    """Jitted training steps and evaluation for one model architecture.

    ``loop`` chooses how a chunk of steps between evaluations runs: ``"scan"`` compiles the
    chunk into one ``lax.scan``; ``"python"`` calls one jitted step per iteration from Python.
    ``"auto"`` (default) takes ``"python"`` for convolutional models on the CPU backend, where
    XLA:CPU convolutions inside a while loop run about 60x slower than the same jitted step
    (BUILD_NOTES section 2), and ``"scan"`` everywhere else. Both compute the same steps.
    """

    def __init__(self, cfg: Config, model: nnx.Module, loop: str = "auto"):
        if loop not in ("auto", "scan", "python"):
            raise ValueError(f"loop must be 'auto', 'scan' or 'python'; got {loop!r}")
        if loop == "auto":
            loop = "python" if common.steps_from_python(cfg.model != "lenet300100") else "scan"
        self.loop = loop
        self.cfg = cfg
        # data parallel over every device: the training set and the parameters are replicated,
        # each step's gathered batch is sharded along "data" (identity on one device)
        self.mesh = lab.data_mesh()
        n = lab.batch_multiple(self.mesh)
        if cfg.batch_size % n:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of the {n} devices")
        self.inner = _optimizer(cfg)
        self.tx = W.masked_optimizer(self.inner)  # one object: the jitted chunk compiles once
        model.train()
        self.graph_train, _, _ = nnx.split(model, nnx.Param, ...)
        model.eval()
        self.graph_eval, _, _ = nnx.split(model, nnx.Param, ...)
        model.train()
        self._chunk = jax.jit(self._chunk_impl, static_argnums=(0,))
        self._step = jax.jit(self._step_impl, static_argnums=(0,))
        self._eval = jax.jit(self._eval_impl)

    def _loss(self, params, rest, x, y):
        # copy=True: fresh Variables at this trace level. Without it BatchNorm (ResNet-20)
        # cannot write its running statistics from inside the gradient trace.
        model = nnx.merge(self.graph_train, params, rest, copy=True)
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, rest

    def _step_impl(self, tx, carry, x_train, y_train, idx, key):
        params, rest, opt_state = carry
        x, y = lab.constrain_batch((x_train[idx], y_train[idx]), self.mesh)
        if self.cfg.augment:
            x = common.random_crop_flip(key, x)
        (loss, rest), grads = jax.value_and_grad(self._loss, has_aux=True)(params, rest, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        # masks applied after the update too: a NaN / inf pruned weight lands on exactly 0
        params = W.apply_masks(optax.apply_updates(params, updates), opt_state.masks)
        return (params, rest, opt_state), loss

    def _chunk_impl(self, tx, params, rest, opt_state, x_train, y_train, batches, keys):
        def body(carry, inputs):
            return self._step_impl(tx, carry, x_train, y_train, *inputs)

        (params, rest, opt_state), losses = jax.lax.scan(
            body, (params, rest, opt_state), (batches, keys)
        )
        return params, rest, opt_state, losses

    def _run_chunk(self, params, rest, opt_state, data, batches, keys):
        """Steps through ``batches`` / ``keys`` (one row each per iteration)."""
        args = (self.tx, params, rest, opt_state, data["x_train"], data["y_train"])
        if self.loop == "scan":
            return self._chunk(*args, jnp.asarray(batches), keys)[:3]
        carry = (params, rest, opt_state)
        for idx, key in zip(batches, keys, strict=True):
            carry, _ = self._step(self.tx, carry, data["x_train"], data["y_train"], idx, key)
        return carry

    def _eval_impl(self, params, rest, x, y):
        def one(batch):
            xb, yb = lab.constrain_batch(batch, self.mesh)
            logits = nnx.merge(self.graph_eval, params, rest)(xb)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            return loss.sum(), (jnp.argmax(logits, -1) == yb).sum()

        n = x.shape[0]
        size = min(1000, n)
        full = (n // size) * size
        loss, correct = jax.lax.map(
            one, (x[:full].reshape(-1, size, *x.shape[1:]), y[:full].reshape(-1, size))
        )
        loss, correct = loss.sum(), correct.sum()
        if full < n:
            l2, c2 = one((x[full:], y[full:]))
            loss, correct = loss + l2, correct + c2
        return loss / n, correct / n

    def train(
        self,
        params,
        rest,
        masks,
        data: dict[str, jax.Array],
        key: jax.Array,
        start: int,
        capture: tuple[int, ...] = (),
        label: str = "",
    ):
        """Trains from iteration ``start`` to ``cfg.iterations`` with ``masks`` held at zero.

        Returns ``(params, rest, curve, captured)``: ``curve`` rows are
        ``(iteration, val_loss, val_acc, test_acc)`` with test_acc None except at new
        validation-loss minima and the end; ``captured`` maps each iteration in ``capture``
        (rewind points) after ``start`` to ``(params, rest)`` there.
        """
        cfg = self.cfg
        tx = self.tx
        params, rest, masks, data = lab.replicate((params, rest, masks, data), self.mesh)
        params = W.apply_masks(params, masks)
        opt_state = W.set_masks(tx.init(params), masks, self.inner)
        # the lr schedule counts from `start`: rewound runs continue the schedule at iteration k
        if start:
            opt_state = _advance_count(opt_state, start)
        n_train = data["x_train"].shape[0]
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        total = cfg.iterations - start
        order = np.concatenate(
            [rng.permutation(n_train) for _ in range(total * cfg.batch_size // n_train + 2)]
        )
        batches = order[: total * cfg.batch_size].reshape(total, cfg.batch_size).astype(np.int32)
        step_keys = jax.random.split(jax.random.fold_in(key, 1), total)
        stops = sorted(
            {start + i for i in range(cfg.eval_every, total + 1, cfg.eval_every)}
            | {cfg.iterations}
            | {k for k in capture if start < k <= cfg.iterations}
        )
        curve, captured, t, best = [], {}, start, float("inf")
        t0 = time.time()
        for stop in stops:
            sl = slice(t - start, stop - start)
            params, rest, opt_state = self._run_chunk(
                params, rest, opt_state, data, batches[sl], step_keys[sl]
            )
            t = stop
            if t in capture:
                captured[t] = (params, rest)
            if (t - start) % cfg.eval_every == 0 or t == cfg.iterations:
                vl, va = (float(v) for v in self._eval(params, rest, data["x_val"], data["y_val"]))
                # Test accuracy is only needed at the early-stopping iteration (a new minimum of
                # the validation loss) and at the end: evaluate it there and nowhere else.
                ta = None
                if vl < best or t == cfg.iterations:
                    ta = float(self._eval(params, rest, data["x_test"], data["y_test"])[1])
                    best = min(best, vl)
                curve.append((t, vl, va, ta))
                if len(curve) % max(1, len(stops) // 5) == 0 or t == cfg.iterations:
                    print(
                        f"  [{label}] it {t:>6}/{cfg.iterations}  val_loss {float(vl):.4f}  "
                        f"val_acc {va:.4f}  test_acc {ta if ta is not None else float('nan'):.4f}  "
                        f"({time.time() - t0:.1f}s)",
                        flush=True,
                    )
        return params, rest, curve, captured


def _advance_count(opt_state, start):
    """Sets every optax step counter in the state to ``start`` (schedules resume at k)."""
    return jax.tree.map(
        lambda x: jnp.full_like(x, start) if x.dtype == jnp.int32 and x.ndim == 0 else x,
        opt_state,
    )


# ----------------------------------------------------------------------------- the experiment


def _jobs(cfg: Config) -> list[tuple[int, str, int]]:
    """(seed, kind, round) in execution order: IMP round r, then its baselines."""
    jobs = []
    for seed in cfg.seeds:
        for r in range(cfg.rounds + 1):
            jobs.append((seed, "imp", r))
            if r:
                jobs.extend((seed, b, r) for b in cfg.baselines)
    return jobs


def _summary(curve, report: W.SparsityReport) -> dict[str, Any]:
    """Early stopping = the first iteration of minimum validation loss (test acc known there)."""
    val = [row[1] for row in curve]
    best = int(np.argmin(val))
    return {
        "remaining": report.remaining,
        "sparsity": report.sparsity,
        "final_test_acc": curve[-1][3],
        "early_stop_iteration": int(curve[best][0]),
        "early_stop_test_acc": curve[best][3],
        "early_stop_val_loss": val[best],
        "curve": [list(row) for row in curve],  # (iteration, val_loss, val_acc, test_acc|None)
    }


def _masks_to_dict(masks) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda x: x is None)[0]
    return {W.path_name(p): np.asarray(m) for p, m in flat if m is not None}


def _masks_from_dict(params, d: dict[str, Any]):
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [W.path_name(p) for p, _ in flat]
    return jax.tree.unflatten(treedef, [jnp.asarray(d[n], bool) if n in d else None for n in names])


def check_config(cfg: Config) -> None:
    """Refuses a config that would run nothing or fail late (before any data is read).

    Raises:
      ValueError: naming the field: ``rounds`` < 0, ``iterations`` / ``batch_size`` /
        ``eval_every`` < 1, ``rewind_iteration`` outside ``[0, iterations)``, ``rate`` outside
        (0, 1), no ``seeds``, an unknown baseline / optimizer / scope.
    """
    ints = {"rounds": 0, "iterations": 1, "batch_size": 1, "eval_every": 1}
    for name, low in ints.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"lottery_ticket: {name} must be an int >= {low}; got {v!r}")
    r = cfg.rewind_iteration
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < cfg.iterations:
        raise ValueError(
            f"lottery_ticket: rewind_iteration must be an int in [0, iterations={cfg.iterations})"
            f"; got {r!r}"
        )
    if not 0 < cfg.rate < 1:
        raise ValueError(f"lottery_ticket: rate must be in (0, 1); got {cfg.rate!r}")
    if not cfg.seeds:
        raise ValueError("lottery_ticket: seeds must name at least one seed")
    bad = sorted(set(cfg.baselines) - {"reinit", "random_prune"})
    if bad:
        raise ValueError(f"lottery_ticket: baselines must be reinit / random_prune; got {bad}")
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"lottery_ticket: optimizer must be adam or sgd; got {cfg.optimizer!r}")
    if cfg.scope not in ("layerwise", "global"):
        raise ValueError(f"lottery_ticket: scope must be layerwise or global; got {cfg.scope!r}")


def run(cfg: Config, workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) the experiment; returns the results dict also written to results.json.

    Raises:
      ValueError: for a bad config (``check_config``) or a workdir of another config.
    """
    check_config(cfg)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if data_dir is None and cfg.dataset != "digits":
        data_dir = os.environ.get("PRUNEAX_DATA_DIR")
    if cfg.dataset == "digits":
        print("[lottery_ticket] no data dir: using scikit-learn's bundled digits", flush=True)
    arrays = prepare(cfg, data_dir)
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    input_shape = tuple(arrays["x_train"].shape[1:])

    jobs = _jobs(cfg)
    ckpt = lab.Checkpoints(workdir / "checkpoints")
    results: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    first = 0

    def one_result_per_job(step, state, meta):  # metadata that disagrees with its step
        rows = meta.get("results") if isinstance(meta, dict) else None
        if not isinstance(rows, list) or len(rows) != step + 1 or "config" not in meta:
            raise ValueError(f"metadata of job {step} does not hold {step + 1} result rows")

    latest = ckpt.latest(validate=one_result_per_job)
    if latest is not None:
        step, state, meta = latest
        if meta["config"] != lab.config_json(cfg):
            raise ValueError(
                f"workdir {workdir} holds checkpoints of a different config; use a new --workdir"
            )
        results, first = meta["results"], step + 1
        print(f"[lottery_ticket] resuming after job {step + 1}/{len(jobs)}", flush=True)

    trainer = None
    metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0
    for j in lab.progress(range(first, len(jobs)), desc="lottery_ticket jobs"):
        seed, kind, r = jobs[j]
        key = jax.random.fold_in(jax.random.key(seed), j)
        model = make_model(cfg, input_shape, jax.random.key(seed))
        trainer = trainer or Trainer(cfg, model)
        _, theta0, rest0 = nnx.split(model, nnx.Param, ...)
        if kind == "imp" and r == 0:
            state = {"theta0": theta0, "theta_k": theta0, "rest_k": rest0}
            masks = W.layerwise_masks(W.magnitude_scores(theta0), 0.0)
            params, rest, start = theta0, rest0, 0
        else:
            theta_k = common.restore_like(theta0, state["theta_k"])
            rest_k = common.restore_like(rest0, state["rest_k"])
            if kind == "imp":  # this round's masks: the last IMP round's pruning result
                state["masks"] = state["next_masks"]
            masks = _masks_from_dict(theta0, state["masks"])
            params, rest, start = theta_k, rest_k, cfg.rewind_iteration
            if kind == "reinit":
                fresh = make_model(cfg, input_shape, jax.random.fold_in(key, 7))
                _, params, rest = nnx.split(fresh, nnx.Param, ...)
            elif kind == "random_prune":
                masks = W.random_masks(jax.random.fold_in(key, 11), masks)
        report = W.sparsity_report(masks)
        label = f"seed {seed} {kind} r{r} {report.remaining:.1f}%"
        print(f"[lottery_ticket] job {j + 1}/{len(jobs)}: {label}", flush=True)
        capture = (cfg.rewind_iteration,) if (kind == "imp" and r == 0) else ()
        params, rest, curve, captured = trainer.train(
            params, rest, masks, data, key, start, capture=capture, label=label
        )
        results.append({"seed": seed, "kind": kind, "round": r, **_summary(curve, report)})
        _log_curves(metrics, results[-1])
        if kind == "imp":
            if cfg.rewind_iteration in captured:
                state["theta_k"], state["rest_k"] = captured[cfg.rewind_iteration]
            state = common.state_to_numpy(state)
            next_masks = W.prune_round(
                params,
                masks,
                cfg.rate,
                scope=cfg.scope,
                overrides=dict(cfg.overrides) or None,
            )
            state["next_masks"] = _masks_to_dict(next_masks)
        meta = {"config": lab.config_json(cfg), "results": results}
        ckpt.save(
            j, common.state_to_numpy(state), meta, flat=False, wait=True
        )  # its keys change between jobs
        if cfg.rounds > 3:  # long runs: results so far are readable while it goes on
            _write_outputs(cfg, workdir, results, partial=True)
    metrics.close()
    return _write_outputs(cfg, workdir, results)


def _log_curves(metrics: lab.MetricWriter, row: dict[str, Any]) -> None:
    """One job's validation curve (by iteration) and its test accuracies (by round) as
    TensorBoard scalars."""
    run = f"seed{row['seed']}/{row['kind']}"
    for it, val_loss, val_acc, _ in row["curve"]:
        metrics.scalar(f"{run}_r{row['round']}/val_loss", val_loss, it)
        metrics.scalar(f"{run}_r{row['round']}/val_acc", val_acc, it)
    for name in ("final_test_acc", "early_stop_test_acc"):
        metrics.scalar(f"{run}/{name}_by_round", row[name], row["round"])


# ----------------------------------------------------------------------------- outputs


def _write_outputs(
    cfg: Config, workdir: pathlib.Path, results: list[dict], partial: bool = False
) -> dict[str, Any]:
    """results.json / .csv / .png (``partial``: to ``results_partial.*`` while running)."""
    out = {
        "config": lab.config_json(cfg),
        "machine": lab.machine(),
        "results": results,
    }
    stem = "results_partial" if partial else "results"
    lab.write_json(workdir / f"{stem}.json", out)
    fields = [
        "seed",
        "kind",
        "round",
        "remaining",
        "final_test_acc",
        "early_stop_iteration",
        "early_stop_test_acc",
        "early_stop_val_loss",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)
    lab.write_text(workdir / f"{stem}.csv", buf.getvalue())
    _plot(
        cfg, workdir / ("lottery_ticket_partial.png" if partial else "lottery_ticket.png"), results
    )
    return out


def _plot(cfg: Config, path: pathlib.Path, results: list[dict]) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {
        "imp": ("C0", "o", "IMP (winning ticket)"),
        "reinit": ("C1", "s", "random re-init"),
        "random_prune": ("C2", "^", "random pruning"),
    }
    for kind, (color, marker, label) in styles.items():
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            continue
        rem = sorted({r["remaining"] for r in rows}, reverse=True)
        for ax, field in zip(axes, ("early_stop_test_acc", "early_stop_iteration"), strict=True):
            vals = [[r[field] for r in rows if r["remaining"] == x] for x in rem]
            mean = [np.mean(v) for v in vals]
            lo = [np.min(v) for v in vals]
            hi = [np.max(v) for v in vals]
            ax.plot(rem, mean, marker=marker, color=color, label=label)
            ax.fill_between(rem, lo, hi, color=color, alpha=0.15)
    dense = [r for r in results if r["kind"] == "imp" and r["round"] == 0]
    for ax, field in zip(axes, ("early_stop_test_acc", "early_stop_iteration"), strict=True):
        if dense:
            ax.axhline(np.mean([r[field] for r in dense]), color="k", ls="--", lw=1, label="dense")
        ax.set_xscale("log")
        levels = sorted({r["remaining"] for r in results if r["kind"] == "imp"}, reverse=True)
        ax.set_xticks(levels, [f"{x:.3g}" for x in levels], rotation=60, fontsize=8)
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("percent of weights remaining")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy at early stop")
    axes[1].set_ylabel("early-stop iteration (min val loss)")
    axes[0].legend()
    seeds = len({r["seed"] for r in results})
    fig.suptitle(
        f"{cfg.model} on {cfg.dataset}: IMP rate {cfg.rate} ({cfg.scope}), rewind to "
        f"iteration {cfg.rewind_iteration}; {seeds} seed(s), band = min..max"
    )
    fig.tight_layout()
    common.save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------- summaries


def summarize(workdirs: list[str], out: str) -> str:
    """Merges the results of several runs (e.g. one per seed; partial results are used when a
    run has not finished) into ``OUT.md`` (a table: mean over seeds per sparsity level) and
    ``OUT.png``; returns the markdown."""
    rows, cfg = [], None
    for d in workdirs:
        d = pathlib.Path(d)
        path = d / "results.json" if (d / "results.json").exists() else d / "results_partial.json"
        data = json.loads(path.read_text())
        cfg = cfg or Config(**{k: _tuples(v) for k, v in data["config"].items()})
        rows += data["results"]
    seeds = sorted({r["seed"] for r in rows})
    rounds = sorted({r["round"] for r in rows})
    lines = [
        f"{cfg.model} on {cfg.dataset}, {cfg.iterations} iterations per run, rate {cfg.rate} "
        f"({cfg.scope}, overrides {dict(cfg.overrides)}), rewind to {cfg.rewind_iteration}; "
        f"seeds {seeds}; mean (min-max) over seeds that reached the level.",
        "",
        "| round | % remaining | IMP test acc @ES | reinit | random prune | IMP ES iter | "
        "reinit ES iter | random ES iter |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(kind, r, field, fmt):
        v = [x[field] for x in rows if x["kind"] == kind and x["round"] == r]
        if not v:
            return "-"
        if len(v) == 1:
            return fmt.format(v[0])
        return f"{fmt.format(np.mean(v))} ({fmt.format(min(v))}-{fmt.format(max(v))})"

    for r in rounds:
        rem = next(x["remaining"] for x in rows if x["round"] == r)
        acc = [
            cell(k, r, "early_stop_test_acc", "{:.4f}") for k in ("imp", "reinit", "random_prune")
        ]
        it = [
            cell(k, r, "early_stop_iteration", "{:.0f}") for k in ("imp", "reinit", "random_prune")
        ]
        lines.append(f"| {r} | {rem:.1f} | " + " | ".join(acc + it) + " |")
    text = "\n".join(lines) + "\n"
    out_path = pathlib.Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lab.write_text(out_path.with_suffix(".md"), text)
    _plot(cfg, out_path.with_suffix(".png"), rows)
    return text


def compare_rewind(workdirs: list[str], out: str) -> str:
    """Puts runs that differ only in ``rewind_iteration`` side by side: ``OUT.md`` (IMP and
    random-pruning test accuracy at the end of training and at early stopping, mean over seeds,
    per sparsity level) and ``OUT.png``; returns the markdown."""
    runs = []
    for d in workdirs:
        d = pathlib.Path(d)
        path = d / "results.json" if (d / "results.json").exists() else d / "results_partial.json"
        data = json.loads(path.read_text())
        runs.append((data["config"]["rewind_iteration"], data["config"], data["results"]))
    runs.sort(key=lambda t: t[0])
    base = {k: v for k, v in runs[0][1].items() if k != "rewind_iteration"}
    for _, c, _ in runs[1:]:
        if {k: v for k, v in c.items() if k != "rewind_iteration"} != base:
            raise ValueError("compare_rewind: the runs must differ only in rewind_iteration")

    def mean(rows, kind, r, field):
        v = [x[field] for x in rows if x["kind"] == kind and x["round"] == r]
        return float(np.mean(v)) if v else float("nan")

    rounds = sorted({x["round"] for _, _, rows in runs for x in rows})
    kinds = [("imp", "IMP"), ("random_prune", "random prune")]
    cols = [(k, rw, f"{label} rw{rw}") for k, label in kinds for rw, _, _ in runs]
    seeds = sorted({x["seed"] for _, _, rows in runs for x in rows})
    lines = [
        f"{base['model']} on {base['dataset']} ({base['optimizer']} lr {base['learning_rate']}, "
        f"{base['iterations']} iterations); seeds {seeds}; test accuracy at the end of training "
        "(at the early-stopping iteration in brackets); rwK = rewound to iteration K.",
        "",
        "| round | % remaining | " + " | ".join(c[2] for c in cols) + " |",
        "| --- | --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    by_rw = {rw: rows for rw, _, rows in runs}
    for r in rounds:
        rem = next(x["remaining"] for _, _, rows in runs for x in rows if x["round"] == r)
        cells = []
        for kind, rw, _ in cols:
            f = mean(by_rw[rw], kind, r, "final_test_acc")
            e = mean(by_rw[rw], kind, r, "early_stop_test_acc")
            cells.append("-" if np.isnan(f) else f"{f:.4f} ({e:.4f})")
        lines.append(f"| {r} | {rem:.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out_path = pathlib.Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lab.write_text(out_path.with_suffix(".md"), text)

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, rw, label in cols:
        pts = [
            (next(x["remaining"] for x in by_rw[rw] if x["round"] == r),
             mean(by_rw[rw], kind, r, "final_test_acc"))
            for r in rounds
        ]  # fmt: skip
        pts = [p for p in pts if not np.isnan(p[1])]
        ax.plot(*zip(*pts, strict=True), "-" if kind == "imp" else "--", marker="o", label=label)
    dense = mean(by_rw[runs[0][0]], "imp", 0, "final_test_acc")
    ax.axhline(dense, color="k", lw=0.8, ls=":", label="dense")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("% of weights remaining")
    ax.set_ylabel("test accuracy (end of training)")
    ax.set_title(f"rewinding: {base['model']} on {base['dataset']}, seeds {seeds}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, out_path.with_suffix(".png"), dpi=120)
    return text


def _tuples(v):
    """JSON lists back to the tuples a frozen Config holds."""
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


# ----------------------------------------------------------------------------- CLI


# ------------------------------------------------------------------------- claims


def _acc(results: list[dict[str, Any]], kind: str, rnd: int) -> float:
    v = [e["final_test_acc"] for e in results if e["kind"] == kind and e["round"] == rnd]
    return sum(v) / len(v) if v else float("nan")


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims this experiment tests, each beside what ``results.json`` (``r``)
    measured, with a computed verdict (``pruneax.lab.compare``); read by ``reproduce``."""
    res = r["results"]
    n = common.n_test_images(r["config"]) * len(r["config"]["seeds"])
    last = max(e["round"] for e in res if e["kind"] == "imp")
    remaining = next(e["remaining"] for e in res if e["kind"] == "imp" and e["round"] == last)
    dense, imp = _acc(res, "imp", 0), _acc(res, "imp", last)
    where = f"at {remaining:.1f}% of weights remaining, round {last}"
    claims = []
    verdict, text = lab.compare(imp, dense, n, more=False)
    claims.append(
        lab.Claim(
            "Frankle & Carbin 2019 (LTH)",
            "IMP winning tickets (reset to the original init) match the dense network",
            f"ticket vs dense {where}: {text}",
            verdict,
        )
    )
    for kind, what in (("reinit", "randomly re-initialised"), ("random_prune", "randomly pruned")):
        other = _acc(res, kind, last)
        verdict, text = lab.compare(imp, other, n)
        claims.append(
            lab.Claim(
                "Frankle & Carbin 2019 (LTH)",
                f"Winning tickets beat the same architecture {what}",
                f"ticket vs {kind} {where}: {text}",
                verdict,
            )
        )
    return claims


EXPERIMENT = common.Experiment(
    name="lottery_ticket",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=True,
    claims=claims,
    summary=(
        "Iterative magnitude pruning with rewinding: winning tickets vs re-initialised and "
        "randomly pruned baselines."
    ),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.ConfigParser(PRESETS, description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--workdir", help="results, plots and checkpoints go here")
    common.add_distributed_flags(parser)
    parser.add_argument(
        "--summarize", nargs="+", metavar="WORKDIR", help="merge finished runs into --out"
    )
    parser.add_argument(
        "--compare_rewind",
        nargs="+",
        metavar="DIR",
        help="put runs that differ only in --rewind_iteration side by side (needs --out)",
    )
    parser.add_argument(
        "--out", help="with --summarize / --compare_rewind: output path stem (.md and .png)"
    )
    parser.add_argument("--data_dir", default=None, help="dataset dir (or PRUNEAX_DATA_DIR)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--rounds", type=int, help="override the number of pruning rounds")
    parser.add_argument("--iterations", type=int, help="override iterations per run")
    parser.add_argument("--rewind_iteration", type=int, help="override the rewind point")
    parser.add_argument("--model", help="override the model (lenet300100, conv2/4/6, resnet20)")
    args = parser.parse_args(argv)
    common.start_distributed(args)
    if args.summarize:
        if not args.out:
            parser.error("--summarize needs --out")
        print(summarize(args.summarize, args.out))
        return {}
    if args.compare_rewind:
        if not args.out:
            parser.error("--compare_rewind needs --out")
        print(compare_rewind(args.compare_rewind, args.out))
        return {}
    if not args.workdir:
        parser.error("--workdir is required")
    cfg = common.replace_given(PRESETS[args.preset], args)
    return run(cfg, args.workdir, args.data_dir)


if __name__ == "__main__":
    main()
