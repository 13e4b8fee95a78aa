"""ViT token pruning: train a ViT once, then compare every token-pruning method without retraining.

Commands:
  python -m pruneax.experiments.vit_token_pruning --preset tiny --workdir /tmp/vtp  # smoke
  python -m pruneax.experiments.vit_token_pruning --preset cpu --data_dir ../shared/data \
      --workdir runs/vtp
  python -m pruneax.experiments.vit_token_pruning --preset gpu --data_dir ../shared/data \
      --workdir runs/vtp_gpu
  python -m pruneax.experiments.vit_token_pruning --preset pretrained_mnist \
      --data_dir ../shared/data --workdir runs/vtp_pretrained  # a ViT trained elsewhere

The ``pretrained_mnist`` preset trains nothing: it loads the MNIST ViT of lucidrains' layout
that someone else trained (``DATA/pretrained/vit-mnist-lucidrains/vit_mnist_gpu.pt``, or
``--checkpoint``; ``load_lucidrains_vit``), feeds it the images as it was trained
(``(x / 255 - 0.1307) / 0.3081``), skips fine-tuning and runs steps 2 and 4 at pruning layers
1-4, so that every claim is read on a second model whose attention was shaped by another
training run. ``claims`` reports each comparison per pruning layer and names the model.

1. Train a ViT (AdamW, warmup + cosine) with an orbax checkpoint every ``ckpt_every`` steps; a
   killed run resumes from the last one.
2. Evaluate, training-free, every method at every keep ratio and pruning layer (one stage at
   that layer; ToMe merges over consecutive layers until it reaches the ratio, at most one
   bipartite step per block). FlowCut (``PruningPlan.flowcut`` with ``select_layer`` = the
   pruning layer) scores after every block before it and leaves the keep ratio before that
   same block, as the one-stage methods; its earlier pruning steps only mask tokens out of the
   attention (no saving), so its FLOPs are top-k's at that layer: all tokens before the
   layer, 1 + k from it on (``PruningPlan.block_tokens``). VisionDrop / VisionZip's vision
   stage (``ContextualStage``) keeps the ratio as ``keep // 8`` contextual tokens plus the
   top dominant patches by the [CLS] row.
3. Fine-tune the best two methods briefly with pruning in the loop, at ``finetune_ratio``, and
   evaluate them again, so training-free and fine-tuned accuracy stand side by side.
4. Throughput (images/s, jitted, batch ``throughput_batch``, median of ``throughput_repeats``)
   of each method at each ratio next to the FLOPs-ideal speed-up.

Training and evaluation are data-parallel over every local device (``experiments/_parallel``:
batch sharded, parameters replicated); batch sizes must be multiples of the device count.

Outputs in ``--workdir``: ``results.json``, ``results.md`` (tables), ``accuracy.png``,
``speedup.png``, ``kept_patches.png``. Progress is printed; evaluations done before an
interruption are kept in ``progress.json`` and not repeated.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax import data as pdata
from pruneax import lab, models
from pruneax.experiments import _common as common
from pruneax.models.vit import ContextualStage, PruningPlan, vit_flops

METHODS = (
    "random",
    "topk",
    "evit",
    "tome",
    "divprune",
    "kcenter",
    "maxsum",
    "coverage",
    "hiprune",
    "feather",
    "holov",
    "flowcut",
    "visiondrop",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """One run. ``vit`` overrides fields of the ``variant`` (e.g. ``(("num_layers", 4),)``)."""

    variant: str = "mnist/4"
    vit: tuple[tuple[str, Any], ...] = ()
    dataset: str = "mnist"  # mnist | cifar10 | digits
    # training
    iterations: int = 3000
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    augment: bool = False  # random crop (pad 4) + horizontal flip (CIFAR)
    ckpt_every: int = 500
    log_every: int = 100
    # training-free evaluation
    methods: tuple[str, ...] = METHODS
    keep_ratios: tuple[float, ...] = (0.7, 0.5, 0.3, 0.1)
    prune_layers: tuple[int, ...] = (3,)
    eval_size: int = 10_000  # test images evaluated per setting (the first ones)
    eval_batch: int = 64  # = throughput_batch: one compilation per plan serves both
    # fine-tuning with pruning in the loop
    finetune_top: int = 2
    finetune_ratio: float = 0.3
    finetune_steps: int = 300
    finetune_lr: float = 1e-4
    # throughput
    throughput_batch: int = 64
    throughput_repeats: int = 7
    throughput_iters: int = 10
    seed: int = 0
    # a model trained elsewhere instead of training one (``pretrained="lucidrains"``): the
    # ``torch.save`` state dict at ``checkpoint`` ("" = ``pretrained_path(data_dir)``); ``vit``
    # gives ``num_heads``, ``patch_size`` and ``hidden_act``; images ``(x / pixel_max - mean) /
    # std`` with ``normalize = (mean, std)`` (the model's own; None: standardised here).
    pretrained: str = ""
    checkpoint: str = ""
    normalize: tuple[float, float] | None = None
    model_name: str = ""  # names the model in the claims ("" = described from the config)


PRESETS: dict[str, Config] = {
    # Smoke test: digits (8x8, patch 2 -> 16 tokens), a 4-block ViT, seconds on CPU.
    "tiny": Config(
        variant="mnist/4",
        vit=(
            ("image_size", 8),
            ("patch_size", 2),
            ("hidden_size", 32),
            ("num_layers", 4),
            ("num_heads", 2),
            ("mlp_dim", 64),
        ),
        dataset="digits",
        iterations=500,
        batch_size=64,
        learning_rate=3e-3,
        warmup=50,
        ckpt_every=100,
        log_every=50,
        keep_ratios=(0.5,),
        prune_layers=(2,),
        eval_size=200,
        finetune_steps=10,
        finetune_ratio=0.5,
        throughput_repeats=2,
        throughput_iters=2,
    ),
    # A small ViT (patch 4 -> 49 tokens, 6 blocks) on MNIST.
    "cpu": Config(
        variant="mnist/4",
        dataset="mnist",
        iterations=2000,
        prune_layers=(2, 3),
        eval_size=5000,
    ),
    # ViT-Ti width at patch 4 (64 tokens, 12 blocks) on CIFAR-10 (JPEG set), for a lent GPU.
    "gpu": Config(
        variant="cifar/4",
        dataset="cifar10",
        iterations=30_000,
        batch_size=256,
        learning_rate=1e-3,
        warmup=1_000,
        augment=True,
        ckpt_every=2_000,
        log_every=500,
        prune_layers=(3, 6),
        finetune_steps=2_000,
        throughput_batch=64,
    ),
    # The MNIST ViT trained elsewhere (lucidrains layout: D 64, 4 heads of 64, ReLU MLP 128,
    # 6 blocks, 49 patches + CLS; 97.21%): no training, no fine-tuning; pruning before blocks
    # 1-4 down to 10% (5 of 49 patches) and 5% (3 patches).
    "pretrained_mnist": Config(
        variant="mnist/4",
        vit=(("hidden_act", "relu"), ("num_heads", 4), ("patch_size", 4)),
        dataset="mnist",
        iterations=0,
        methods=("random", "topk", "evit", "tome", "divprune"),
        keep_ratios=(0.5, 0.25, 0.1, 0.05),
        prune_layers=(1, 2, 3, 4),
        eval_size=10_000,
        eval_batch=500,
        throughput_batch=500,
        finetune_top=0,
        pretrained="lucidrains",
        normalize=(0.1307, 0.3081),
        throughput_repeats=3,
        throughput_iters=3,
        model_name="MNIST ViT trained elsewhere (lucidrains layout)",
    ),
}

PRETRAINED_RELATIVE = ("pretrained", "vit-mnist-lucidrains", "vit_mnist_gpu.pt")


def pretrained_path(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """Where the ``pretrained_mnist`` checkpoint lives under ``data_dir`` (or
    ``$PRUNEAX_DATA_DIR``); None without a data directory."""
    root = data_dir or os.environ.get("PRUNEAX_DATA_DIR")
    return pathlib.Path(root, *PRETRAINED_RELATIVE) if root else None


def extra_presets(preset: str, data_dir: str | None) -> tuple[str, ...]:
    """The presets ``reproduce`` runs besides ``EXPERIMENT.presets[preset]``: the pretrained
    MNIST ViT at ``cpu`` / ``gpu`` when the data directory holds its checkpoint."""
    path = pretrained_path(data_dir)
    return ("pretrained_mnist",) if preset != "tiny" and path and path.is_file() else ()


# ----------------------------------------------------------------------------- data


def prepare(cfg: Config, data_dir: str | None) -> tuple[Config, dict[str, np.ndarray]]:
    if cfg.normalize is not None:  # the model's own input normalisation
        ds = pdata.load_dataset(cfg.dataset, data_dir)
        mean, std = cfg.normalize
        norm = lambda x: ((np.asarray(x, np.float32) / ds.pixel_max - mean) / std).astype(
            np.float32
        )
        chan = lambda x: x[..., None] if x.ndim == 3 else x
        return cfg, {
            "x_train": chan(norm(ds.train_images)),
            "y_train": np.asarray(ds.train_labels, np.int32),
            "x_test": chan(norm(ds.test_images)),
            "y_test": np.asarray(ds.test_labels, np.int32),
        }
    dataset = cfg.dataset
    if dataset != "digits" and data_dir is None and not os.environ.get("PRUNEAX_DATA_DIR"):
        print(
            f"[vit_token_pruning] no --data_dir and no $PRUNEAX_DATA_DIR: using scikit-learn's "
            f"bundled digits instead of {dataset} (8x8 images, patch 2)",
            flush=True,
        )
        dataset = "digits"
        vit = dict(cfg.vit) | {"image_size": 8, "patch_size": 2}
        cfg = dataclasses.replace(cfg, dataset="digits", vit=tuple(sorted(vit.items())))
    arrays = common.load_standardized(dataset, data_dir)
    return cfg, arrays


def model_config(cfg: Config, arrays: dict[str, np.ndarray]) -> models.ViTConfig:
    return models.vit_config(cfg.variant, **common.shape_overrides(arrays, cfg.vit))


# ----------------------------------------------------------------------------- model + training


def make_runner(cfg: Config, vit_cfg: models.ViTConfig) -> common.Runner:
    model = models.ViT(vit_cfg, rngs=nnx.Rngs(cfg.seed))
    return common.Runner(cfg, model, log_tag="[vit_token_pruning]")


def load_pretrained(cfg: Config, arrays: dict[str, np.ndarray], data_dir: str | None) -> models.ViT:
    """The ``cfg.pretrained`` model (``"lucidrains"``: ``load_lucidrains_vit``)."""
    if cfg.pretrained != "lucidrains":
        raise ValueError(f"pretrained must be '' or 'lucidrains'; got {cfg.pretrained!r}")
    path = pathlib.Path(cfg.checkpoint) if cfg.checkpoint else pretrained_path(data_dir)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"[vit_token_pruning] pretrained checkpoint not found: {path} (pass --data_dir "
            f"holding {'/'.join(PRETRAINED_RELATIVE)}, or --checkpoint)"
        )
    v = dict(cfg.vit)
    h, w, c = arrays["x_test"].shape[1:]
    return models.load_lucidrains_vit(
        path, num_heads=v.get("num_heads", 4), image_size=(h, w), patch_size=v["patch_size"],
        num_channels=c, hidden_act=v.get("hidden_act", "relu"), dtype=jnp.float32,
    )  # fmt: skip


def model_name(cfg: dict[str, Any]) -> str:
    """How the claims name the model of a run (its ``config`` as in ``results.json``)."""
    if cfg.get("model_name"):
        return cfg["model_name"]
    return f"pruneax {cfg.get('variant')} trained here, {cfg.get('dataset')}"


@functools.partial(jax.jit, static_argnames=("runner", "plan"))
def _kept(runner: common.Runner, params, x, key, *, plan):
    """Original patch ids surviving the last stage of ``plan`` (for the picture)."""
    return runner.model(params)(x, plan=plan, key=key).kept[-1]


# ----------------------------------------------------------------------------- plans and FLOPs


def make_plan(method: str, layer: int, ratio: float, vit_cfg: models.ViTConfig) -> PruningPlan:
    """One stage at ``layer`` keeping ``ratio`` of the patches (ToMe: merged over blocks;
    FlowCut: scored after blocks ``0 .. layer - 1``, left at ``ratio`` before block ``layer``)."""
    n, p = vit_cfg.num_patches, vit_cfg.num_prefix
    if method == "tome":
        plan = PruningPlan.merging(layer, ratio, num_patches=n, num_prefix=p)
    elif method == "flowcut":
        if p != 1 or not vit_cfg.class_token:
            raise ValueError(f"flowcut needs exactly one prefix token, the CLS; the model has {p}")
        plan = PruningPlan.flowcut(ratio, num_layers=vit_cfg.num_layers, select_layer=layer)
    elif method == "visiondrop":  # VisionZip / VisionDrop's vision stage: dominant + contextual
        plan = PruningPlan((ContextualStage(layer=layer, keep=ratio),))
    else:
        plan = PruningPlan.at(layer, ratio, method)
    plan.validate(vit_cfg.num_layers, n)
    return plan


def block_tokens(plan: PruningPlan | None, c: models.ViTConfig) -> list[list[int]]:
    """``[attention tokens, MLP tokens]`` of each block under ``plan``, prefix included
    (``PruningPlan.block_tokens``; they differ in a block an in-block stage runs in)."""
    pairs = (plan or PruningPlan()).block_tokens(c.num_layers, c.num_patches)
    return [[c.num_prefix + a, c.num_prefix + m] for a, m in pairs]


# ----------------------------------------------------------------------------- run


def run(cfg: Config, workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) the experiment; returns the results dict also written to results.json."""
    if cfg.ckpt_every % cfg.log_every:
        raise ValueError(
            f"ckpt_every ({cfg.ckpt_every}) must be a multiple of log_every ({cfg.log_every}) "
            "so that a resumed run logs the same losses"
        )
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods must be among {METHODS}; got unknown {sorted(unknown)}")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, arrays = prepare(cfg, data_dir)
    if cfg.pretrained:
        pretrained = load_pretrained(cfg, arrays, data_dir)
        vit_cfg = pretrained.config
        runner = common.Runner(cfg, pretrained, log_tag="[vit_token_pruning]")
    else:
        vit_cfg = model_config(cfg, arrays)
        runner = make_runner(cfg, vit_cfg)
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    x_eval, y_eval = data["x_test"][: cfg.eval_size], data["y_test"][: cfg.eval_size]

    progress = lab.Progress(workdir, cfg, ("evals", "finetune"))
    runner.metrics = metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0

    # 1. train (a pretrained model is used as loaded)
    print(f"[vit_token_pruning] ViT {vit_cfg}", flush=True)
    if cfg.pretrained:
        params, losses = runner.params0, []
    else:
        params, losses = runner.train(
            runner.params0, data, steps=cfg.iterations, lr=cfg.learning_rate,
            warmup=cfg.warmup, plan=None, ckpt=lab.Checkpoints(workdir / "checkpoints" / "train"),
            tag="train", augment=cfg.augment,
        )  # fmt: skip

    # 2. training-free evaluation
    evals = progress["evals"]
    settings = [("dense", 0, 1.0)] + [
        (m, layer, r) for layer in cfg.prune_layers for r in cfg.keep_ratios for m in cfg.methods
    ]
    for j, (method, layer, ratio) in enumerate(settings):
        name = f"{method}@L{layer}:{ratio}"
        if name in evals:
            continue
        try:
            plan = None if method == "dense" else make_plan(method, layer, ratio, vit_cfg)
        except ValueError as e:
            evals[name] = {"method": method, "layer": layer, "ratio": ratio, "skipped": str(e)}
            print(f"[vit_token_pruning] {name}: skipped ({e})", flush=True)
            continue
        t = time.perf_counter()
        acc = runner.accuracy(params, x_eval, y_eval, plan, cfg.eval_batch, cfg.seed)
        metrics.scalar(f"eval/{method}_L{layer}/accuracy_vs_keep_percent", acc, round(100 * ratio))
        evals[name] = {
            "method": method,
            "layer": layer,
            "ratio": ratio,
            "accuracy": acc,
            "block_tokens": block_tokens(plan, vit_cfg),
            "flops_ratio": vit_flops(vit_cfg, plan) / vit_flops(vit_cfg),
        }
        print(
            f"[vit_token_pruning] eval {j + 1}/{len(settings)} {name}: acc {acc:.4f} "
            f"({time.perf_counter() - t:.1f}s)",
            flush=True,
        )
        progress.save()

    # 3. fine-tune the best two methods (mean training-free accuracy over all settings)
    ranked = _rank_methods(evals, cfg)
    layer = cfg.prune_layers[0]
    for method in ranked[: cfg.finetune_top]:
        name = f"{method}@L{layer}:{cfg.finetune_ratio}"
        if name in progress["finetune"]:
            continue
        plan = make_plan(method, layer, cfg.finetune_ratio, vit_cfg)
        tag = f"finetune {name}"
        ft_params, ft_losses = runner.train(
            params, data, steps=cfg.finetune_steps, lr=cfg.finetune_lr,
            warmup=max(1, cfg.finetune_steps // 10), plan=plan,
            ckpt=lab.Checkpoints(workdir / "checkpoints" / f"ft_{method}", max_to_keep=1),
            tag=tag, augment=cfg.augment,
        )  # fmt: skip
        before = runner.accuracy(params, x_eval, y_eval, plan, cfg.eval_batch, cfg.seed)
        after = runner.accuracy(ft_params, x_eval, y_eval, plan, cfg.eval_batch, cfg.seed)
        dense_after = runner.accuracy(ft_params, x_eval, y_eval, None, cfg.eval_batch, cfg.seed)
        progress["finetune"][name] = {
            "method": method,
            "layer": layer,
            "ratio": cfg.finetune_ratio,
            "steps": cfg.finetune_steps,
            "accuracy_training_free": before,
            "accuracy_finetuned": after,
            "accuracy_finetuned_unpruned": dense_after,
            "losses": ft_losses,
        }
        print(f"[vit_token_pruning] {tag}: acc {before:.4f} -> {after:.4f}", flush=True)
        progress.save()

    # 4. throughput (measured in one go, side by side, after everything else)
    x_tp = data["x_test"][: cfg.throughput_batch]
    dense_ips = runner.throughput(params, x_tp, None)
    throughput = {"dense": {"images_per_s": dense_ips}}
    print(f"[vit_token_pruning] throughput dense: {dense_ips:.0f} img/s", flush=True)
    for name, e in evals.items():
        if e["method"] == "dense" or "skipped" in e:
            continue
        plan = make_plan(e["method"], e["layer"], e["ratio"], vit_cfg)
        ips = runner.throughput(params, x_tp, plan)
        throughput[name] = {
            "images_per_s": ips,
            "speedup": ips / dense_ips,
            "ideal_speedup": 1.0 / e["flops_ratio"],
        }
        throughput[name]["efficiency"] = (
            throughput[name]["speedup"] / throughput[name]["ideal_speedup"]
        )
    print(f"[vit_token_pruning] throughput measured for {len(throughput)} settings", flush=True)

    results = {
        "config": lab.config_json(cfg),
        "vit": dataclasses.asdict(vit_cfg),
        "machine": lab.machine(),
        "train_losses": losses,
        "evals": evals,
        "finetune": progress["finetune"],
        "throughput": throughput,
    }
    kept = _kept_patches(runner, params, arrays, vit_cfg, cfg)  # every process computes
    if jax.process_index() == 0:  # one writer of results and plots (shared storage)
        lab.write_json(workdir / "results.json", results)
        lab.write_text(workdir / "results.md", _tables(results))
        _plot_accuracy(results, workdir / "accuracy.png")
        _plot_speedup(results, workdir / "speedup.png")
        _plot_kept(kept, arrays, vit_cfg, cfg, workdir / "kept_patches.png")
    metrics.close()
    print(f"[vit_token_pruning] wrote {workdir}/results.json, results.md and plots", flush=True)
    return results


def _rank_methods(evals: dict[str, Any], cfg: Config) -> list[str]:
    means = {}
    for m in cfg.methods:
        if m == "random":
            continue
        accs = [e["accuracy"] for e in evals.values() if e["method"] == m and "accuracy" in e]
        if accs:
            means[m] = float(np.mean(accs))
    return sorted(means, key=lambda m: -means[m])


# ----------------------------------------------------------------------------- outputs


def _tables(results: dict[str, Any]) -> str:
    cfg = results["config"]
    evals, tp = results["evals"], results["throughput"]
    dense = evals["dense@L0:1.0"]["accuracy"]
    lines = [
        f"Model: {model_name(cfg)}.",
        "",
        f"Dense test accuracy: {dense:.4f} (first {cfg['eval_size']} test images)",
        "",
    ]
    for layer in cfg["prune_layers"]:
        ratios = cfg["keep_ratios"]
        lines += [
            f"### Training-free accuracy, pruning before block {layer}",
            "",
            "| method | " + " | ".join(f"keep {r}" for r in ratios) + " |",
            "|---" * (len(ratios) + 1) + "|",
        ]
        for m in cfg["methods"]:
            cells = []
            for r in ratios:
                e = evals.get(f"{m}@L{layer}:{r}", {})
                cells.append(f"{e['accuracy']:.4f}" if "accuracy" in e else "n/a")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", f"### Speed-up (realised / FLOPs-ideal), block {layer}", ""]
        lines += [
            "| method | " + " | ".join(f"keep {r}" for r in ratios) + " |",
            "|---" * (len(ratios) + 1) + "|",
        ]
        for m in cfg["methods"]:
            cells = []
            for r in ratios:
                t = tp.get(f"{m}@L{layer}:{r}")
                cells.append(f"{t['speedup']:.2f} / {t['ideal_speedup']:.2f}" if t else "n/a")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["finetune"]:
        lines += [
            "### Fine-tuned with pruning in the loop",
            "",
            "| setting | steps | training-free | fine-tuned | fine-tuned, unpruned |",
            "|---|---|---|---|---|",
        ]
        for name, f in results["finetune"].items():
            lines.append(
                f"| {name} | {f['steps']} | {f['accuracy_training_free']:.4f} | "
                f"{f['accuracy_finetuned']:.4f} | {f['accuracy_finetuned_unpruned']:.4f} |"
            )
    lines += ["", f"Dense throughput: {tp['dense']['images_per_s']:.0f} images/s"]
    return "\n".join(lines) + "\n"


def _plot_accuracy(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    cfg, evals = results["config"], results["evals"]
    layers = cfg["prune_layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(6 * len(layers), 4.5), squeeze=False)
    dense = evals["dense@L0:1.0"]["accuracy"]
    colors = {m: plt.cm.tab20(i % 20) for i, m in enumerate(METHODS)}
    for ax, layer in zip(axes[0], layers, strict=True):
        for m in cfg["methods"]:
            pts = [
                (r, evals[f"{m}@L{layer}:{r}"]["accuracy"])
                for r in cfg["keep_ratios"]
                if "accuracy" in evals.get(f"{m}@L{layer}:{r}", {})
            ]
            if pts:
                ls = "--" if m == "random" else "-"
                ax.plot(*zip(*pts, strict=True), ls, marker="o", color=colors[m], label=m)
        for f in results["finetune"].values():
            if f["layer"] == layer:
                ax.scatter([f["ratio"]], [f["accuracy_finetuned"]], marker="*", s=160,
                           color=colors[f["method"]], edgecolor="k", zorder=5,
                           label=f"{f['method']} fine-tuned")  # fmt: skip
        ax.axhline(dense, color="k", lw=0.8, ls=":", label="dense")
        ax.set_xlabel("keep ratio (patch tokens)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"pruning before block {layer}")
        ax.invert_xaxis()
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


def _plot_speedup(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    cfg, evals, tp = results["config"], results["evals"], results["throughput"]
    fig, ax = plt.subplots(figsize=(6, 5))
    top = 1.0
    for i, m in enumerate(METHODS):
        if m not in cfg["methods"]:
            continue
        pts = [
            (tp[n]["ideal_speedup"], tp[n]["speedup"])
            for n, e in evals.items()
            if e["method"] == m and n in tp
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=m, s=20, color=plt.cm.tab20(i % 20))
            top = max(top, *(max(p) for p in pts))
    ax.plot([1, top], [1, top], "k:", lw=0.8, label="ideal")
    ax.set_xlabel("FLOPs-ideal speed-up")
    ax.set_ylabel(f"realised speed-up (batch {cfg['throughput_batch']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


def _kept_patches(runner, params, arrays, vit_cfg, cfg) -> dict[str, np.ndarray | None]:
    """Per method, the patch ids its plan keeps in the first 4 test images (None: no plan at
    the fine-tuning ratio); a collective call in a multi-process run."""
    out = {}
    x = lab.replicate(jnp.asarray(arrays["x_test"][:4]), runner.mesh)  # not split: 4 images
    for m in cfg.methods:
        try:
            plan = make_plan(m, cfg.prune_layers[0], cfg.finetune_ratio, vit_cfg)
        except ValueError:
            out[m] = None
            continue
        out[m] = lab.to_host(_kept(runner, params, x, jax.random.key(0), plan=plan))
    return out


def _plot_kept(kept_by, arrays, vit_cfg, cfg, path: pathlib.Path) -> None:
    plt = common.pyplot()
    ratio = cfg.finetune_ratio
    layer = cfg.prune_layers[0]
    images = arrays["x_test"][:4]
    methods = [m for m in cfg.methods]
    fig, axes = plt.subplots(
        len(images), len(methods) + 1, figsize=(1.3 * (len(methods) + 1), 1.4 * len(images))
    )
    gh = gw = None
    shown = (images - images.min()) / (images.max() - images.min() + 1e-9)
    for col, m in enumerate(["input", *methods]):
        kept = None if m == "input" else kept_by[m]
        for row in range(len(images)):
            ax = axes[row, col]
            img = shown[row]
            h, w = img.shape[:2]
            p = vit_cfg.patch_size
            gh, gw = h // p, w // p
            if kept is not None:
                mask = np.zeros(gh * gw, bool)
                mask[kept[row][kept[row] >= 0]] = True
                mask = np.kron(mask.reshape(gh, gw), np.ones((p, p), bool))[..., None]
                img = np.where(mask, img, img * 0.15)
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(m, fontsize=8)
    fig.suptitle(f"patches kept (bright) at keep {ratio}, before block {layer}", fontsize=9)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------- CLI


# ------------------------------------------------------------------------- claims


def _at(evals: dict[str, Any], method: str, layer: int, ratio: float) -> dict[str, Any] | None:
    e = evals.get(f"{method}@L{layer}:{ratio}")
    return e if e is not None and "accuracy" in e else None


def _at_flops(evals: dict[str, Any], method: str, layer: int, flops: float):
    """``method``'s accuracy pruning before ``layer`` at the FLOPs ratio ``flops``, linearly
    interpolated between the two measured keep ratios that bracket it (the dense model is
    "keep 1.0" of every method); None outside the measured range."""
    dense = evals.get("dense@L0:1.0", {})
    pts = [(e["flops_ratio"], e["accuracy"]) for e in evals.values()
           if e["method"] == method and e["layer"] == layer and "accuracy" in e]  # fmt: skip
    if "accuracy" in dense:
        pts.append((1.0, dense["accuracy"]))
    pts.sort()
    for (f0, a0), (f1, a1) in itertools.pairwise(pts):
        if f0 - 1e-9 <= flops <= f1 + 1e-9:
            t = 0.0 if f1 == f0 else min(max((flops - f0) / (f1 - f0), 0.0), 1.0)
            return {"accuracy": a0 + t * (a1 - a0), "between": (f0, f1)}
    return None


def _every(by: dict[str, list[int]], count: int) -> str:
    """Verdict of "at every layer": fails if it fails at one, holds if it holds at all."""
    if by[lab.FAILS]:
        return lab.FAILS
    if count and len(by[lab.HOLDS]) == count:
        return lab.HOLDS
    return lab.NA if len(by[lab.NA]) == count else lab.NOISE


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims this experiment tests, each beside what ``results.json`` (``r``)
    measured, with a computed verdict (``pruneax.lab.compare``); read by ``reproduce``.

    Every comparison is made at every pruning layer the run evaluated, one claim per layer
    (never the favourable layer alone), and names the model (``model_name``): top-k vs random
    at every layer and keep ratio ``Lx:q``, with a line saying where each verdict came out
    (it holds "at every pruning layer and keep ratio" only if it holds everywhere); EViT's
    fusion, DivPrune and MMTok's coverage vs top-k at the smallest keep ratio; ToMe at its
    smallest measured keep ratio vs top-k and vs random at the same FLOPs (their accuracy
    interpolated between the two measured keep ratios that bracket ToMe's FLOPs). A
    comparison whose method the run did not include is one "not measured" line.
    """
    cfg, ev = r["config"], r["evals"]
    n, model = common.n_test_images(cfg), model_name(cfg)
    ran = set(cfg.get("methods") or METHODS)
    layers = sorted({e["layer"] for e in ev.values() if e["method"] != "dense"})
    ratios = sorted({e["ratio"] for e in ev.values() if e["method"] != "dense"})
    out: list[lab.Claim] = []

    def label(text: str, layer: int | None = None) -> str:
        return (
            f"{text} (before block {layer}; {model})" if layer is not None else f"{text} ({model})"
        )

    def pair(paper, text, a, b, layer, ratio):
        ea, eb = _at(ev, a, layer, ratio), _at(ev, b, layer, ratio)
        where = f"{a} vs {b}, keep {ratio} before block {layer}"
        return lab.versus(paper, label(text, layer), ea, eb, n, where)

    def missing(paper, text, *methods):
        if set(methods) <= ran:
            return False
        out.append(lab.Claim(paper, label(text), f"not run: {sorted(set(methods) - ran)}", lab.NA))
        return True

    def smallest(a, b, layer):
        both = [q for q in ratios if _at(ev, a, layer, q) and _at(ev, b, layer, q)]
        return min(both) if both else (min(ratios) if ratios else 0.0)

    topk_random = "Attention top-k beats random selection"
    if not missing("EViT / FasterVLM", topk_random, "topk", "random"):
        grid = [(L, q) for L in layers for q in sorted(ratios, reverse=True)]
        rows = [pair("EViT / FasterVLM", f"{topk_random}, keep {q}", "topk", "random", L, q)
                for L, q in grid]  # fmt: skip
        out += rows
        by = {v: [f"L{L}:{q}" for (L, q), c in zip(grid, rows, strict=True) if c.verdict == v]
              for v in lab.VERDICTS}  # fmt: skip
        summary = "; ".join(f"{v} at {', '.join(by[v])}" for v in lab.VERDICTS if by[v])
        text = f"{topk_random} at every pruning layer and keep ratio"
        out.append(
            lab.Claim("EViT / FasterVLM", label(text), summary or "-", _every(by, len(grid)))
        )
    aggressive = "beats attention top-k at aggressive budgets"
    for paper, text, a in (
        ("EViT", "Fusing the pruned tokens beats dropping them", "evit"),
        ("DivPrune", f"Diversity {aggressive}", "divprune"),
        ("MMTok", f"Coverage {aggressive}", "coverage"),
    ):
        if not missing(paper, text, a, "topk"):
            out += [pair(paper, text, a, "topk", L, smallest(a, "topk", L)) for L in layers]
    for b in ("topk", "random"):
        text = f"ToMe merging beats {b} pruning at equal FLOPs"
        if missing("ToMe", text, "tome", b):
            continue
        for L in layers:
            tome = [_at(ev, "tome", L, q) for q in ratios]
            tome = [e for e in tome if e is not None]
            if not tome:
                out.append(lab.Claim("ToMe", label(text, L), "no ToMe setting ran", lab.NA))
                continue
            t = min(tome, key=lambda e: e["ratio"])
            other = _at_flops(ev, b, L, t["flops_ratio"])
            where = (
                f"tome keep {t['ratio']} from block {L} ({100 * t['flops_ratio']:.0f}% FLOPs) vs "
                f"{b} at equal FLOPs (interpolated)"
            )
            out.append(lab.versus("ToMe", label(text, L), t, other, n, where))
    tp = {k: v for k, v in r["throughput"].items() if "efficiency" in v}
    if tp:
        eff = sorted(v["efficiency"] for v in tp.values())
        med = eff[len(eff) // 2]
        out.append(
            lab.Claim(
                "EViT / ToMe",
                label("Fewer tokens give a real speed-up close to the FLOPs reduction"),
                f"median realised / ideal speed-up over {len(eff)} settings: {med:.2f} "
                f"(range {eff[0]:.2f}-{eff[-1]:.2f}); target >= 0.85",
                lab.HOLDS if med >= 0.85 else lab.FAILS,
            )
        )
    for name, ft in r.get("finetune", {}).items():
        out.append(
            lab.versus(
                "EViT / DynamicViT",
                label("Fine-tuning with the pruning in the loop recovers accuracy"),
                ft,
                ft,
                n,
                f"{name} after {ft['steps']} steps vs training-free",
                key="accuracy_finetuned",
                key_b="accuracy_training_free",
            )
        )
    return out


EXPERIMENT = common.Experiment(
    name="vit_token_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},  # + extra_presets (pretrained)
    needs_data=True,
    claims=claims,
    summary=(
        "A ViT trained once, then every token-pruning method at several keep ratios and "
        "layers; a fine-tune with pruning in the loop; throughput vs FLOPs."
    ),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.experiment_parser(__doc__, PRESETS)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="override the methods")
    parser.add_argument("--prune_layers", type=int, nargs="+", help="override pruning layers")
    parser.add_argument("--checkpoint", help="pretrained_mnist: the state dict (default: DATA/...)")
    args = parser.parse_args(argv)
    return run(common.config_from_args(args, PRESETS), args.workdir, args.data_dir)


if __name__ == "__main__":
    main()
