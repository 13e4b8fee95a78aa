"""VLM visual-token pruning on an MNIST-grid VQA testbed: train a small LLaVA-style VLM from
scratch, then compare every pre-LLM and in-LLM pruning method without retraining.

Commands:
  python -m pruneax.experiments.vlm_token_pruning --preset tiny --workdir /tmp/vlm  # smoke
  python -m pruneax.experiments.vlm_token_pruning --preset cpu --data_dir ../shared/data \
      --workdir runs/vlm
  python -m pruneax.experiments.vlm_token_pruning --preset gpu --data_dir ../shared/data \
      --workdir runs/vlm_gpu

No pretrained VLM is available offline, so the testbed is synthetic but honest: an image is a
``grid x grid`` mosaic of digit images (MNIST, or scikit-learn's 8x8 digits for ``tiny``), and
a question is three tokens of a small synthetic vocabulary, answered by ONE token:

- ``locate``: "which digit is in cell i?" ``[WHICH, CELL_i, ?]`` (i = r * grid + c, one token
  per cell) -> ``DIG_d``: the answer lives in one region of the image (localisation);
- ``count``: "how many d's?" ``[COUNT, DIG_d, ?]`` -> ``NUM_n`` (global content; d is a digit
  of the image half of the time);
- ``exists``: "is there a d?" ``[EXISTS, DIG_d, ?]`` -> ``YES`` / ``NO`` (global, balanced).

The prompt is ``[BOS] [N visual tokens] [3 question tokens]``; the answer is the argmax of the
last token's logits. Training: the whole VLM (ViT + projector + LlamaLM) end to end, AdamW
with warmup + cosine, cross-entropy on the answer token, ``train_questions`` questions per
image (the vision tower runs once per image), orbax checkpoints every ``ckpt_every`` steps (a
killed run resumes from the last one; batches are a function of (seed, step)).

Evaluation (training-free, on a fixed set of ``eval_size`` questions about test-split digits,
families in equal numbers): dense; every pre-LLM method (``pre_methods()``: every method of
the token registry, as a ``VisualSelect``, FlowCut, which prunes inside the vision encoder
over its blocks up to the feature layer's, and VisionDrop's vision stage = VisionZip's) and
every in-LLM method (FastV at layer ``fastv_layer``; FEATHER / ToDRE specs when
``pruneax.models`` has them) at each of ``keep_ratios`` of the N visual tokens; pre-LLM + FastV
combinations; the whole VisionDrop (``visiondrop+llm``: the vision stage keeps 2r, then
``VisionDropSpec.with_budget``'s LLM stages bring the image tokens to r); and, for
``position_ablation``, pre-LLM selection with the kept tokens at their original RoPE positions
(``m/pos``; the published methods renumber them contiguously). Reported:
accuracy per family, the "cell hit rate" (locate questions whose asked cell keeps at least one
visual token in the LLM's last layer), the mean grid row of the kept tokens (0 top, 1 bottom),
projector + LLM prefill FLOPs (``vlm_prefill_flops``), and measured latency (jitted, batch
``eval_batch``, median of ``latency_repeats``): the whole prefill (vision, projector, selection,
LLM, cache fill) and the per-token decode step on the resulting KV cache.

Outputs in ``--workdir``: ``results.json``, ``results.md`` (tables), ``accuracy.png``,
``accuracy_flops.png``, ``latency.png``, ``kept_tokens.png``. Progress is printed with a
``[vlm_token_pruning]`` tag; evaluations done before an interruption are kept in
``progress.json`` and not repeated.

References: Liu et al., LLaVA-1.5, CVPR 2024; Chen et al., FastV, ECCV 2024; Zhang et al.,
FasterVLM, 2024; Alvar et al., DivPrune, CVPR 2025; MMTok, 2025; ToDRE, 2025; HiPrune, 2025;
HoloV, NeurIPS 2025; Endo et al., FEATHER, 2024.
"""

from __future__ import annotations

import dataclasses
import functools
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

from pruneax import lab
from pruneax.experiments import _common as common
from pruneax.experiments import _vlm_token_outputs as outputs
from pruneax.models.llama import (
    FastVSpec,
    FeatherSpec,
    TodreSpec,
    TransPruneSpec,
    VisionDropSpec,
    decode_greedy,
    init_cache,
    llm_config,
)
from pruneax.models.vit import ViTConfig
from pruneax.models.vlm import (
    VISION_SELECT_METHODS,
    VLM,
    VLM_SELECT_ALIASES,
    VisualSelect,
    VLMConfig,
    llm_tokens_per_layer,
    vlm_prefill_flops,
)
from pruneax.tokens import METHODS

_TAG = "[vlm_token_pruning]"
LLM_SPECS: dict[str, type] = {
    "fastv": FastVSpec,
    "feather": FeatherSpec,
    "todre": TodreSpec,
    "transprune": TransPruneSpec,
}
LLM_METHODS = tuple(LLM_SPECS)
# The experiment's own pre-LLM variants: name -> (registry method, VisualSelect fields).
PRE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "coverage_vision": ("coverage", {"coverage_text": False}),  # MMTok without the question
}


def pre_methods() -> tuple[str, ...]:
    """The pre-LLM methods: every method of ``pruneax.tokens.METHODS`` (read now) under the
    VLM's name for it (``"fastervlm"`` for ``"topk"``; ``"<name>_pre"`` where an in-LLM method
    has the same name, as ``"feather_pre"``), each followed by its ``PRE_VARIANTS``; then the
    VLM's in-vision methods (``"flowcut"``, ``"visiondrop"``)."""
    shown = {m: a for a, m in VLM_SELECT_ALIASES.items()}
    out: list[str] = []
    for m in METHODS:
        name = shown.get(m, m)
        out.append(f"{name}_pre" if name in LLM_SPECS else name)
        out += [v for v, (base, _) in PRE_VARIANTS.items() if base == m]
    return (*out, *VISION_SELECT_METHODS)


PRE_METHODS = pre_methods()
DROPPED = -2  # visual_kept entry of a visual token the LLM dropped (-1: a token without a patch)
FAMILIES = outputs.FAMILIES  # question families, in the order of their integer codes


# ----------------------------------------------------------------------------- vocabulary


class Vocab:
    """The synthetic vocabulary of a ``grid x grid`` testbed (ids are attributes / lists)."""

    def __init__(self, grid: int):
        names = ["PAD", "BOS", "WHICH", "COUNT", "EXISTS", "?", "YES", "NO"]
        names += [f"CELL_{i}" for i in range(grid * grid)]
        names += [f"DIG_{d}" for d in range(10)] + [f"NUM_{n}" for n in range(grid * grid + 1)]
        self.names = names
        self.ids = {n: i for i, n in enumerate(names)}
        self.grid = grid

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> int:
        return self.ids[name]


def make_questions(
    rng: np.random.Generator, labels: np.ndarray, grid: int, families: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Questions and answers about mosaics whose cells hold digits ``labels``.

    Args:
      rng: NumPy generator (the question's free choices).
      labels: [B, grid * grid] int digit of each cell, raster order.
      grid: cells per side.
      families: [B] int index into ``FAMILIES``.

    Returns:
      ``(question [B, 3] int32, answer [B] int32)`` token ids of ``Vocab(grid)``.
    """
    v = Vocab(grid)
    b = len(labels)
    q = np.zeros((b, 3), np.int32)
    a = np.zeros((b,), np.int32)
    cell = rng.integers(0, grid * grid, b)
    from_image = rng.random(b) < 0.5
    rand_digit = rng.integers(0, 10, b)
    for i in range(b):
        lab = labels[i]
        fam = FAMILIES[families[i]]
        if fam == "locate":
            q[i] = (v["WHICH"], v[f"CELL_{cell[i]}"], v["?"])
            a[i] = v[f"DIG_{lab[cell[i]]}"]
            continue
        if fam == "count":
            d = int(lab[cell[i]]) if from_image[i] else int(rand_digit[i])
            q[i] = (v["COUNT"], v[f"DIG_{d}"], v["?"])
            a[i] = v[f"NUM_{int(np.sum(lab == d))}"]
            continue
        present = np.unique(lab)
        absent = np.setdiff1d(np.arange(10), present)
        pool = present if from_image[i] or len(absent) == 0 else absent
        d = int(pool[int(cell[i]) % len(pool)])
        q[i] = (v["EXISTS"], v[f"DIG_{d}"], v["?"])
        a[i] = v["YES"] if d in present else v["NO"]
    return q, a


def mosaic(cells: np.ndarray, grid: int) -> np.ndarray:
    """[B, grid * grid, h, w, C] cell images (raster order) -> [B, grid * h, grid * w, C]."""
    b, _, h, w, c = cells.shape
    x = cells.reshape(b, grid, grid, h, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid * h, grid * w, c)


def sample(
    rng: np.random.Generator, labels: np.ndarray, n: int, grid: int, fam: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``n`` examples: cell indices into the split, questions, answers and families."""
    idx = rng.integers(0, len(labels), (n, grid * grid))
    fam = rng.integers(0, len(FAMILIES), n) if fam is None else fam
    q, a = make_questions(rng, labels[idx], grid, fam)
    return {"cells": idx, "question": q, "answer": a, "family": fam.astype(np.int32)}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class Config:
    """One run. ``vision`` / ``llm`` override ``ViTConfig`` / ``llm_config("tiny")`` fields."""

    dataset: str = "mnist"  # mnist | digits
    grid: int = 2
    vision: tuple[tuple[str, Any], ...] = (
        ("patch_size", 14),
        ("hidden_size", 64),
        ("num_layers", 4),
        ("num_heads", 4),
        ("mlp_dim", 128),
    )
    llm: tuple[tuple[str, Any], ...] = (
        ("hidden_size", 64),
        ("intermediate_size", 128),
        ("num_layers", 4),
        ("num_heads", 4),
        ("num_kv_heads", 2),
    )
    # training
    iterations: int = 2000
    batch_size: int = 32
    train_questions: int = 4  # questions per image per step
    aux_weight: float = 1.0  # per-cell digit loss on the vision features (see Trainee)
    learning_rate: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 100
    ckpt_every: int = 250
    log_every: int = 50
    # evaluation
    methods: tuple[str, ...] = PRE_METHODS
    llm_methods: tuple[str, ...] = LLM_METHODS
    keep_ratios: tuple[float, ...] = (0.5, 0.25, 0.11, 0.05)
    fastv_layer: int = 2
    combos: tuple[str, ...] = ("fastervlm", "divprune", "uniform")  # pre 2r + FastV 1/2 at r
    # pre-LLM methods also run with the kept tokens at their ORIGINAL RoPE positions ("m/pos")
    position_ablation: tuple[str, ...] = ("fastervlm", "divprune", "coverage", "uniform", "random")
    eval_size: int = 1200
    eval_batch: int = 40  # also the latency batch: one compilation serves both
    # latency
    latency_repeats: int = 5
    decode_tokens: int = 8
    seed: int = 0
    # > 1: a ("data", "model") mesh with this many devices per model group; the LLM's
    # projections and embedding are sharded Megatron-style over "model" (_parallel)
    model_parallel: int = 1


PRESETS: dict[str, Config] = {
    # Smoke test: 2x2 mosaics of 8x8 digits (16x16 images, patch 4 -> 16 visual tokens).
    "tiny": Config(
        dataset="digits",
        vision=(
            ("patch_size", 4),
            ("hidden_size", 32),
            ("num_layers", 3),
            ("num_heads", 2),
            ("mlp_dim", 64),
        ),
        llm=(
            ("hidden_size", 32),
            ("intermediate_size", 64),
            ("num_layers", 3),
            ("num_heads", 2),
            ("num_kv_heads", 1),
        ),
        iterations=60,
        batch_size=16,
        warmup=10,
        ckpt_every=20,
        log_every=10,
        methods=(
            "fastervlm",
            "divprune",
            "coverage",
            "coverage_vision",
            "uniform",
            "flowcut",
            "visiondrop",
        ),
        position_ablation=("uniform",),
        keep_ratios=(0.25,),
        fastv_layer=1,
        combos=("fastervlm",),
        eval_size=60,
        eval_batch=20,
        latency_repeats=2,
        decode_tokens=2,
    ),
    # 2x2 mosaics of MNIST (56x56, patch 14 -> 4x4 = 16 visual tokens, 2x2 per cell): what a
    # shared 2-core CPU trains to high accuracy in minutes (patch 7 / 64 tokens was 4x slower
    # per step and had not started to localise after 400 steps).
    "cpu": Config(),
    # 3x3 mosaics of MNIST (84x84, patch 7 -> 12x12 = 144 visual tokens), wider and deeper.
    "gpu": Config(
        grid=3,
        vision=(
            ("patch_size", 7),
            ("hidden_size", 192),
            ("num_layers", 6),
            ("num_heads", 6),
            ("mlp_dim", 384),
        ),
        llm=(
            ("hidden_size", 256),
            ("intermediate_size", 512),
            ("num_layers", 8),
            ("num_heads", 8),
            ("num_kv_heads", 4),
        ),
        iterations=15_000,
        batch_size=128,
        train_questions=4,
        learning_rate=1e-3,
        warmup=1_000,
        ckpt_every=1_000,
        log_every=250,
        eval_size=6000,
        eval_batch=120,
        latency_repeats=7,
        decode_tokens=16,
    ),
}


# ----------------------------------------------------------------------------- data + model


def prepare(cfg: Config, data_dir: str | None) -> tuple[Config, dict[str, np.ndarray]]:
    if cfg.dataset not in ("mnist", "digits"):
        raise ValueError(f"dataset must be 'mnist' or 'digits'; got {cfg.dataset!r}")
    if cfg.dataset != "digits" and data_dir is None and not os.environ.get("PRUNEAX_DATA_DIR"):
        print(
            f"{_TAG} no --data_dir and no $PRUNEAX_DATA_DIR: using scikit-learn's bundled digits "
            "instead of MNIST (8x8 cells, patch 4)",
            flush=True,
        )
        vision = dict(cfg.vision) | {"patch_size": 4}
        cfg = dataclasses.replace(cfg, dataset="digits", vision=tuple(vision.items()))
    return cfg, common.load_standardized(cfg.dataset, data_dir)


def vlm_config(cfg: Config, cell_hw: tuple[int, int], channels: int = 1) -> VLMConfig:
    """The ``VLMConfig`` of a run: a CLS ViT without classifier on the mosaic, a tiny Llama."""
    h, w = cell_hw
    vision = ViTConfig(
        **{
            "image_size": (cfg.grid * h, cfg.grid * w),
            "num_channels": channels,
            "num_classes": 0,
            **dict(cfg.vision),
        }
    )
    llm = llm_config("tiny", **{"vocab_size": len(Vocab(cfg.grid)), **dict(cfg.llm)})
    return VLMConfig(vision=vision, llm=llm)


def _check(cfg: Config) -> None:
    if cfg.ckpt_every % cfg.log_every:
        raise ValueError(
            f"ckpt_every ({cfg.ckpt_every}) must be a multiple of log_every ({cfg.log_every}) "
            "so that a resumed run logs the same losses"
        )
    pre = pre_methods()  # read now: a method registered after import counts
    bad = sorted(set(cfg.methods) - set(pre))
    if bad:
        raise ValueError(f"methods must be among {pre}; got unknown {bad}")
    bad = sorted(set(cfg.llm_methods) - set(LLM_METHODS))
    if bad:
        raise ValueError(f"llm_methods must be among {LLM_METHODS}; got unknown {bad}")
    for name in ("combos", "position_ablation"):
        bad = sorted(set(getattr(cfg, name)) - set(pre))
        if bad:
            raise ValueError(f"{name} must be among {pre}; got unknown {bad}")
    if not cfg.keep_ratios or not all(0.0 < r <= 1.0 for r in cfg.keep_ratios):
        raise ValueError(f"keep_ratios must lie in (0, 1]; got {cfg.keep_ratios}")
    if cfg.aux_weight < 0:
        raise ValueError(f"aux_weight must be >= 0; got {cfg.aux_weight}")
    if cfg.grid < 2:
        raise ValueError(f"grid must be >= 2; got {cfg.grid}")
    for name in ("iterations", "batch_size", "eval_size", "eval_batch", "train_questions"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1; got {getattr(cfg, name)}")


class Setting:
    """One evaluated configuration: a pre-LLM ``select`` and an in-LLM ``prune`` spec."""

    def __init__(self, name: str, method: str, kind: str, ratio: float, select, prune):
        self.name, self.method, self.kind, self.ratio = name, method, kind, ratio
        self.select, self.prune = select, prune


def settings(cfg: Any, vcfg: VLMConfig, start: int = 1) -> list[Setting]:
    """Dense, every pre-LLM method, every available in-LLM method and the combinations, at
    every keep ratio (fraction of the N visual tokens that reach the LLM's last layer).

    ``cfg`` needs ``keep_ratios``, ``methods``, ``position_ablation``, ``llm_methods``,
    ``combos`` and ``fastv_layer``; ``start`` is the number of prompt tokens before the image
    (1 here: [BOS]), where the in-LLM specs' image span begins."""
    n = vcfg.num_visual
    out = [Setting("dense", "dense", "dense", 1.0, VisualSelect(), None)]
    for r in cfg.keep_ratios:
        for m in cfg.methods:
            sel = pre_select(m, r)
            out.append(Setting(f"{m}@{r}", m, "pre", r, sel, None))
        for m in cfg.position_ablation:
            sel = dataclasses.replace(pre_select(m, r), keep_positions=True)
            out.append(Setting(f"{m}/pos@{r}", f"{m}/pos", "pre", r, sel, None))
        k = VisualSelect("fastervlm", keep=r).num_kept(n)
        for m in cfg.llm_methods:
            if m == "todre":  # ToDRE = max-sum diversity before the LLM + its stage 2 inside
                sel = VisualSelect("maxsum", keep=r)
                deep = min(round(7 * vcfg.llm.num_layers / 8), vcfg.llm.num_layers - 1)
                prune = TodreSpec(start=start, stop=start + k, layer=deep)
                out.append(Setting(f"maxsum+todre@{r}", "maxsum+todre", "combo", r, sel, prune))
                continue
            prune = _llm_spec(m, LLM_SPECS[m], start, vcfg.vision.grid, k, cfg.fastv_layer)
            if prune is None:  # FEATHER cannot keep its grid plus a scored token within k
                continue
            out.append(Setting(f"{m}@{r}", m, "llm", r, VisualSelect(), prune))
        if 2 * r < 1.0:
            for m in cfg.combos:
                sel = pre_select(m, 2 * r)
                k1 = sel.num_kept(n)
                prune = FastVSpec(start=start, stop=start + k1, layer=cfg.fastv_layer)
                out.append(Setting(f"{m}+fastv@{r}", f"{m}+fastv", "combo", r, sel, prune))
            if "visiondrop" in cfg.methods:  # the whole method: vision stage, then LLM stages
                sel = pre_select("visiondrop", 2 * r)
                k1 = sel.num_kept(n)
                if k < k1:
                    L = vcfg.llm.num_layers
                    prune = VisionDropSpec.with_budget(start, start + k1, k, L)
                    name = "visiondrop+llm"
                    out.append(Setting(f"{name}@{r}", name, "combo", r, sel, prune))
    return out


def pre_select(method: str, ratio: float) -> VisualSelect:
    """The ``VisualSelect`` of a name of ``pre_methods()`` (``coverage_vision``: MMTok without
    text; ``feather_pre``: the registry's ``"feather"``)."""
    name, fields = PRE_VARIANTS.get(method, (method, {}))
    if name.endswith("_pre") and name[: -len("_pre")] in LLM_SPECS:
        name = name[: -len("_pre")]
    return VisualSelect(name, keep=ratio, **fields)


def _llm_spec(method: str, cls: type, start: int, grid: tuple[int, int], k: int, layer: int):
    """An in-LLM spec keeping ``k`` of the N image tokens from ``layer`` on.

    FastV: ``keep_ratio = k / N``. FEATHER: one stage at ``layer`` (the published stage 1 is at
    L/4, stage 2 at L/2; one stage at FastV's layer keeps the comparison at equal FLOPs) keeping
    the uniform grid (stride 3, or the smallest larger stride whose grid has fewer than k
    tokens) plus the top ``k - G`` other tokens by its RoPE-free criterion; None when even a
    one-token grid leaves no room (k = 1). TransPrune: one stage at ``layer``
    (``TransPruneSpec.with_budget``: TTV of block ``layer - 1`` + the question's attention).
    """
    n = grid[0] * grid[1]
    if method == "fastv":
        return cls(start=start, stop=start + n, layer=layer, keep_ratio=k / n)
    if method == "feather":
        return cls.with_budget(start, start + n, k, layer, grid=grid)
    if method == "transprune":  # one stage at FastV's layer, TTV of the block before it
        return cls.with_budget(start, start + n, k, layer)
    raise AssertionError(method)


def _is_random(s: Setting) -> bool:
    return s.select.method == "random"


# ----------------------------------------------------------------------------- the job


def cell_pool(fv: jax.Array, vgrid: tuple[int, int], grid: int) -> jax.Array:
    """Mean patch feature of each mosaic cell: [B, rows * cols, D] -> [B, grid * grid, D]."""
    b, _, d = fv.shape
    rows, cols = vgrid
    x = fv.reshape(b, grid, rows // grid, grid, cols // grid, d)
    return x.mean(axis=(2, 4)).reshape(b, grid * grid, d)


class Trainee(nnx.Module):
    """The VLM plus a per-cell digit classifier on its vision features, used only in training.

    A LLaVA starts from a pretrained CLIP encoder; here the vision tower is trained from scratch
    with the VLM, and this auxiliary loss (mean-pooled patch features of the feature layer per
    mosaic cell -> linear -> 10 digits, weight ``aux_weight``) stands in for that pretraining.
    Evaluation uses ``vlm`` alone.
    """

    def __init__(self, vcfg: VLMConfig, *, rngs: nnx.Rngs):
        self.vlm = VLM(vcfg, rngs=rngs)
        self.aux = nnx.Linear(vcfg.vision.hidden_size, 10, rngs=rngs)


class Job:
    """Jitted train / prefill / decode for one ``VLMConfig`` (data-parallel like ``Runner``)."""

    def __init__(self, cfg: Config, vcfg: VLMConfig, arrays: dict[str, np.ndarray]):
        self.cfg, self.vcfg = cfg, vcfg
        self.vocab = Vocab(cfg.grid)
        self.arrays = arrays
        parallel = cfg.model_parallel
        self.mesh = lab.model_mesh(parallel) if parallel > 1 else lab.data_mesh()
        n = lab.batch_multiple(self.mesh)
        for name in ("batch_size", "eval_batch"):
            if getattr(cfg, name) % n:
                raise ValueError(f"{name} ({getattr(cfg, name)}) must be a multiple of {n} devices")
        model = Trainee(vcfg, rngs=nnx.Rngs(cfg.seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.graphdef = graphdef
        self.params0, self.rest = self.place(params), lab.replicate(rest, self.mesh)

    def place(self, params):
        """Parameters on the mesh: replicated, or the LLM's sharded over ``"model"``."""
        if self.cfg.model_parallel == 1:
            return lab.replicate(params, self.mesh)
        return lab.shard_params(params, self.mesh, lab.llm_param_specs(params, self.mesh))

    def __hash__(self) -> int:
        return id(self)

    def trainee(self, params) -> Trainee:
        return nnx.merge(self.graphdef, params, self.rest)

    def model(self, params) -> VLM:
        return self.trainee(params).vlm

    def images(self, split: str, cells: np.ndarray) -> np.ndarray:
        x = self.arrays[f"x_{split}"]
        return mosaic(x[cells], self.cfg.grid)

    # -- training

    def optimizer(self) -> optax.GradientTransformation:
        cfg = self.cfg
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, max(cfg.warmup, 1), max(cfg.iterations, 2)
        )
        return optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=common.matrices_only),
        )

    @functools.partial(jax.jit, static_argnames=("self", "tx"))
    def train_step(self, params, opt_state, images, cell_labels, prefix, question, answer, *, tx):
        cfg = self.cfg
        vcfg = self.vcfg.vision

        def loss_fn(p):
            trainee = self.trainee(p)
            vlm = trainee.vlm
            feats, _ = vlm.encode(images)  # the vision tower runs once per image
            fv = feats[:, vcfg.num_prefix :]  # [B, N, Dv]
            visual = jnp.repeat(vlm.projector(fv), cfg.train_questions, axis=0)
            embeds = jnp.concatenate(
                [vlm.llm.embed(prefix), visual, vlm.llm.embed(question)], axis=1
            )
            logits = vlm.llm(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, answer).mean()
            if cfg.aux_weight:
                cell_logits = trainee.aux(cell_pool(fv, vcfg.grid, cfg.grid))  # [B, g*g, 10]
                aux = optax.softmax_cross_entropy_with_integer_labels(cell_logits, cell_labels)
                loss = loss + cfg.aux_weight * aux.mean()
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def train_batch(self, step: int) -> tuple[np.ndarray, ...]:
        cfg = self.cfg
        rng = np.random.default_rng((cfg.seed, zlib.crc32(b"train"), step))
        labels = self.arrays["y_train"]
        cells = rng.integers(0, len(labels), (cfg.batch_size, cfg.grid**2))
        lab = np.repeat(labels[cells], cfg.train_questions, axis=0)
        fam = rng.integers(0, len(FAMILIES), len(lab))
        question, answer = make_questions(rng, lab, cfg.grid, fam)
        prefix = np.full((len(lab), 1), self.vocab["BOS"], np.int32)
        return self.images("train", cells), labels[cells], prefix, question, answer

    def train(self, ckpt: lab.Checkpoints, metrics=None) -> tuple[Any, list[tuple[int, float]]]:
        """Trains the VLM (or resumes from ``ckpt``); the logged mean losses also go to
        ``metrics`` (a ``lab.MetricWriter``) under ``train/loss``."""
        cfg = self.cfg
        tx = self.optimizer()
        params = self.params0
        opt_state = jax.jit(tx.init)(params)  # moments sharded like the parameters
        start, losses = 0, []
        restored = ckpt.latest((params, opt_state))
        if restored is not None:
            start, (params, opt_state), meta = restored
            losses = [tuple(v) for v in meta["losses"]]
            print(f"{_TAG} train: resuming at step {start}/{cfg.iterations}", flush=True)
        t0, window = time.perf_counter(), []
        for step in lab.progress(range(start, cfg.iterations), desc="train"):
            batch = lab.shard_batch(self.train_batch(step), self.mesh)
            params, opt_state, loss = self.train_step(params, opt_state, *batch, tx=tx)
            window.append(loss)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.iterations:
                mean = float(jnp.mean(jnp.stack(window)))
                losses.append((done, mean))
                if metrics is not None:
                    metrics.scalar("train/loss", mean, done)
                window = []
                rate = (done - start) / (time.perf_counter() - t0)
                print(
                    f"  [train] step {done:6d}/{cfg.iterations}  loss {mean:.4f}  "
                    f"({rate:.2f} steps/s)",
                    flush=True,
                )
            if done % cfg.ckpt_every == 0 or done == cfg.iterations:
                last = done == cfg.iterations
                ckpt.save(done, (params, opt_state), {"losses": losses}, wait=last)
        return params, losses

    # -- inference

    @functools.partial(jax.jit, static_argnames=("self", "select", "prune", "max_len"))
    def prefill(self, params, images, prefix, question, key, *, select, prune, max_len):
        """Answer logits [B, V], the cache, the visual tokens reaching the last LLM layer
        (patch indices, -1 = a token without a patch (VisionDrop's CLS), ``DROPPED`` = -2 = dropped
        in the LLM, [B, k]) and the last token's argmax."""
        vlm = self.model(params)
        b = images.shape[0]
        cache = init_cache(self.vcfg.llm, b, max_len, prune=prune)
        out = vlm(
            images, prefix, question, select=select, prune=prune, cache=cache, key=key,
            logits_to_keep=1,
        )  # fmt: skip
        vis = out.visual_kept  # [B, k]
        if prune is not None and out.llm.kept is not None:
            k = vis.shape[1]
            start = prefix.shape[1]
            kept = out.llm.kept  # [B, T'] indices into the sequence
            in_span = (kept >= start) & (kept < start + k)
            local = jnp.clip(kept - start, 0, k - 1)
            vis = jnp.where(in_span, jnp.take_along_axis(vis, local, axis=1), DROPPED)
        logits = out.logits[:, -1]
        return logits, out.cache, vis, jnp.argmax(logits, -1).astype(jnp.int32)

    @functools.partial(jax.jit, static_argnames=("self", "steps"))
    def decode(self, params, token, cache, *, steps):
        """``steps`` greedy single-token decode steps on ``cache`` (``decode_greedy``)."""
        return decode_greedy(self.model(params).llm, token, cache, steps)

    def max_len(self, s: Setting) -> int:
        t = 1 + s.select.num_kept(self.vcfg.num_visual) + 3
        return t + self.cfg.decode_tokens

    def evaluate(self, params, ev: dict[str, np.ndarray], s: Setting) -> dict[str, Any]:
        cfg = self.cfg
        bsz = cfg.eval_batch
        n = len(ev["answer"])
        preds, kept_all = [], []
        for i in lab.progress(range(0, n, bsz), desc=f"eval {s.name}"):
            sl = slice(i, i + bsz)
            images, prefix, question, valid = self._eval_batch(ev, sl)
            key = jax.random.fold_in(jax.random.key(cfg.seed), i)
            _, _, vis, pred = self.prefill(
                params, images, prefix, question, key, select=s.select, prune=s.prune,
                max_len=self.max_len(s),
            )  # fmt: skip
            preds.append(np.asarray(pred)[:valid])
            kept_all.append(np.asarray(vis)[:valid])
        pred = np.concatenate(preds)
        kept = np.concatenate(kept_all)
        correct = pred == ev["answer"]
        res: dict[str, Any] = {"accuracy": float(correct.mean())}
        for f, name in enumerate(FAMILIES):
            res[f"acc_{name}"] = float(correct[ev["family"] == f].mean())
        res.update(kept_stats(kept, ev, self.vcfg.vision.grid, cfg.grid))
        return res

    def _eval_batch(self, ev, sl):
        bsz = self.cfg.eval_batch
        cells, question = ev["cells"][sl], ev["question"][sl]
        valid = len(cells)
        if valid < bsz:  # pad the last batch: one compiled shape per setting
            cells = np.concatenate([cells, np.repeat(cells[-1:], bsz - valid, 0)])
            question = np.concatenate([question, np.repeat(question[-1:], bsz - valid, 0)])
        images = lab.shard_batch(jnp.asarray(self.images("test", cells)), self.mesh)
        prefix = np.full((bsz, 1), self.vocab["BOS"], np.int32)
        return images, prefix, question, valid

    def latency(self, params, ev, s: Setting) -> dict[str, float]:
        """Median seconds of the jitted prefill and of one decode step (batch ``eval_batch``)."""
        cfg = self.cfg
        images, prefix, question, _ = self._eval_batch(ev, slice(0, cfg.eval_batch))
        key = jax.random.key(0)
        run = functools.partial(
            self.prefill, params, images, prefix, question, key, select=s.select,
            prune=s.prune, max_len=self.max_len(s),
        )  # fmt: skip
        _, cache, _, tok = jax.block_until_ready(run())
        times = []
        for _ in range(cfg.latency_repeats):
            t = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - t)
        steps = cfg.decode_tokens
        jax.block_until_ready(self.decode(params, tok, cache, steps=steps))
        dtimes = []
        for _ in range(cfg.latency_repeats):
            t = time.perf_counter()
            jax.block_until_ready(self.decode(params, tok, cache, steps=steps))
            dtimes.append((time.perf_counter() - t) / steps)
        return {"prefill_s": float(np.median(times)), "decode_token_s": float(np.median(dtimes))}


def kept_stats(
    kept: np.ndarray, ev: dict[str, np.ndarray], vgrid: tuple[int, int], grid: int
) -> dict[str, float]:
    """Cell hit rate on locate questions and the mean normalised row of the kept tokens (of
    those with a patch index, >= 0), and the visual tokens in the LLM's last layer (every entry
    but ``DROPPED``: VisionDrop's CLS token, -1, counts)."""
    rows, cols = vgrid
    valid = kept >= 0
    r = np.where(valid, kept // cols, 0)
    c = np.where(valid, kept % cols, 0)
    mean_row = float((r[valid] / max(rows - 1, 1)).mean()) if valid.any() else float("nan")
    v = Vocab(grid)
    loc = ev["family"] == FAMILIES.index("locate")
    qr, qc = np.divmod(ev["question"][loc][:, 1] - v["CELL_0"], grid)
    ch, cw = rows // grid, cols // grid
    in_cell = valid[loc] & (r[loc] // ch == qr[:, None]) & (c[loc] // cw == qc[:, None])
    return {
        "cell_hit_rate": float(in_cell.any(axis=1).mean()) if loc.any() else float("nan"),
        "kept_row_mean": mean_row,
        "visual_tokens_last_layer": float((kept != DROPPED).sum(axis=1).mean()),
    }


def eval_set(cfg: Config, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed evaluation questions (test split, families cycled)."""
    rng = np.random.default_rng((cfg.seed, zlib.crc32(b"eval")))
    fam = np.arange(cfg.eval_size) % len(FAMILIES)
    return sample(rng, labels, cfg.eval_size, cfg.grid, fam)


# ----------------------------------------------------------------------------- run


def run(cfg: Config, workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) the experiment; returns the results dict also written to results.json."""
    _check(cfg)
    workdir = pathlib.Path(workdir)
    cfg, arrays = prepare(cfg, data_dir)
    cell_hw = arrays["x_train"].shape[1:3]
    vcfg = vlm_config(cfg, cell_hw, arrays["x_train"].shape[3])
    rows, cols = vcfg.vision.grid
    if rows % cfg.grid or cols % cfg.grid:
        raise ValueError(
            f"the {rows}x{cols} patch grid must split into {cfg.grid}x{cfg.grid} cells: choose a "
            "patch size that divides the digit images"
        )
    all_settings = settings(cfg, vcfg)  # bad ratios fail before any training
    workdir.mkdir(parents=True, exist_ok=True)
    progress = lab.Progress(workdir, cfg, ("evals", "latency"))
    job = Job(cfg, vcfg, arrays)
    print(f"{_TAG} {vcfg}", flush=True)
    print(
        f"{_TAG} {vcfg.num_visual} visual tokens ({vcfg.vision.grid[0]}x{vcfg.vision.grid[1]}), "
        f"vocabulary {len(job.vocab)}",
        flush=True,
    )

    # 1. train (curves in <workdir>/tensorboard, process 0)
    metrics = lab.MetricWriter(workdir)
    params, losses = job.train(lab.Checkpoints(workdir / "checkpoints" / "train"), metrics)

    # 2. evaluate every setting (training-free)
    ev = eval_set(cfg, arrays["y_test"])
    evals = progress["evals"]
    dense_flops = vlm_prefill_flops(vcfg, prefix_len=1, question_len=3)
    for j, s in enumerate(all_settings):
        if s.name in evals:
            continue
        t = time.perf_counter()
        res = job.evaluate(params, ev, s)
        fl = vlm_prefill_flops(vcfg, prefix_len=1, question_len=3, select=s.select, prune=s.prune)
        t_llm = 1 + s.select.num_kept(vcfg.num_visual) + 3
        res.update(
            method=s.method, kind=s.kind, ratio=s.ratio,
            prefill_flops=fl, flops_ratio=fl / dense_flops,
            llm_tokens_per_layer=list(llm_tokens_per_layer(vcfg.llm.num_layers, t_llm, s.prune)),
        )  # fmt: skip
        evals[s.name] = res
        metrics.scalar(  # one curve per method: accuracy against the prefill FLOPs kept
            f"eval/{s.method}/accuracy_vs_flops_permille",
            res["accuracy"],
            round(1000 * res["flops_ratio"]),
        )
        print(
            f"{_TAG} eval {j + 1}/{len(all_settings)} {s.name}: acc {res['accuracy']:.4f} "
            + " ".join(f"{f} {res[f'acc_{f}']:.3f}" for f in FAMILIES)
            + f" hit {res['cell_hit_rate']:.3f} ({time.perf_counter() - t:.1f}s)",
            flush=True,
        )
        progress.save()

    # 3. latency, measured in one go after everything else (side by side)
    lat: dict[str, Any] = {}
    for s in all_settings:
        lat[s.name] = job.latency(params, ev, s)
    dense = lat["dense"]
    for v in lat.values():
        v["prefill_speedup"] = dense["prefill_s"] / v["prefill_s"]
        v["decode_speedup"] = dense["decode_token_s"] / v["decode_token_s"]
    print(f"{_TAG} latency measured for {len(lat)} settings", flush=True)
    metrics.close()

    results = {
        "config": lab.config_json(cfg),
        "vlm": {"vision": dataclasses.asdict(vcfg.vision), "llm": dataclasses.asdict(vcfg.llm)},
        "vocab": job.vocab.names,
        "machine": lab.machine(),
        "train_losses": losses,
        "evals": evals,
        "latency": lat,
    }
    lab.write_json(workdir / "results.json", results)
    lab.write_text(workdir / "results.md", outputs.tables(results))
    outputs.plot_accuracy(results, workdir / "accuracy.png")
    outputs.plot_flops(results, workdir / "accuracy_flops.png")
    outputs.plot_latency(results, workdir / "latency.png")
    outputs.plot_kept(job, params, ev, all_settings, workdir / "kept_tokens.png")
    print(f"{_TAG} wrote {workdir}/results.json, results.md and plots", flush=True)
    return results


# ----------------------------------------------------------------------------- CLI


# ------------------------------------------------------------------------- claims


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims this experiment tests, each beside what ``results.json`` (``r``)
    measured, with a computed verdict (``pruneax.lab.compare``); read by ``reproduce``."""
    ev, cfg = r["evals"], r["config"]
    n = cfg["eval_size"]  # questions; the three families in equal numbers
    ratios = sorted(cfg["keep_ratios"])

    def pair(paper, claim, a, b, *, largest=False, metric="accuracy", more=True):
        # the smallest (or largest) budget at which both settings were evaluated (FEATHER,
        # e.g., cannot keep a single token)
        key = lambda m, x: m if m == "dense" else f"{m}@{x}"
        both = [x for x in ratios if key(a, x) in ev and key(b, x) in ev]
        x = (both[-1] if largest else both[0]) if both else None
        ea, eb = (ev[key(a, x)], ev[key(b, x)]) if both else (None, None)
        size = n if metric == "accuracy" else n // 3
        where = f"{metric}, {key(a, x)} vs {key(b, x)}"
        return lab.versus(paper, claim, ea, eb, size, where, key=metric, more=more)

    return [
        pair(
            "FastV",
            "Pruning image tokens after LLM layer K (largest budget run) keeps the accuracy",
            "fastv",
            "dense",
            largest=True,
            more=False,
        ),
        pair(
            "MMTok",
            "Text-guided coverage beats vision-only coverage at a small budget",
            "coverage",
            "coverage_vision",
        ),
        pair(
            "DivPrune",
            "Diversity beats CLS-attention top-k at a small budget",
            "divprune",
            "fastervlm",
        ),
        pair(
            "FEATHER",
            "Uniform sampling repairs the localisation that attention-based in-LLM pruning loses",
            "feather",
            "fastv",
            metric="acc_locate",
        ),
    ]


EXPERIMENT = common.Experiment(
    name="vlm_token_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=True,
    claims=claims,
    summary=(
        "A small LLaVA-style VLM trained on MNIST-mosaic VQA; every pre-LLM and in-LLM "
        "visual-token pruning method at several budgets: accuracy per question type, FLOPs, "
        "prefill and decode latency."
    ),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.experiment_parser(__doc__, PRESETS)
    parser.add_argument("--methods", nargs="+", choices=pre_methods(), help="pre-LLM methods")
    parser.add_argument("--llm_methods", nargs="+", choices=LLM_METHODS, help="in-LLM methods")
    parser.add_argument(
        "--model_parallel", type=int, help="devices per model group: shard the LLM's parameters"
    )
    args = parser.parse_args(argv)
    return run(common.config_from_args(args, PRESETS), args.workdir, args.data_dir)


if __name__ == "__main__":
    main()
