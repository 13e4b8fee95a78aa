"""ViT token pruning: train a ViT once, then compare every token-pruning method without retraining.

Commands:
  python -m pruneax.experiments.vit_token_pruning --preset tiny --workdir /tmp/vtp  # smoke
  python -m pruneax.experiments.vit_token_pruning --preset cpu --data_dir ../shared/data \
      --workdir runs/vtp
  python -m pruneax.experiments.vit_token_pruning --preset gpu --data_dir ../shared/data \
      --workdir runs/vtp_gpu

1. Train a ViT (AdamW, warmup + cosine) with an orbax checkpoint every ``ckpt_every`` steps; a
   killed run resumes from the last one.
2. Evaluate, training-free, every method at every keep ratio and pruning layer (one stage at
   that layer; ToMe merges over consecutive layers until it reaches the ratio, at most one
   bipartite step per block).
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
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax import lab, models
from pruneax.experiments import _common as common
from pruneax.models.vit import PruningPlan, vit_flops

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
}


# ----------------------------------------------------------------------------- data


def prepare(cfg: Config, data_dir: str | None) -> tuple[Config, dict[str, np.ndarray]]:
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


@functools.partial(jax.jit, static_argnames=("runner", "plan"))
def _kept(runner: common.Runner, params, x, key, *, plan):
    """Original patch ids surviving the last stage of ``plan`` (for the picture)."""
    return runner.model(params)(x, plan=plan, key=key).kept[-1]


# ----------------------------------------------------------------------------- plans and FLOPs


def make_plan(method: str, layer: int, ratio: float, vit_cfg: models.ViTConfig) -> PruningPlan:
    """One stage at ``layer`` keeping ``ratio`` of the patches (ToMe: merged over blocks)."""
    n, p = vit_cfg.num_patches, vit_cfg.num_prefix
    if method == "tome":
        plan = PruningPlan.merging(layer, ratio, num_patches=n, num_prefix=p)
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
    vit_cfg = model_config(cfg, arrays)
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    x_eval, y_eval = data["x_test"][: cfg.eval_size], data["y_test"][: cfg.eval_size]
    runner = make_runner(cfg, vit_cfg)

    progress = lab.Progress(workdir, cfg, ("evals", "finetune"))

    # 1. train
    print(f"[vit_token_pruning] ViT {vit_cfg}", flush=True)
    params, losses = runner.train(
        runner.params0, data, steps=cfg.iterations, lr=cfg.learning_rate, warmup=cfg.warmup,
        plan=None, ckpt=lab.Checkpoints(workdir / "checkpoints" / "train"), tag="train",
        augment=cfg.augment,
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
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    (workdir / "results.md").write_text(_tables(results))
    _plot_accuracy(results, workdir / "accuracy.png")
    _plot_speedup(results, workdir / "speedup.png")
    _plot_kept(runner, params, arrays, vit_cfg, cfg, workdir / "kept_patches.png")
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
    lines = [f"Dense test accuracy: {dense:.4f} (first {cfg['eval_size']} test images)", ""]
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_kept(runner, params, arrays, vit_cfg, cfg, path: pathlib.Path) -> None:
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
        kept = None
        if m != "input":
            try:
                plan = make_plan(m, layer, ratio, vit_cfg)
            except ValueError:
                plan = None
            if plan is not None:
                x = jnp.asarray(images)  # 4 images: not sharded (any device count)
                kept = np.asarray(_kept(runner, params, x, jax.random.key(0), plan=plan))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


# ------------------------------------------------------------------------- claims


def _pick(evals: dict[str, Any], method: str, *, smallest: bool) -> dict[str, Any] | None:
    """The eval of ``method`` at the smallest keep ratio (or the one nearest 0.5)."""
    rows = [e for e in evals.values() if e["method"] == method]
    if not rows:
        return None
    key = (lambda e: (e["ratio"], e["layer"])) if smallest else (lambda e: abs(e["ratio"] - 0.5))
    return min(rows, key=key)


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims this experiment tests, each beside what ``results.json`` (``r``)
    measured, with a computed verdict (``pruneax.lab.compare``); read by ``reproduce``."""
    ev, n = r["evals"], common.n_test_images(r["config"])

    def pair(paper, claim, a, b, smallest):
        ea = _pick(ev, a, smallest=smallest)
        eb = ev.get(f"{b}@L{ea['layer']}:{ea['ratio']}") if ea else None
        where = lambda x, _: f"{a} vs {b}, keep {x['ratio']} from block {x['layer']}"
        return lab.versus(paper, claim, ea, eb, n, where)

    aggressive = "beats attention top-k at aggressive budgets"
    claims = [
        pair("EViT / FasterVLM", "Attention top-k beats random selection", "topk", "random", False),
        pair("DivPrune", f"Diversity {aggressive}", "divprune", "topk", True),
        pair("MMTok", f"Coverage {aggressive}", "coverage", "topk", True),
        pair("EViT", "Fusing the pruned tokens beats dropping them", "evit", "topk", True),
    ]
    tp = {k: v for k, v in r["throughput"].items() if "efficiency" in v}
    if tp:
        eff = sorted(v["efficiency"] for v in tp.values())
        med = eff[len(eff) // 2]
        claims.append(
            lab.Claim(
                "EViT / ToMe",
                "Fewer tokens give a real speed-up close to the FLOPs reduction",
                f"median realised / ideal speed-up over {len(eff)} methods: {med:.2f} "
                f"(range {eff[0]:.2f}-{eff[-1]:.2f}); target >= 0.85",
                lab.HOLDS if med >= 0.85 else lab.FAILS,
            )
        )
    for name, ft in r.get("finetune", {}).items():
        claims.append(
            lab.versus(
                "EViT / DynamicViT",
                "Fine-tuning with the pruning in the loop recovers accuracy",
                ft,
                ft,
                n,
                f"{name} after {ft['steps']} steps vs training-free",
                key="accuracy_finetuned",
                key_b="accuracy_training_free",
            )
        )
    return claims


EXPERIMENT = common.Experiment(
    name="vit_token_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
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
    args = parser.parse_args(argv)
    return run(common.config_from_args(args, PRESETS), args.workdir, args.data_dir)


if __name__ == "__main__":
    main()
