"""What the image-classification experiments share: a jitted train / eval / throughput runner
for an NNX classifier called as ``model(x, plan=..., key=...)``, orbax checkpoints, the machine
description, augmentation (``random_crop_flip``) and matplotlib setup.

The runner is data-parallel over every local device (``pruneax.lab``): the batch is
sharded, parameters and optimizer state are replicated.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruneax import data as pdata
from pruneax import lab
from pruneax.experiments._config_flags import ConfigParser, given_value


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What an experiment module declares so that ``reproduce`` can run it and read its claims:
    ``EXPERIMENT = Experiment(...)`` beside its ``PRESETS``, ``run`` and ``claims``."""

    name: str  # the module name: python -m pruneax.experiments.<name>
    presets: dict[str, str]  # reproduce's preset (tiny / cpu / gpu) -> the experiment's own
    needs_data: bool  # run(cfg, workdir, data_dir) rather than run(cfg, workdir)
    claims: Callable[[dict[str, Any]], list[lab.Claim]]  # results.json -> claims + verdicts
    summary: str  # one paragraph for the report


def n_test_images(config: dict[str, Any]) -> int:
    """The number of test images an experiment's accuracies were measured on (its dataset's
    test split, or ``eval_size`` when smaller)."""
    full = {"digits": 360, "mnist": 10_000, "cifar10": 10_000}.get(config.get("dataset"), 0)
    eval_size = config.get("eval_size")
    return min(full, eval_size) if eval_size else full


def experiment_parser(doc: str, presets: dict[str, Any]) -> argparse.ArgumentParser:
    """The flags every trained experiment shares: ``--preset --workdir --data_dir
    --distributed --iterations --keep_ratios --eval_size`` (add the experiment's own, then
    ``config_from_args``); on parsing, every other field of the preset dataclass becomes a flag
    too (``ConfigParser``)."""
    parser = ConfigParser(presets, description=doc.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(presets), default="tiny")
    parser.add_argument("--workdir", required=True, help="results, plots and checkpoints go here")
    parser.add_argument("--data_dir", default=None, help="dataset dir (or PRUNEAX_DATA_DIR)")
    add_distributed_flags(parser)
    parser.add_argument("--iterations", type=int, help="override training iterations")
    parser.add_argument("--keep_ratios", type=float, nargs="+", help="override the keep ratios")
    parser.add_argument("--eval_size", type=int, help="override the examples evaluated")
    add_cache_flag(parser)
    return parser


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """``--distributed`` (``jax.distributed.initialize()``, coordinator from the environment:
    TPU pods, SLURM) and ``--coordinator_address HOST:PORT --num_processes N --process_id I``
    (given together; they imply ``--distributed``: several processes on hosts without a
    cluster manager, or on one machine)."""
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first (TPU pods)",
    )
    parser.add_argument("--coordinator_address", help="multi-process: process 0's host:port")
    parser.add_argument("--num_processes", type=int, help="multi-process: how many processes")
    parser.add_argument("--process_id", type=int, help="multi-process: this process's id")


def start_distributed(args: argparse.Namespace) -> None:
    """Joins the multi-process run the flags of ``add_distributed_flags`` describe (nothing
    when none is given)."""
    explicit = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in explicit):
        lab.initialize_distributed(*explicit)


def add_cache_flag(parser: argparse.ArgumentParser) -> None:
    """``--compilation_cache DIR|off``: JAX's persistent compilation cache (default
    ``lab.default_cache_dir()``), so a rerun or resumed run loads compiled plans."""
    parser.add_argument(
        "--compilation_cache",
        default="",
        help="persistent compilation cache folder ('off' to disable; default "
        "$PRUNEAX_COMPILATION_CACHE or ~/.cache/pruneax/jax-<version>)",
    )


def use_cache_flag(args: argparse.Namespace) -> None:
    """Turns on the cache ``--compilation_cache`` names (nothing for ``off``)."""
    value = getattr(args, "compilation_cache", "off")
    if value != "off":
        folder = lab.compilation_cache(value or None)
        print(f"[compilation cache] {folder}", flush=True)


def config_from_args(args: argparse.Namespace, presets: dict[str, Any]) -> Any:
    """The preset's config with every given flag that names a config field overriding it
    (lists become tuples); initialises multi-host JAX first when ``--distributed``."""
    start_distributed(args)
    use_cache_flag(args)
    return replace_given(presets[args.preset], args)


def replace_given(cfg: Any, args: argparse.Namespace) -> Any:
    """``cfg`` with every field given on the command line (not None) replaced."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    given = {k: given_value(v) for k, v in vars(args).items() if k in fields and v is not None}
    return dataclasses.replace(cfg, **given)


def load_standardized(dataset: str, data_dir: str | None) -> dict[str, np.ndarray]:
    """Train / test images scaled to [0, 1] then standardised per channel with the training
    set's mean and std, NHWC float32; labels int32."""
    ds = pdata.load_dataset(dataset, data_dir)
    prep = lambda x: x[..., None] if x.ndim == 3 else x
    x_train = prep(np.asarray(ds.train_images, np.float32) / ds.pixel_max)
    x_test = prep(np.asarray(ds.test_images, np.float32) / ds.pixel_max)
    mean, std = x_train.mean((0, 1, 2)), x_train.std((0, 1, 2))
    return {
        "x_train": ((x_train - mean) / std).astype(np.float32),
        "y_train": np.asarray(ds.train_labels, np.int32),
        "x_test": ((x_test - mean) / std).astype(np.float32),
        "y_test": np.asarray(ds.test_labels, np.int32),
    }


def shape_overrides(arrays: dict[str, np.ndarray], overrides) -> dict[str, Any]:
    """Model config overrides with image size, channels and classes taken from the data unless
    ``overrides`` (pairs) sets them."""
    h, w, c = arrays["x_train"].shape[1:]
    out = dict(overrides)
    out.setdefault("image_size", h if h == w else (h, w))
    out.setdefault("num_channels", c)
    out.setdefault("num_classes", int(arrays["y_train"].max()) + 1)
    return out


def steps_from_python(conv: bool) -> bool:
    """Whether a training loop should call one jitted step per iteration from Python rather
    than ``lax.scan`` its steps: yes for models with convolutions on the CPU backend, where
    XLA:CPU runs convolutions inside a while loop about 60x slower than the same jitted step
    (BUILD_NOTES section 2); no elsewhere, where the scan saves the per-step dispatch."""
    return conv and jax.default_backend() == "cpu"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Any, dpi: int = 110) -> None:
    """Writes a matplotlib figure atomically (a temporary file in the same folder, then a
    rename) and closes it."""
    import os
    import pathlib

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)


def evals_csv(evals: dict[str, dict[str, Any]], fields: tuple[str, ...]) -> str:
    """``setting`` then ``fields`` per entry of ``evals`` (``{setting: {field: value}}``); a
    missing or None value is an empty cell."""
    lines = [",".join(("setting", *fields))]
    for name, e in evals.items():
        row = [name] + [e.get(k) for k in fields]
        lines.append(",".join("" if v is None else str(v) for v in row))
    return "\n".join(lines) + "\n"


def random_crop_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random crop after 4-pixel zero padding and a random horizontal flip, per image."""
    b, h, w, _ = x.shape
    k1, k2, k3 = jax.random.split(key, 3)
    padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    dy = jax.random.randint(k1, (b,), 0, 9)
    dx = jax.random.randint(k2, (b,), 0, 9)
    crop = jax.vmap(lambda im, i, j: jax.lax.dynamic_slice(im, (i, j, 0), (h, w, x.shape[3])))
    x = crop(padded, dy, dx)
    flip = jax.random.bernoulli(k3, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def restore_like(like, restored):
    """A checkpointed pure dict put back into an NNX state shaped like ``like``."""
    out = jax.tree.map(lambda x: x, like)  # a copy: replace_by_pure_dict works in place
    nnx.replace_by_pure_dict(out, jax.tree.map(jnp.asarray, restored))
    return out


def state_to_numpy(state: dict[str, Any]) -> dict[str, Any]:
    """The experiment state as plain nested dicts of NumPy arrays (what orbax stores)."""
    pure = lambda v: nnx.to_pure_dict(v) if isinstance(v, nnx.State) else v
    return jax.tree.map(np.asarray, {k: pure(v) for k, v in state.items()})


def matrices_only(params):
    """Weight-decay mask: decay leaves with ndim >= 2 (kernels), not biases or norms."""
    return jax.tree.map(lambda v: jnp.ndim(v) >= 2, params)


class Runner:
    """Jitted train / predict / throughput for one classifier architecture.

    ``cfg`` needs ``seed, batch_size, eval_batch, throughput_batch, weight_decay, log_every,
    ckpt_every, throughput_repeats, throughput_iters``. The model is called as
    ``model(x, plan=plan, key=key)`` and must return an object with ``.logits``.
    """

    def __init__(
        self,
        cfg: Any,
        model: nnx.Module,
        *,
        log_tag: str,
        decay_mask: Callable[[Any], Any] = matrices_only,
    ):
        self.cfg = cfg
        self.log_tag = log_tag
        self.decay_mask = decay_mask
        self.mesh = lab.data_mesh()
        n = lab.batch_multiple(self.mesh)
        for name in ("batch_size", "eval_batch", "throughput_batch"):
            if getattr(cfg, name) % n:
                raise ValueError(
                    f"{name} ({getattr(cfg, name)}) must be a multiple of the {n} devices"
                )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.metrics: lab.MetricWriter | None = None  # set by the experiment: TensorBoard
        self.graphdef = graphdef
        self.params0, self.rest = lab.replicate((params, rest), self.mesh)

    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)

    def optimizer(self, lr: float, steps: int, warmup: int) -> optax.GradientTransformation:
        """AdamW with linear warmup and cosine decay, gradients clipped to global norm 1."""
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, 2))
        return optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(schedule, weight_decay=self.cfg.weight_decay, mask=self.decay_mask),
        )

    @functools.partial(jax.jit, static_argnames=("self", "tx", "plan", "augment"))
    def train_step(self, params, opt_state, x, y, key, *, tx, plan, augment):
        k_aug, k_plan = jax.random.split(key)
        if augment:
            x = random_crop_flip(k_aug, x)

        def loss_fn(p):
            logits = self.model(p)(x, plan=plan, key=k_plan).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @functools.partial(jax.jit, static_argnames=("self", "plan"))
    def predict(self, params, x, key, *, plan):
        """Logits of one batch under ``plan``."""
        return self.model(params)(x, plan=plan, key=key).logits

    def logits(self, params, x, plan, batch: int, seed: int = 0) -> np.ndarray:
        """Logits [len(x), classes] (NumPy), ``batch`` images per call, the last one padded so
        that one compiled shape per plan serves every call."""
        out = []
        for i in lab.progress(range(0, len(x), batch), desc="eval"):
            key = jax.random.fold_in(jax.random.key(seed), i)
            xb = x[i : i + batch]
            valid = len(xb)
            if valid < batch:
                xb = jnp.concatenate([xb, jnp.zeros((batch - valid, *xb.shape[1:]), xb.dtype)])
            xb = lab.shard_batch(xb, self.mesh)
            out.append(lab.to_host(self.predict(params, xb, key, plan=plan))[:valid])
        return np.concatenate(out)

    def accuracy(self, params, x, y, plan, batch: int, seed: int = 0) -> float:
        pred = self.logits(params, x, plan, batch, seed).argmax(-1)
        return float(np.mean(pred == np.asarray(y)))

    def train(
        self, params, data, *, steps, lr, warmup, plan, ckpt, tag, augment
    ) -> tuple[Any, list[tuple[int, float]]]:
        """Trains ``steps`` steps from ``params`` (or resumes from ``ckpt``).

        Batches come from per-epoch permutations seeded by (seed, tag, epoch), so a resumed
        run sees the same batches. Returns ``(params, [(step, mean loss since last log)])``.
        """
        cfg = self.cfg
        tx = self.optimizer(lr, steps, warmup)
        # placed on the mesh before a restore, so that the checkpoint comes back replicated
        # over every process's devices (a leaf on one local device cannot move across hosts)
        params, opt_state = lab.replicate((params, tx.init(params)), self.mesh)
        start, losses = 0, []
        restored = ckpt.latest((params, opt_state)) if ckpt is not None else None
        if restored is not None:
            start, (params, opt_state), meta = restored
            losses = [tuple(v) for v in meta["losses"]]
            print(f"{self.log_tag} {tag}: resuming at step {start}/{steps}", flush=True)
        x_train, y_train = data["x_train"], data["y_train"]
        n = len(x_train)
        per_epoch = n // cfg.batch_size
        stream = zlib.crc32(tag.encode())
        t0, window = time.perf_counter(), []
        for step in lab.progress(range(start, steps), desc=tag):
            epoch, i = divmod(step, per_epoch)
            order = np.random.default_rng((cfg.seed, stream, epoch)).permutation(n)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            key = jax.random.fold_in(jax.random.key(cfg.seed + 1), step)
            xb, yb = lab.shard_batch((x_train[idx], y_train[idx]), self.mesh)
            params, opt_state, loss = self.train_step(
                params, opt_state, xb, yb, key, tx=tx, plan=plan, augment=augment
            )
            window.append(loss)
            done = step + 1
            if done % cfg.log_every == 0 or done == steps:
                mean = float(jnp.mean(jnp.stack(window)))
                losses.append((done, mean))
                if self.metrics is not None:
                    self.metrics.scalar(f"{tag}/loss", mean, done)
                window = []
                rate = (done - start) / (time.perf_counter() - t0)
                print(
                    f"  [{tag}] step {done:6d}/{steps}  loss {mean:.4f}  ({rate:.2f} steps/s)",
                    flush=True,
                )
            if ckpt is not None and (done % cfg.ckpt_every == 0 or done == steps):
                ckpt.save(done, (params, opt_state), {"losses": losses}, wait=done == steps)
        return params, losses

    def throughput(self, params, x, plan) -> float:
        """Median images/s of the jitted forward pass over ``throughput_repeats`` timings."""
        cfg = self.cfg
        key = jax.random.key(0)
        x = lab.shard_batch(x, self.mesh)
        jax.block_until_ready(self.predict(params, x, key, plan=plan))  # compile
        times = []
        for _ in range(cfg.throughput_repeats):
            t = time.perf_counter()
            for _ in range(cfg.throughput_iters):
                out = self.predict(params, x, key, plan=plan)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - t) / cfg.throughput_iters)
        return len(x) / float(np.median(times))
