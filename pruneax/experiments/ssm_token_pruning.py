"""SSM token pruning (ToP-ViM): train a Vision Mamba once, then prune it with and without alignment.

Commands:
  python -m pruneax.experiments.ssm_token_pruning --preset tiny --workdir /tmp/stp  # smoke
  python -m pruneax.experiments.ssm_token_pruning --preset cpu --data_dir ../shared/data \
      --workdir runs/stp
  python -m pruneax.experiments.ssm_token_pruning --preset gpu --data_dir ../shared/data \
      --workdir runs/stp_gpu

1. Train a ``Vim`` (AdamW, warmup + cosine; no weight decay on ``A_log``, the position
   embedding and the class token, as hustvl/Vim) with an orbax checkpoint every ``ckpt_every``
   steps; a killed run resumes from the last one.
2. Evaluate, training-free, on the first ``eval_size`` test images: dense, then every mode of
   ``modes`` (``MODE_KEYS``: ``naive``; ``aligned_exact``; ``aligned_gap/own``,
   ``aligned_gap/prev`` = ToP-ViM's hidden-state alignment with the pruned positions' decay
   estimated from the kept token's own / the previous kept token's step) on
   - the main schedule: ToP-ViM's (stages before blocks 5, 10, 15 of 24 keeping 0.8 each
     time) scaled to the model depth (``topvim_layers``: blocks 2, 4, 6 of 8), and
   - one stage before block ``single_layer`` at each of ``keep_ratios``;
   plus the importance-metric ablation (``metrics``: clipped / unclipped / l1 / l2 / random)
   on the main schedule for the best aligned mode that saves FLOPs.
3. Fine-tune briefly with pruning in the loop (``finetune_steps``) naive and the best aligned
   mode on the main schedule; training-free and fine-tuned accuracy stand side by side.
4. FLOPs (``vim_flops``) of every setting and measured throughput (images/s, jitted, batch
   ``throughput_batch``, median of ``throughput_repeats``) of dense and each mode on the main
   schedule.

Outputs in ``--workdir``: ``results.json``, ``results.md`` (tables, incl. each setting's
agreement with the dense predictions and its mean logit distance to ``aligned_exact``),
``accuracy_flops.png``, ``metric_ablation.png``, ``finetune.png``, ``logits/`` (every
setting's eval logits). Progress is printed; evaluations and fine-tunes done before an
interruption are kept in ``progress.json`` and not repeated.

References: Zhan et al., "Exploring Token Pruning in Vision State Space Models" (ToP-ViM),
NeurIPS 2024 (arXiv:2409.18962); Zhu et al., "Vision Mamba", ICML 2024 (arXiv:2401.09417).
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from pruneax.models import VimPruningPlan

# mode key -> (VimPruneStage mode, gap_rule, cls_position)
_MODES: dict[str, tuple[str, str | None, str]] = {
    "naive": ("naive", None, "original"),
    "naive/middle": ("naive", None, "middle"),  # the released code re-inserts cls mid-sequence
    "aligned_exact": ("aligned_exact", None, "original"),
    "aligned_gap/own": ("aligned_gap", "own", "original"),
    "aligned_gap/prev": ("aligned_gap", "prev", "original"),
    "aligned_gap/true": ("aligned_gap", "true", "original"),
}
MODE_KEYS = tuple(_MODES)
DEFAULT_MODES = ("naive", "aligned_exact", "aligned_gap/own", "aligned_gap/prev")
METRICS = models.VIM_METRICS  # clipped (ToP-ViM), unclipped, l1, l2, random
_NO_DECAY = frozenset({"A_log", "A_b_log", "pos_embed", "cls_token"})
_TAG = "[ssm_token_pruning]"


@dataclasses.dataclass(frozen=True)
class Config:
    """One run. ``vim`` overrides fields of the ``variant`` (e.g. ``(("depth", 4),)``)."""

    variant: str = "mnist/4"
    vim: tuple[tuple[str, Any], ...] = (("scan_mode", "sequential"),)
    dataset: str = "mnist"  # mnist | cifar10 | digits
    # training
    iterations: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    augment: bool = False  # random crop (pad 4) + horizontal flip (CIFAR)
    ckpt_every: int = 100
    log_every: int = 20
    # training-free evaluation
    modes: tuple[str, ...] = DEFAULT_MODES
    schedule_layers: tuple[int, ...] | None = None  # None: topvim_layers(depth)
    schedule_keep: float = 0.8
    single_layer: int | None = None  # None: the first layer of the main schedule
    keep_ratios: tuple[float, ...] = (0.7, 0.5, 0.3)
    metrics: tuple[str, ...] = METRICS
    eval_size: int = 2000  # test images evaluated per setting (the first ones)
    eval_batch: int = 64  # = throughput_batch: one compilation per plan serves both
    # fine-tuning with pruning in the loop (naive and the best aligned mode, main schedule)
    finetune_steps: int = 150
    finetune_lr: float = 2e-4
    # throughput
    throughput_batch: int = 64
    throughput_repeats: int = 5
    throughput_iters: int = 5
    seed: int = 0


PRESETS: dict[str, Config] = {
    # Smoke test: digits (8x8, patch 2 -> 16 patches + cls), a 4-block Vim, a minute on CPU.
    "tiny": Config(
        variant="mnist/4",
        vim=(
            ("image_size", 8),
            ("patch_size", 2),
            ("dim", 16),
            ("depth", 4),
            ("d_state", 8),
            ("scan_mode", "sequential"),
        ),
        dataset="digits",
        iterations=400,
        batch_size=32,
        learning_rate=5e-3,
        warmup=40,
        ckpt_every=100,
        log_every=50,
        keep_ratios=(0.5,),
        metrics=("clipped", "random"),
        eval_size=256,
        eval_batch=32,
        finetune_steps=10,
        finetune_lr=5e-4,
        throughput_batch=32,
        throughput_repeats=2,
        throughput_iters=2,
    ),
    # mnist/4 (49 patches + cls, dim 64, 8 blocks) on MNIST with d_state 8 instead of 16 so that
    # training fits about 15 minutes on 2 shared CPU cores: the bidirectional selective scan
    # dominates (its cost is B * L * E * S per direction and block); measured 1.3 s per step of
    # 64 images with d_state 8 (2.9 s with 16) under load. Sequential scan (about 5x the
    # associative one on CPU).
    "cpu": Config(
        variant="mnist/4",
        vim=(("d_state", 8), ("scan_mode", "sequential")),
        dataset="mnist",
        iterations=600,
        batch_size=64,
        learning_rate=2e-3,
        warmup=50,
        ckpt_every=100,
        log_every=20,
        eval_size=5000,
        finetune_steps=300,
    ),
    # Vim with ViM-Ti width at patch 4 (64 patches + cls, 12 blocks) on CIFAR-10 (JPEG set),
    # associative scan, for a lent GPU.
    "gpu": Config(
        variant="cifar/4",
        vim=(("scan_mode", "associative"),),
        dataset="cifar10",
        iterations=30_000,
        batch_size=256,
        learning_rate=1e-3,
        warmup=1_000,
        augment=True,
        ckpt_every=2_000,
        log_every=500,
        keep_ratios=(0.7, 0.5, 0.3, 0.1),
        eval_size=10_000,
        finetune_steps=2_000,
        finetune_lr=1e-4,
        throughput_repeats=7,
        throughput_iters=10,
    ),
}


def topvim_layers(depth: int) -> tuple[int, ...]:
    """ToP-ViM's schedule scaled to ``depth``: blocks ``(s, 2s, 3s)`` with ``s = round(depth *
    5 / 24)`` (at least 1), those ``< depth``: 24 -> (5, 10, 15), 12 -> (3, 6, 9), 8 -> (2, 4,
    6), 4 -> (1, 2, 3)."""
    s = max(1, math.floor(depth * 5 / 24 + 0.5))
    return tuple(i * s for i in (1, 2, 3) if i * s < depth)


# ----------------------------------------------------------------------------- data


def prepare(cfg: Config, data_dir: str | None) -> tuple[Config, dict[str, np.ndarray]]:
    dataset = cfg.dataset
    if dataset != "digits" and data_dir is None and not os.environ.get("PRUNEAX_DATA_DIR"):
        print(
            f"{_TAG} no --data_dir and no $PRUNEAX_DATA_DIR: using scikit-learn's bundled digits "
            f"instead of {dataset} (8x8 images, patch 2)",
            flush=True,
        )
        vim = dict(cfg.vim) | {"image_size": 8, "patch_size": 2}
        cfg = dataclasses.replace(
            cfg, dataset="digits", vim=tuple(sorted(vim.items())), augment=False
        )
        dataset = "digits"
    arrays = common.load_standardized(dataset, data_dir)
    return cfg, arrays


def model_config(cfg: Config, arrays: dict[str, np.ndarray]) -> models.VimConfig:
    return models.vim_config(cfg.variant, **common.shape_overrides(arrays, cfg.vim))


# ----------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Stages before ``layers``, each keeping ``keep`` of the patch tokens reaching it."""

    name: str
    layers: tuple[int, ...]
    keep: float

    @property
    def label(self) -> str:
        if len(self.layers) == 1:
            return f"block {self.layers[0]}, keep {self.keep}"
        return f"blocks {','.join(map(str, self.layers))} x{self.keep}"


def schedules(cfg: Config, vim_cfg: models.VimConfig) -> tuple[Schedule, list[Schedule]]:
    """``(main, singles)``: the ToP-ViM-style schedule and the one-stage schedules."""
    layers = cfg.schedule_layers or topvim_layers(vim_cfg.depth)
    main = Schedule("topvim", tuple(layers), cfg.schedule_keep)
    single = cfg.single_layer if cfg.single_layer is not None else main.layers[0]
    singles = [Schedule(f"L{single}:{r}", (single,), r) for r in cfg.keep_ratios]
    return main, singles


def make_plan(mode: str, schedule: Schedule, metric: str = "clipped") -> VimPruningPlan:
    """The ``VimPruningPlan`` of a mode key (``MODE_KEYS``) on a schedule with a metric."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {list(MODE_KEYS)}; got {mode!r}")
    base, gap_rule, cls_position = _MODES[mode]
    return VimPruningPlan.at(
        schedule.layers, schedule.keep, base, metric=metric, gap_rule=gap_rule,
        cls_position=cls_position,
    )  # fmt: skip


def eval_name(mode: str, schedule: Schedule, metric: str = "clipped") -> str:
    """``mode@schedule`` (``#metric`` appended for metrics other than clipped)."""
    return f"{mode}@{schedule.name}" + ("" if metric == "clipped" else f"#{metric}")


def _saves_flops(mode: str) -> bool:
    return _MODES[mode][0] == "aligned_gap" and _MODES[mode][1] != "true"


def best_aligned(evals: dict[str, Any], cfg: Config) -> str | None:
    """The aligned mode with the best main-schedule accuracy, preferring those saving FLOPs."""
    aligned = [m for m in cfg.modes if _MODES[m][0] != "naive"]
    pool = [m for m in aligned if _saves_flops(m)] or aligned
    scored = [(evals[f"{m}@topvim"]["accuracy"], -i, m) for i, m in enumerate(pool)]
    return max(scored)[2] if scored else None


# ----------------------------------------------------------------------------- model + training


def _decay_mask(params):
    """Weight decay on matrices and kernels only: not on A_log, position embedding, cls token."""

    def decay(path, v):
        names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
        return jnp.ndim(v) >= 2 and not (names & _NO_DECAY)

    return jax.tree_util.tree_map_with_path(decay, params)


def make_runner(cfg: Config, vim_cfg: models.VimConfig) -> common.Runner:
    """The shared data-parallel runner, with hustvl's weight-decay exclusions."""
    model = models.Vim(vim_cfg, rngs=nnx.Rngs(cfg.seed))
    return common.Runner(cfg, model, log_tag=_TAG, decay_mask=_decay_mask)


# ----------------------------------------------------------------------------- run


def _check(cfg: Config) -> None:
    if cfg.ckpt_every % cfg.log_every:
        raise ValueError(
            f"ckpt_every ({cfg.ckpt_every}) must be a multiple of log_every ({cfg.log_every}) "
            "so that a resumed run logs the same losses"
        )
    unknown = [m for m in cfg.modes if m not in _MODES]
    if unknown or not cfg.modes:
        raise ValueError(f"modes must be a non-empty subset of {list(MODE_KEYS)}; got {unknown}")
    bad = [m for m in cfg.metrics if m not in METRICS]
    if bad:
        raise ValueError(f"metrics must be among {list(METRICS)}; got unknown {bad}")
    if not 0.0 < cfg.schedule_keep <= 1.0 or not all(0.0 < r <= 1.0 for r in cfg.keep_ratios):
        raise ValueError(
            f"schedule_keep and keep_ratios must lie in (0, 1]; got {cfg.schedule_keep} and "
            f"{cfg.keep_ratios}"
        )
    if cfg.eval_batch != cfg.throughput_batch:
        raise ValueError(
            f"eval_batch ({cfg.eval_batch}) must equal throughput_batch "
            f"({cfg.throughput_batch}): one compilation per plan serves both"
        )
    for name in ("iterations", "batch_size", "eval_size", "eval_batch", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1; got {getattr(cfg, name)}")


def run(cfg: Config, workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) the experiment; returns the results dict also written to results.json."""
    _check(cfg)
    workdir = pathlib.Path(workdir)
    cfg, arrays = prepare(cfg, data_dir)
    vim_cfg = model_config(cfg, arrays)
    main_s, singles = schedules(cfg, vim_cfg)
    for s in (main_s, *singles):  # bad layers / ratios fail before any training
        make_plan(cfg.modes[0], s).validate(vim_cfg.depth, vim_cfg.num_patches)
    workdir.mkdir(parents=True, exist_ok=True)
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    x_eval, y_eval = data["x_test"][: cfg.eval_size], data["y_test"][: cfg.eval_size]
    runner = make_runner(cfg, vim_cfg)

    progress = lab.Progress(workdir, cfg, ("evals", "finetune"))
    runner.metrics = lab.MetricWriter(workdir)  # training curves in <workdir>/tensorboard

    dense_flops = models.vim_flops(vim_cfg)
    logits_dir = workdir / "logits"  # per setting, for the agreement / fidelity table
    logits_dir.mkdir(exist_ok=True)

    # 1. train
    print(f"{_TAG} Vim {vim_cfg}", flush=True)
    print(f"{_TAG} dense: {dense_flops / 1e6:.1f} MFLOPs per image", flush=True)
    params, losses = runner.train(
        runner.params0, data, steps=cfg.iterations, lr=cfg.learning_rate, warmup=cfg.warmup,
        plan=None, ckpt=lab.Checkpoints(workdir / "checkpoints" / "train"), tag="train",
        augment=cfg.augment,
    )  # fmt: skip

    # 2. training-free evaluation
    evals = progress["evals"]

    def evaluate(name, mode, schedule, metric, counter):
        if name in evals:
            return
        plan = None if mode == "dense" else make_plan(mode, schedule, metric)
        t = time.perf_counter()
        logits = runner.logits(params, x_eval, plan, cfg.eval_batch, cfg.seed)
        np.save(logits_dir / f"{_file(name)}.npy", logits)
        acc = float(np.mean(logits.argmax(-1) == np.asarray(y_eval)))
        fl = models.vim_flops(vim_cfg, plan)
        evals[name] = {
            "mode": mode,
            "schedule": None if schedule is None else dataclasses.asdict(schedule),
            "metric": metric,
            "accuracy": acc,
            "flops": fl,
            "flops_ratio": fl / dense_flops,
            "block_tokens": list(
                (plan or VimPruningPlan()).block_tokens(vim_cfg.depth, vim_cfg.num_patches)
            ),
        }
        print(
            f"{_TAG} eval {counter} {name}: acc {acc:.4f}  FLOPs x{fl / dense_flops:.3f} "
            f"({time.perf_counter() - t:.1f}s)",
            flush=True,
        )
        progress.save()

    settings = [("dense", "dense", None)] + [
        (eval_name(m, s), m, s) for s in (main_s, *singles) for m in cfg.modes
    ]
    for j, (name, mode, schedule) in enumerate(settings):
        evaluate(name, mode, schedule, "clipped", f"{j + 1}/{len(settings)}")

    # importance-metric ablation for the best aligned mode on the main schedule
    ablation_mode = best_aligned(evals, cfg)
    ablation = {}
    if ablation_mode is not None:
        for j, metric in enumerate(cfg.metrics):
            name = eval_name(ablation_mode, main_s, metric)
            evaluate(name, ablation_mode, main_s, metric, f"metric {j + 1}/{len(cfg.metrics)}")
            ablation[metric] = name

    # 3. fine-tune naive and the best aligned mode on the main schedule
    ft_modes = [m for m in ("naive", ablation_mode) if m is not None and m in cfg.modes]
    for mode in ft_modes if cfg.finetune_steps > 0 else []:
        name = eval_name(mode, main_s)
        if name in progress["finetune"]:
            continue
        plan = make_plan(mode, main_s)
        tag = f"finetune {name}"
        ft_params, ft_losses = runner.train(
            params, data, steps=cfg.finetune_steps, lr=cfg.finetune_lr,
            warmup=max(1, cfg.finetune_steps // 10), plan=plan,
            ckpt=lab.Checkpoints(
                workdir / "checkpoints" / f"ft_{mode.replace('/', '_')}", max_to_keep=1
            ),
            tag=tag, augment=cfg.augment,
        )  # fmt: skip
        after = runner.accuracy(ft_params, x_eval, y_eval, plan, cfg.eval_batch, cfg.seed)
        unpruned = runner.accuracy(ft_params, x_eval, y_eval, None, cfg.eval_batch, cfg.seed)
        progress["finetune"][name] = {
            "mode": mode,
            "schedule": dataclasses.asdict(main_s),
            "steps": cfg.finetune_steps,
            "accuracy_training_free": evals[name]["accuracy"],
            "accuracy_finetuned": after,
            "accuracy_finetuned_unpruned": unpruned,
            "losses": ft_losses,
        }
        print(
            f"{_TAG} {tag}: acc {evals[name]['accuracy']:.4f} -> {after:.4f} "
            f"(unpruned {unpruned:.4f})",
            flush=True,
        )
        progress.save()

    # 4. throughput of dense and each mode on the main schedule, measured in one go
    x_tp = data["x_test"][: cfg.throughput_batch]
    dense_ips = runner.throughput(params, x_tp, None)
    throughput = {"dense": {"images_per_s": dense_ips, "speedup": 1.0, "ideal_speedup": 1.0}}
    print(f"{_TAG} throughput dense: {dense_ips:.0f} img/s", flush=True)
    for mode in cfg.modes:
        name = eval_name(mode, main_s)
        ips = runner.throughput(params, x_tp, make_plan(mode, main_s))
        throughput[name] = {
            "images_per_s": ips,
            "speedup": ips / dense_ips,
            "ideal_speedup": 1.0 / evals[name]["flops_ratio"],
        }
        print(f"{_TAG} throughput {name}: {ips:.0f} img/s (x{ips / dense_ips:.2f})", flush=True)

    results = {
        "config": lab.config_json(cfg),
        "vim": dataclasses.asdict(vim_cfg),
        "machine": lab.machine(),
        "schedules": {
            "main": dataclasses.asdict(main_s),
            "single": [dataclasses.asdict(s) for s in singles],
        },
        "dense_flops": dense_flops,
        "train_losses": losses,
        "evals": evals,
        "fidelity": fidelity(evals, logits_dir),
        "ablation_mode": ablation_mode,
        "metric_ablation": ablation,
        "finetune": progress["finetune"],
        "throughput": throughput,
    }
    results = json.loads(json.dumps(results))  # as read back: lists, not tuples, on resume too
    lab.write_json(workdir / "results.json", results)
    lab.write_text(workdir / "results.md", _tables(results))
    _plot_accuracy_flops(results, workdir / "accuracy_flops.png")
    _plot_ablation(results, workdir / "metric_ablation.png")
    _plot_finetune(results, workdir / "finetune.png")
    runner.metrics.close()
    print(f"{_TAG} wrote {workdir}/results.json, results.md and plots", flush=True)
    return results


def _file(name: str) -> str:
    return name.replace("/", "_")


def fidelity(evals: dict[str, Any], logits_dir: pathlib.Path) -> dict[str, dict[str, float]]:
    """Per pruned setting: ``agreement_dense``, the fraction of images whose prediction equals
    the dense model's, and ``logit_diff_exact``, the mean |logit - aligned_exact's logit| over
    images and classes at the same schedule and metric (how close an approximate alignment, or
    naive pruning, comes to exact alignment)."""
    load = lambda name: np.load(logits_dir / f"{_file(name)}.npy")
    dense = load("dense").argmax(-1)
    out = {}
    for name, e in evals.items():
        if e["mode"] == "dense":
            continue
        logits = load(name)
        row = {"agreement_dense": float(np.mean(logits.argmax(-1) == dense))}
        ref = "aligned_exact@" + name.split("@", 1)[1]
        if ref in evals:
            row["logit_diff_exact"] = float(np.mean(np.abs(logits - load(ref))))
        out[name] = row
    return out


# ----------------------------------------------------------------------------- outputs


def _schedules_of(results: dict[str, Any]) -> list[Schedule]:
    s = results["schedules"]
    return [Schedule(**{**d, "layers": tuple(d["layers"])}) for d in [s["main"], *s["single"]]]


def _tables(results: dict[str, Any]) -> str:
    cfg, evals, tp = results["config"], results["evals"], results["throughput"]
    dense = evals["dense"]["accuracy"]
    scheds = _schedules_of(results)
    data = "CIFAR-10 (JPEG copy)" if cfg["dataset"] == "cifar10" else cfg["dataset"]
    lines = [
        f"Dense test accuracy: {dense:.4f} (first {cfg['eval_size']} {data} test images); "
        f"dense forward {results['dense_flops'] / 1e6:.2f} MFLOPs per image.",
        "",
        "### Training-free accuracy (FLOPs relative to dense)",
        "",
        "| mode | " + " | ".join(s.label for s in scheds) + " |",
        "|---" * (len(scheds) + 1) + "|",
    ]
    for m in cfg["modes"]:
        cells = []
        for s in scheds:
            e = evals.get(f"{m}@{s.name}")
            cells.append(f"{e['accuracy']:.4f} ({e['flops_ratio']:.2f})" if e else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    fid = results["fidelity"]
    lines += [
        "",
        "### Agreement with the dense predictions / mean |logit - aligned_exact logit|",
        "",
        "| mode | " + " | ".join(s.label for s in scheds) + " |",
        "|---" * (len(scheds) + 1) + "|",
    ]
    for m in cfg["modes"]:
        cells = []
        for s in scheds:
            f = fid.get(f"{m}@{s.name}")
            diff = f"{f['logit_diff_exact']:.4f}" if f and "logit_diff_exact" in f else "n/a"
            cells.append(f"{f['agreement_dense']:.4f} / {diff}" if f else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if results["metric_ablation"]:
        main = scheds[0]
        lines += [
            "",
            f"### Importance metric, {results['ablation_mode']} on {main.label}",
            "",
            "| metric | accuracy | agreement with dense |",
            "|---|---|---|",
        ]
        for metric, name in results["metric_ablation"].items():
            lines.append(
                f"| {metric} | {evals[name]['accuracy']:.4f} | {fid[name]['agreement_dense']:.4f} |"
            )
    if results["finetune"]:
        lines += [
            "",
            f"### Fine-tuned with pruning in the loop ({scheds[0].label})",
            "",
            "| mode | steps | training-free | fine-tuned | fine-tuned, unpruned | dense |",
            "|---|---|---|---|---|---|",
        ]
        for f in results["finetune"].values():
            lines.append(
                f"| {f['mode']} | {f['steps']} | {f['accuracy_training_free']:.4f} | "
                f"{f['accuracy_finetuned']:.4f} | {f['accuracy_finetuned_unpruned']:.4f} | "
                f"{dense:.4f} |"
            )
    lines += [
        "",
        f"### FLOPs and throughput ({scheds[0].label}; batch {cfg['throughput_batch']}, "
        f"median of {cfg['throughput_repeats']})",
        "",
        "| setting | MFLOPs | FLOPs ratio | images/s | speed-up | FLOPs-ideal speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in tp.items():
        e = evals[name]
        lines.append(
            f"| {name} | {e['flops'] / 1e6:.2f} | {e['flops_ratio']:.3f} | "
            f"{t['images_per_s']:.0f} | {t['speedup']:.2f} | {t['ideal_speedup']:.2f} |"
        )
    lines += ["", f"Machine: {results['machine']['devices']}, jax {results['machine']['jax']}"]
    return "\n".join(lines) + "\n"


def _plot_accuracy_flops(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    cfg, evals = results["config"], results["evals"]
    main, *singles = _schedules_of(results)
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for m in cfg["modes"]:
        pts = sorted(
            (evals[f"{m}@{s.name}"]["flops_ratio"], evals[f"{m}@{s.name}"]["accuracy"])
            for s in singles
            if f"{m}@{s.name}" in evals
        )
        exact = _MODES[m][0] == "aligned_exact"  # saves no FLOPs: a vertical line at 1.0
        (line,) = ax.plot(*zip(*pts, strict=True), ls=":" if exact else "-",
                          marker="x" if exact else "o", label=f"{m} (one stage)")  # fmt: skip
        e = evals[f"{m}@{main.name}"]
        ax.scatter([e["flops_ratio"]], [e["accuracy"]], marker="*", s=160, zorder=5,
                   color=line.get_color(), edgecolors="k", linewidths=0.5)  # fmt: skip
    ax.scatter([], [], marker="*", s=120, color="grey", label=f"main schedule ({main.label})")
    ax.scatter([1.0], [evals["dense"]["accuracy"]], marker="s", color="k", label="dense")
    ax.set_xlabel("FLOPs relative to dense")
    ax.set_ylabel("test accuracy (training-free)")
    ax.set_title(f"Vim token pruning: one stage before block {singles[0].layers[0]}"
                 if singles else "Vim token pruning")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


def _plot_ablation(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    evals, ab = results["evals"], results["metric_ablation"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if ab:
        names = list(ab)
        accs = [evals[ab[m]]["accuracy"] for m in names]
        ax.bar(names, accs, color=["C0" if m == "clipped" else "C7" for m in names])
        for i, a in enumerate(accs):
            ax.text(i, a, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(evals["dense"]["accuracy"], color="k", lw=0.8, ls=":", label="dense")
    ax.set_ylabel("test accuracy (training-free)")
    ax.set_title(f"importance metric, {results['ablation_mode']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


def _plot_finetune(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    ft = list(results["finetune"].values())
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = np.arange(len(ft))
    for dx, key, label in ((-0.2, "accuracy_training_free", "training-free"),
                           (0.2, "accuracy_finetuned", "fine-tuned")):  # fmt: skip
        accs = [f[key] for f in ft]
        ax.bar(xs + dx, accs, 0.4, label=label)
        for x, a in zip(xs + dx, accs, strict=True):
            ax.text(x, a, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [f["mode"] for f in ft])
    ax.axhline(results["evals"]["dense"]["accuracy"], color="k", lw=0.8, ls=":", label="dense")
    ax.set_ylabel("test accuracy")
    steps = ft[0]["steps"] if ft else 0
    ax.set_title(f"pruned in the loop for {steps} steps, main schedule", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------- CLI


# ------------------------------------------------------------------------- claims


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims this experiment tests, each beside what ``results.json`` (``r``)
    measured, with a computed verdict (``pruneax.lab.compare``); read by ``reproduce``."""
    ev, n = r["evals"], common.n_test_images(r["config"])
    name = r["schedules"]["main"]["name"]
    gap = f"{r['ablation_mode']}@{name}"
    dense, naive = ev["dense"], ev.get(f"naive@{name}")
    aligned, exact = ev.get(gap), ev.get(f"aligned_exact@{name}")
    ft = r.get("finetune", {})
    paper = "ToP-ViM (Zhan et al. 2024)"
    return [
        lab.versus(
            paper,
            "Naive token pruning breaks a vision SSM (dense beats naive clearly)",
            dense,
            naive,
            n,
            lambda a, b: f"dense vs naive at {b['flops_ratio']:.2f}x FLOPs",
        ),
        lab.versus(
            paper,
            "Pruning-aware hidden-state alignment beats naive pruning at the same FLOPs",
            aligned,
            naive,
            n,
            lambda a, b: (
                f"{gap} vs naive ({a['flops_ratio']:.2f}x vs {b['flops_ratio']:.2f}x FLOPs)"
            ),
        ),
        lab.versus(
            paper,
            "The cheap gap-decay alignment matches exact alignment",
            aligned,
            exact,
            n,
            f"{gap} vs aligned_exact",
            more=False,
        ),
        lab.versus(
            paper,
            "After fine-tuning, aligned pruning still beats naive pruning",
            ft.get(gap),
            ft.get(f"naive@{name}"),
            n,
            lambda a, b: f"{gap} vs naive after {a['steps']} steps",
            key="accuracy_finetuned",
        ),
    ]


EXPERIMENT = common.Experiment(
    name="ssm_token_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=True,
    claims=claims,
    summary=("Vision Mamba (Vim) token pruning: naive vs hidden-state alignment (ToP-ViM)."),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.experiment_parser(__doc__, PRESETS)
    parser.add_argument("--modes", nargs="+", choices=MODE_KEYS, help="override the modes")
    parser.add_argument("--finetune_steps", type=int, help="override the fine-tuning steps")
    args = parser.parse_args(argv)
    return run(common.config_from_args(args, PRESETS), args.workdir, args.data_dir)


if __name__ == "__main__":
    main()
