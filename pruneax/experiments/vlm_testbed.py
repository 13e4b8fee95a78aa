"""Visual-token pruning on a CPU testbed that behaves like a real VLM: LLaVA's recipe with a real
pretrained LLM (SmolLM2-135M-Instruct, the 4-bit GGUF), a vision tower pretrained here, and a
projector trained with the tower and the LLM frozen.

Commands:
  python -m pruneax.experiments.vlm_testbed --preset tiny --workdir /tmp/vtb  # smoke (random LLM)
  python -m pruneax.experiments.vlm_testbed --preset cpu --data_dir ../shared/data \\
      --workdir runs/vlm_testbed
  python -m pruneax.experiments.vlm_testbed --preset gpu --data_dir ../shared/data \\
      --workdir runs/vlm_testbed_gpu

Why: ``vlm_token_pruning`` trains a tiny VLM from scratch on 2 x 2 mosaics with 16 visual tokens;
with no redundancy every method, random included, lost the same ~30 points at 50 %, so it could not
tell methods apart (issue 15). Here (``_testbed_data``): 3 x 3 canvases of 28 x 28 cells, 2-4
digits in distinct cells and the rest blank, 7 x 7 patches -> 144 visual tokens of which most are
background; natural-language questions (exists / count / locate / where) answered by greedy
decoding through the LLM's chat format.

1. **Vision tower** (stage 0, once, shared by every seed as one CLIP is shared by LLaVA runs): a
   ``ViT`` trained on the canvases to name each cell's digit (or blank) from its pooled patch
   features, and the digits present from its CLS token (so CLS attention, which FasterVLM reads,
   is learned as in a CLIP-like encoder rather than left random).
2. **Projector** (LLaVA-1.5's ``mlp2x_gelu``), per seed: trained with the tower AND the LLM frozen
   (LLaVA's stage-1 recipe) on a mixture of captions (``caption_fraction``, stage 1's data kind)
   and questions (stage 2's; LLaVA's stage 2 would also tune the LLM: not done here, to keep the
   real LLM's weights untouched and the CPU cost low). Cross-entropy on the answer tokens, AdamW,
   warmup + cosine; orbax checkpoints every ``ckpt_every`` steps: a killed run resumes.
3. **Evaluation** per seed on a fixed set of ``eval_size`` questions about test-split digits (the
   families in equal numbers): dense, every pre-LLM method and FastV / FEATHER / ToDRE at each keep
   ratio; greedy decoding of ``max_new_tokens``, exact match after normalisation. Reported: the
   mean over seeds with its standard error, per family, prefill FLOPs.

Outputs in ``--workdir``: ``results.json``, ``results.csv``, ``results.md``, ``accuracy.png``,
``accuracy_flops.png``. Progress printed with a ``[vlm_testbed]`` tag; finished evaluations are kept
in ``progress.json`` and not repeated.

References: Liu et al., LLaVA-1.5 (CVPR 2024): stage-1 projector alignment with frozen tower and
LLM; Chen et al., FastV; Zhang et al., FasterVLM; Alvar et al., DivPrune; MMTok; HiPrune; HoloV;
FEATHER; ToDRE.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruneax import lab
from pruneax.experiments import _common as common
from pruneax.experiments import _testbed_data as data
from pruneax.experiments import vlm_token_pruning as vtp
from pruneax.models.llama import LlamaLM, llm_config
from pruneax.models.vit import ViT, ViTConfig
from pruneax.models.vlm import VLM, VLMConfig, vlm_prefill_flops

_TAG = "[vlm_testbed]"
FAMILIES = data.FAMILIES


@dataclasses.dataclass(frozen=True)
class Config:
    """One run (all seeds). ``vision`` / ``tiny_llm`` override ``ViTConfig`` / ``llm_config``."""

    llm: str = "smollm2"  # "smollm2": the real 4-bit SmolLM2-135M-Instruct; "tiny": random
    tiny_llm: tuple[tuple[str, Any], ...] = (
        ("hidden_size", 32),
        ("intermediate_size", 64),
        ("num_layers", 3),
        ("num_heads", 2),
        ("num_kv_heads", 1),
    )
    dataset: str = "mnist"  # mnist | digits
    grid: int = 3
    digits: tuple[int, int] = (2, 4)  # digits per canvas, inclusive
    vision: tuple[tuple[str, Any], ...] = (
        ("patch_size", 7),
        ("hidden_size", 128),
        ("num_layers", 6),
        ("num_heads", 4),
        ("mlp_dim", 256),
    )
    # stage 0: the vision tower
    tower_iterations: int = 1500
    tower_batch: int = 64
    tower_lr: float = 1e-3
    # stage 1: the projector (per seed)
    iterations: int = 500
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup: int = 25
    caption_fraction: float = 0.25
    qa_length: int = 40  # question turn + answer tokens, right-padded (training)
    ckpt_every: int = 50
    log_every: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    # evaluation
    methods: tuple[str, ...] = (
        "fastervlm", "random", "uniform", "divprune", "kcenter", "maxsum", "coverage",
        "coverage_vision", "hiprune", "holov", "feather_pre",
    )  # fmt: skip
    llm_methods: tuple[str, ...] = ("fastv", "feather", "todre")
    keep_ratios: tuple[float, ...] = (0.5, 0.25, 0.11, 0.05)
    fastv_layer: int = 2
    combos: tuple[str, ...] = ()
    position_ablation: tuple[str, ...] = ()
    eval_size: int = 200
    eval_batch: int = 20
    q_length: int = 30  # question turn tokens, left-padded (evaluation)
    max_new_tokens: int = 4


PRESETS: dict[str, Config] = {
    # Smoke test: digits cells (8x8, 3x3 canvas, patch 4 -> 36 tokens), a random tiny LLM with a
    # byte tokenizer; seconds on CPU. Its accuracies mean nothing.
    "tiny": Config(
        llm="tiny",
        dataset="digits",
        vision=(
            ("patch_size", 4),
            ("hidden_size", 32),
            ("num_layers", 2),
            ("num_heads", 2),
            ("mlp_dim", 64),
        ),
        tower_iterations=20,
        tower_batch=16,
        iterations=6,
        batch_size=4,
        warmup=2,
        qa_length=128,
        ckpt_every=3,
        log_every=3,
        seeds=(0, 1),
        methods=("fastervlm", "random", "divprune", "coverage"),
        llm_methods=("fastv",),
        keep_ratios=(0.25,),
        fastv_layer=1,
        eval_size=8,
        eval_batch=4,
        q_length=112,
        max_new_tokens=3,
    ),
    # The real SmolLM2 on 2 CPU cores: about 1 s per training example and 0.3 s per evaluated
    # question at 144 visual tokens, so a seed is about an hour; resumable.
    "cpu": Config(),
    # The same testbed with more projector steps and questions, for a lent GPU.
    "gpu": Config(
        tower_iterations=4000,
        tower_batch=128,
        iterations=3000,
        batch_size=32,
        warmup=100,
        ckpt_every=250,
        log_every=50,
        seeds=(0, 1, 2, 3, 4),
        eval_size=1000,
        eval_batch=50,
    ),
}


def _check(cfg: Config) -> None:
    if cfg.llm not in ("smollm2", "tiny"):
        raise ValueError(f"llm must be 'smollm2' or 'tiny'; got {cfg.llm!r}")
    lo, hi = cfg.digits
    if not 1 <= lo <= hi <= min(10, cfg.grid * cfg.grid - 1):
        raise ValueError(
            f"digits must satisfy 1 <= lo <= hi <= min(10, grid * grid - 1) (a blank cell is "
            f"needed for locate questions); got {cfg.digits}"
        )
    if cfg.ckpt_every % cfg.log_every:
        raise ValueError(
            f"ckpt_every ({cfg.ckpt_every}) must be a multiple of log_every ({cfg.log_every})"
        )
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct and non-empty; got {cfg.seeds}")
    if not 0.0 <= cfg.caption_fraction <= 1.0:
        raise ValueError(f"caption_fraction must lie in [0, 1]; got {cfg.caption_fraction}")
    for name in ("tower_iterations", "tower_batch", "iterations", "batch_size", "eval_size",
                 "eval_batch", "qa_length", "q_length", "max_new_tokens"):  # fmt: skip
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    vtp._check(dataclasses.replace(vtp.Config(), methods=cfg.methods, llm_methods=cfg.llm_methods,
                                   keep_ratios=cfg.keep_ratios, combos=cfg.combos,
                                   position_ablation=cfg.position_ablation))  # fmt: skip


# ----------------------------------------------------------------------------- stage 0: tower


class Tower(nnx.Module):
    """The vision tower in pretraining: the ViT plus a per-cell digit head (on the mean patch
    feature of each cell) and a digit-presence head on the CLS token (multi-label)."""

    def __init__(self, vcfg: ViTConfig, grid: int, *, rngs: nnx.Rngs):
        d = vcfg.hidden_size
        self.vit = ViT(vcfg, rngs=rngs)
        self.grid = grid
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.cell = nnx.Linear(d, data.EMPTY + 1, rngs=rngs)
        self.presence = nnx.Linear(d, 10, rngs=rngs)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        vit = self.vit
        x = vit.embed(images)
        for block in vit.blocks:  # the features the VLM reads (vision_layer = -1, no final norm)
            x, _, _ = block(x)
        x = self.norm(x)
        p = vit.config.num_prefix
        cells = vtp.cell_pool(x[:, p:], vit.config.grid, self.grid)
        return self.cell(cells), self.presence(x[:, 0])


def _schedule(lr: float, warmup: int, steps: int):
    warmup = max(warmup, 1)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1))


def train_tower(
    cfg: Config, vcfg: ViTConfig, arrays, ckpt: lab.Checkpoints, metrics=None
) -> nnx.State:
    """Stage 0; returns the ViT's parameters (resumes from ``ckpt``). The loss and cell
    accuracy of each logged step go to ``metrics`` (a ``lab.MetricWriter``) under ``tower/``."""
    model = Tower(vcfg, cfg.grid, rngs=nnx.Rngs(1234))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    steps = cfg.tower_iterations
    tx = optax.adamw(_schedule(cfg.tower_lr, steps // 20, steps), weight_decay=0.05)
    background = float(arrays["x_train"].min())

    @jax.jit
    def step(params, opt_state, images, cell_y, present):
        def loss_fn(p):
            cell_logits, pres_logits = nnx.merge(graphdef, p, rest)(images)
            ce = optax.softmax_cross_entropy_with_integer_labels(cell_logits, cell_y).mean()
            bce = optax.sigmoid_binary_cross_entropy(pres_logits, present).mean()
            acc = jnp.mean(jnp.argmax(cell_logits, -1) == cell_y)
            return ce + bce, acc

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    opt_state = tx.init(params)
    start = 0
    restored = ckpt.latest((params, opt_state))
    if restored is not None:
        start, (params, opt_state), _ = restored
        print(f"{_TAG} tower: resuming at step {start}/{steps}", flush=True)
    y = arrays["y_train"]
    t0 = time.perf_counter()
    for i in lab.progress(range(start, steps), desc="tower"):
        rng = np.random.default_rng((1234, i))
        cells = data.canvases(rng, y, cfg.tower_batch, cfg.grid, cfg.digits)
        lab_ = data.cell_labels(cells, y)
        present = np.zeros((len(cells), 11), np.float32)
        np.put_along_axis(present, lab_, 1.0, axis=1)
        images = data.render(cells, arrays["x_train"], cfg.grid, background)
        params, opt_state, loss, acc = step(params, opt_state, images, lab_, present[:, :10])
        done = i + 1
        if done % cfg.log_every == 0 or done == steps:
            rate = (done - start) / (time.perf_counter() - t0)
            if metrics is not None:
                metrics.scalar("tower/loss", float(loss), done)
                metrics.scalar("tower/cell_accuracy", float(acc), done)
            print(
                f"  [tower] step {done:5d}/{steps}  loss {float(loss):.4f}  cell acc "
                f"{float(acc):.3f}  ({rate:.2f} steps/s)",
                flush=True,
            )
        if done % (cfg.ckpt_every * 4) == 0 or done == steps:
            ckpt.save(done, (params, opt_state), {}, wait=done == steps)
    return nnx.merge(graphdef, params, rest).vit


# ----------------------------------------------------------------------------- stage 1: projector


def load_llm(cfg: Config) -> tuple[LlamaLM, Any]:
    """The frozen LLM and its tokenizer: SmolLM2-135M-Instruct (4-bit GGUF, dequantised to
    float32; transformers' tokenizer from the same file), or a random tiny Llama + bytes."""
    if cfg.llm == "tiny":
        tok = data.ByteTokenizer()
        lcfg = llm_config("tiny", vocab_size=tok.vocab_size, **dict(cfg.tiny_llm))
        return LlamaLM(lcfg, rngs=nnx.Rngs(7)), tok
    import transformers

    from pruneax.models import load_gguf, smollm2_gguf_path

    path = pathlib.Path(smollm2_gguf_path())
    tok = transformers.AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )
    return load_gguf(path, dtype=jnp.float32), tok


class Job:
    """The VLM (tower + projector + frozen LLM) with jitted projector training and evaluation."""

    def __init__(self, cfg: Config, arrays, vit: ViT, llm: LlamaLM, tok: Any):
        self.cfg, self.arrays = cfg, arrays
        self.prompts = data.ChatPrompts(tok, chatml=cfg.llm == "smollm2")
        self.vcfg = VLMConfig(vision=vit.config, llm=llm.config, vision_layer=-1)
        self.vlm = VLM(self.vcfg, rngs=nnx.Rngs(0), vision=vit, llm=llm)
        self.is_proj = nnx.All(nnx.Param, nnx.PathContains("projector"))
        self.graphdef, self.proj0, self.rest = nnx.split(self.vlm, self.is_proj, ...)
        self.background = float(arrays["x_train"].min())
        self.prefix = np.asarray(self.prompts.prefix, np.int32)

    def __hash__(self) -> int:
        return id(self)

    def images(self, split: str, cells: np.ndarray) -> np.ndarray:
        return data.render(cells, self.arrays[f"x_{split}"], self.cfg.grid, self.background)

    def init_projector(self, seed: int) -> nnx.State:
        fresh = VLM(self.vcfg, rngs=nnx.Rngs(seed), vision=self.vlm.vision, llm=self.vlm.llm)
        return nnx.split(fresh, self.is_proj, ...)[1]

    @functools.partial(jax.jit, static_argnames=("self", "tx"))
    def train_step(self, proj, opt_state, images, prefix, qa, target, *, tx):
        def loss_fn(p):
            vlm = nnx.merge(self.graphdef, p, self.rest)
            lq = qa.shape[1]
            logits = vlm(images, prefix, qa, logits_to_keep=lq).logits  # [B, lq, V]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], qa[:, 1:])
            m = target[:, 1:]
            return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(proj)
        updates, opt_state = tx.update(grads, opt_state, proj)
        return optax.apply_updates(proj, updates), opt_state, loss

    def train_batch(self, seed: int, step: int):
        cfg = self.cfg
        ex = data.sample_split(
            (seed, step), "train", self.arrays["y_train"], cfg.batch_size, cfg.grid, cfg.digits,
            FAMILIES, cfg.caption_fraction,
        )  # fmt: skip
        qa, target = data.train_arrays(self.prompts, ex["question"], ex["answer"], cfg.qa_length)
        prefix = np.broadcast_to(self.prefix, (len(qa), len(self.prefix)))
        return self.images("train", ex["cells"]), prefix, qa, target

    def train(self, seed: int, ckpt: lab.Checkpoints, metrics=None) -> tuple[nnx.State, list]:
        """Trains the projector of ``seed`` (or resumes from ``ckpt``); the logged mean losses
        also go to ``metrics`` (a ``lab.MetricWriter``) under ``projector_seed<seed>/loss``."""
        cfg = self.cfg
        tx = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(_schedule(cfg.learning_rate, cfg.warmup, cfg.iterations), weight_decay=0),
        )
        proj = self.init_projector(seed)
        opt_state = tx.init(proj)
        start, losses = 0, []
        restored = ckpt.latest((proj, opt_state))
        if restored is not None:
            start, (proj, opt_state), meta = restored
            losses = [tuple(v) for v in meta["losses"]]
            print(f"{_TAG} seed {seed}: projector resumes at step {start}", flush=True)
        t0, window = time.perf_counter(), []
        for i in lab.progress(range(start, cfg.iterations), desc=f"projector seed {seed}"):
            proj, opt_state, loss = self.train_step(
                proj, opt_state, *self.train_batch(seed, i), tx=tx
            )
            window.append(loss)
            done = i + 1
            if done % cfg.log_every == 0 or done == cfg.iterations:
                mean = float(jnp.mean(jnp.stack(window)))
                losses.append((done, mean))
                if metrics is not None:
                    metrics.scalar(f"projector_seed{seed}/loss", mean, done)
                window = []
                rate = (done - start) / (time.perf_counter() - t0)
                eta = (cfg.iterations - done) / max(rate, 1e-9)
                print(
                    f"  [projector seed {seed}] step {done:5d}/{cfg.iterations}  loss "
                    f"{mean:.4f}  ({rate:.3f} steps/s, eta {eta / 60:.1f} min)",
                    flush=True,
                )
            if done % cfg.ckpt_every == 0 or done == cfg.iterations:
                ckpt.save(done, (proj, opt_state), {"losses": losses}, wait=done == cfg.iterations)
        return proj, losses

    # -- evaluation

    def evaluate(self, proj, ev: dict[str, Any], s: vtp.Setting, seed: int) -> dict[str, Any]:
        """Greedy answers of every evaluation question under setting ``s``."""
        cfg = self.cfg
        nnx.update(self.vlm, proj)
        q, valid = data.eval_arrays(self.prompts, ev["question"], cfg.q_length)
        n, bsz = len(q), cfg.eval_batch
        p, nv = len(self.prefix), self.vcfg.num_visual
        texts = []
        for i in lab.progress(range(0, n, bsz), desc=f"eval {s.name}"):
            idx = np.arange(i, i + bsz).clip(max=n - 1)  # the last batch repeats its last row
            mask = np.concatenate([np.ones((bsz, p + nv), bool), valid[idx]], axis=1)
            out = self.vlm.generate(
                jnp.asarray(self.images("test", ev["cells"][idx])),
                jnp.asarray(np.broadcast_to(self.prefix, (bsz, p))),
                jnp.asarray(q[idx]),
                cfg.max_new_tokens,
                attention_mask=jnp.asarray(mask),
                select=s.select,
                prune=s.prune,
                key=jax.random.fold_in(jax.random.key(seed), i),
                eos_token_id=self.prompts.eos,
                pad_token_id=self.prompts.pad,
            )
            tokens = np.asarray(out.tokens)[: min(bsz, n - i)]
            texts += [self.prompts.decode(t) for t in tokens]
        pairs = zip(texts, ev["answer"], strict=True)
        correct = np.array([data.normalize(t) == data.normalize(a) for t, a in pairs])
        fam = np.array(ev["family"])
        res: dict[str, Any] = {"accuracy": float(correct.mean())}
        for f in FAMILIES:
            res[f"acc_{f}"] = float(correct[fam == f].mean())
        triples = zip(ev["question"], texts, ev["answer"], strict=True)
        res["examples"] = [list(x) for x in triples][:3]
        return res


# ----------------------------------------------------------------------------- run


def prepare(cfg: Config, data_dir: str | None) -> tuple[Config, dict[str, np.ndarray]]:
    """The run's config (digits instead of MNIST without a data folder) and its arrays."""
    if cfg.dataset not in ("mnist", "digits"):
        raise ValueError(f"dataset must be 'mnist' or 'digits'; got {cfg.dataset!r}")
    if cfg.dataset != "digits" and data_dir is None and not os.environ.get("PRUNEAX_DATA_DIR"):
        print(f"{_TAG} no --data_dir: scikit-learn's digits (8x8 cells, patch 4)", flush=True)
        vision = dict(cfg.vision) | {"patch_size": 4}
        cfg = dataclasses.replace(cfg, dataset="digits", vision=tuple(vision.items()))
    return cfg, common.load_standardized(cfg.dataset, data_dir)


def vision_config(cfg: Config, arrays) -> ViTConfig:
    h, w, c = arrays["x_train"].shape[1:]
    return ViTConfig(
        **{"image_size": (cfg.grid * h, cfg.grid * w), "num_channels": c, "num_classes": 0}
        | dict(cfg.vision)
    )


def summarize(per_seed: dict[str, dict[str, dict]], metric: str) -> dict[str, dict[str, float]]:
    """Mean over seeds and its standard error (std with ddof 1 / sqrt(seeds); 0 for one seed)."""
    out = {}
    names = set.intersection(*(set(v) for v in per_seed.values())) if per_seed else set()
    for name in names:
        vals = np.array([per_seed[s][name][metric] for s in per_seed])
        se = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
        out[name] = {"mean": float(vals.mean()), "se": se, "seeds": len(vals)}
    return out


def run(cfg: Config, workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) the testbed; returns the results dict also written to results.json."""
    _check(cfg)
    cfg, arrays = prepare(cfg, data_dir)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    progress = lab.Progress(workdir, cfg, ("evals", "losses"))
    vit_cfg = vision_config(cfg, arrays)
    rows, cols = vit_cfg.grid
    if rows % cfg.grid or cols % cfg.grid:
        raise ValueError(
            f"the {rows}x{cols} patch grid must split into {cfg.grid}x{cfg.grid} cells"
        )
    t0 = time.perf_counter()
    metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0
    vit = train_tower(
        cfg, vit_cfg, arrays, lab.Checkpoints(workdir / "checkpoints" / "tower"), metrics
    )
    llm, tok = load_llm(cfg)
    job = Job(cfg, arrays, vit, llm, tok)
    p = len(job.prefix)
    all_settings = vtp.settings(cfg, job.vcfg, start=p)
    print(
        f"{_TAG} {job.vcfg.num_visual} visual tokens, LLM {cfg.llm} "
        f"({job.vcfg.llm.num_layers} layers), prefix {p} tokens, {len(all_settings)} settings, "
        f"seeds {cfg.seeds}",
        flush=True,
    )
    ev = data.sample_split(
        (99,), "eval", arrays["y_test"], cfg.eval_size, cfg.grid, cfg.digits, FAMILIES
    )
    q_len = int(np.mean([len(job.prompts.question(q)) for q in ev["question"]]))
    dense_flops = vlm_prefill_flops(job.vcfg, prefix_len=p, question_len=q_len)
    evals = progress["evals"]
    for seed in cfg.seeds:
        proj, losses = job.train(
            seed, lab.Checkpoints(workdir / "checkpoints" / f"seed{seed}"), metrics
        )
        progress["losses"][str(seed)] = losses
        done = evals.setdefault(str(seed), {})
        for j, s in enumerate(all_settings):
            if s.name in done:
                continue
            t = time.perf_counter()
            res = job.evaluate(proj, ev, s, seed)
            fl = vlm_prefill_flops(
                job.vcfg, prefix_len=p, question_len=q_len, select=s.select, prune=s.prune
            )
            res.update(method=s.method, kind=s.kind, ratio=s.ratio, flops_ratio=fl / dense_flops)
            done[s.name] = res
            progress.save()
            metrics.scalar(  # one curve per method: accuracy against the prefill FLOPs kept
                f"eval_seed{seed}/{s.method}/accuracy_vs_flops_permille",
                res["accuracy"],
                round(1000 * res["flops_ratio"]),
            )
            print(
                f"{_TAG} seed {seed} eval {j + 1}/{len(all_settings)} {s.name}: acc "
                f"{res['accuracy']:.3f} "
                + " ".join(f"{f} {res[f'acc_{f}']:.2f}" for f in FAMILIES)
                + f" ({time.perf_counter() - t:.1f}s)",
                flush=True,
            )
    results = {
        "config": lab.config_json(cfg),
        "vision": dataclasses.asdict(vit_cfg),
        "llm": "SmolLM2-135M-Instruct, 4-bit GGUF dequantised" if cfg.llm == "smollm2" else "tiny",
        "machine": lab.machine(),
        "wall_s": time.perf_counter() - t0,
        "losses": progress["losses"],
        "evals": evals,
        "summary": {m: summarize(evals, m) for m in ("accuracy", *(f"acc_{f}" for f in FAMILIES))},
        "settings": {
            s.name: {
                "method": s.method,
                "kind": s.kind,
                "ratio": s.ratio,
                "flops_ratio": evals[str(cfg.seeds[0])][s.name]["flops_ratio"],
            }
            for s in all_settings
        },
    }
    metrics.close()
    lab.write_json(workdir / "results.json", results)
    _write_tables(results, workdir)
    _plots(results, workdir)
    print(f"{_TAG} wrote {workdir}/results.json, results.csv, results.md and plots", flush=True)
    return results


# ----------------------------------------------------------------------------- outputs


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    summ = results["summary"]
    for name, meta in results["settings"].items():
        row = {"setting": name, **meta}
        for metric, table in summ.items():
            row[metric] = table[name]["mean"]
            row[f"{metric}_se"] = table[name]["se"]
        out.append(row)
    return out


def _write_tables(results: dict[str, Any], workdir: pathlib.Path) -> None:
    rows = _rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    lab.write_text(workdir / "results.csv", buf.getvalue())
    seeds = results["config"]["seeds"]
    lines = [
        f"# VLM testbed ({results['llm']}), {len(seeds)} seeds, "
        f"{results['config']['eval_size']} questions each; mean +- SE over seeds (points)",
        "",
        "| setting | FLOPs | accuracy | " + " | ".join(FAMILIES) + " |",
        "|---|---|---|" + "---|" * len(FAMILIES),
    ]
    for r in rows:
        cells = [f"{100 * r[m]:.1f} +- {100 * r[m + '_se']:.1f}" for m in
                 ("accuracy", *(f"acc_{f}" for f in FAMILIES))]  # fmt: skip
        lines.append(f"| {r['setting']} | {r['flops_ratio']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "## Claims", ""] + [
        f"- {c.paper}: {c.claim}: **{c.verdict}** ({c.measured})" for c in claims(results)
    ]
    lab.write_text(workdir / "results.md", "\n".join(lines) + "\n")


def _plots(results: dict[str, Any], workdir: pathlib.Path) -> None:
    plt = common.pyplot()
    rows = [r for r in _rows(results) if r["kind"] != "dense"]
    dense = next(r for r in _rows(results) if r["kind"] == "dense")
    for x_key, fname, xlabel in (
        ("ratio", "accuracy.png", "fraction of the visual tokens kept"),
        ("flops_ratio", "accuracy_flops.png", "prefill FLOPs / dense"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in sorted({r["method"] for r in rows}):
            pts = sorted((r[x_key], r["accuracy"], r["accuracy_se"]) for r in rows
                         if r["method"] == m)  # fmt: skip
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, label=m, capsize=2)
        ax.axhline(dense["accuracy"], color="k", ls="--", lw=1, label="dense")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (mean +- SE over seeds)")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        common.save_figure(fig, workdir / fname, dpi=120)


def claims(r: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims on this testbed, decided on the seed-mean accuracies with the
    binomial rule of ``lab.compare`` over all answered questions (eval_size x seeds)."""
    cfg, summ = r["config"], r["summary"]
    n = cfg["eval_size"] * len(cfg["seeds"])
    ratios = sorted(cfg["keep_ratios"])

    def pair(paper, claim, a, b, ratio, metric="accuracy", more=True):
        key = lambda m: m if m == "dense" else f"{m}@{ratio}"
        tab = summ[metric]
        if key(a) not in tab or key(b) not in tab:
            return lab.Claim(paper, claim, f"{key(a)} or {key(b)} not evaluated", lab.NA)
        va, vb = tab[key(a)], tab[key(b)]
        verdict, text = lab.compare(va["mean"], vb["mean"], n, more=more)
        se = f"seed SE {100 * va['se']:.1f} / {100 * vb['se']:.1f}"
        return lab.Claim(paper, claim, f"{metric}, {key(a)} vs {key(b)}: {text}; {se}", verdict)

    small, half = ratios[0], max(ratios)
    out = []
    for x in ratios:
        out.append(pair("FasterVLM", f"CLS-attention top-k beats random (keep {x})",
                        "fastervlm", "random", x))  # fmt: skip
    out += [
        pair("DivPrune", "Diversity beats CLS-attention top-k at the smallest budget",
             "divprune", "fastervlm", small),
        pair("MMTok", "Text-guided coverage beats vision-only coverage at the smallest budget",
             "coverage", "coverage_vision", small),
        pair("FEATHER", "Uniform sampling + attention beats FastV on locate questions",
             "feather", "fastv", small, metric="acc_locate"),
        pair("HoloV", "Holistic (spatially spread) selection beats top-k at the smallest budget",
             "holov", "fastervlm", small),
        pair("HiPrune", "Hierarchical attention selection beats top-k at the smallest budget",
             "hiprune", "fastervlm", small),
        pair("ToDRE", "Diversity + in-LLM redundancy removal beats top-k at the smallest budget",
             "maxsum+todre", "fastervlm", small),
        pair("FastV", f"Pruning after layer K keeps dense accuracy (keep {half})",
             "fastv", "dense", half, more=False),
        pair("FasterVLM", f"Pre-LLM top-k keeps dense accuracy (keep {half})",
             "fastervlm", "dense", half, more=False),
    ]  # fmt: skip
    return out


EXPERIMENT = common.Experiment(
    name="vlm_testbed",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=True,
    claims=claims,
    summary=(
        "LLaVA's recipe on CPU: a real pretrained LLM (SmolLM2-135M-Instruct, 4-bit), a vision "
        "tower pretrained here, a projector trained with both frozen; 144 mostly redundant "
        "visual tokens; every visual-token pruning method, mean +- SE over seeds."
    ),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.experiment_parser(__doc__, PRESETS)
    args = parser.parse_args(argv)
    return run(common.config_from_args(args, PRESETS), args.workdir, args.data_dir)


if __name__ == "__main__":
    main()
