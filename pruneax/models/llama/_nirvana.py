"""NIRVANA on a ``LlamaLM``: one-shot structured pruning of GQA groups and MLP channels from ONE
backward pass, with a global two-pool (attention / MLP) allocation; no weight update.

- Saliency: per projection-kernel weight ``|g * w|``, ``g`` the float32 gradient of
  ``mean_{b,v}(max_t logits[b, t, v])`` (max over positions, mean over sequences and vocabulary).
- Unit scores: sums of ``|g * w|`` over a GQA group's ``q_proj`` / ``k_proj`` / ``v_proj``
  columns and ``o_proj`` rows, or an MLP channel's ``gate_proj`` / ``up_proj`` columns and
  ``down_proj`` row (kernels only).
- Allocation (``nirvana_allocate``): global thresholds per pool from the sparsity and ``gamma``,
  per-layer fix-ups (never every group of a layer; kept MLP channels a multiple of 8); the kept
  units are copied by ``prune_structured``.

Reference: Ai et al., "NIRVANA: Structured Pruning Reimagined for Large Language Models
Compression" (2025); code iDEA-iSAIL-Lab-UIUC/NIRVANA, ``Llama/main.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models.llama._config import LlamaConfig
from pruneax.models.llama._model import LlamaLM
from pruneax.models.structured._arch import StructuredKeep
from pruneax.models.structured._importance import _units_of
from pruneax.models.structured._prune import _fill, prune_structured
from pruneax.weights._paths import by_name

_SLACK = 1e-9  # int() of a count that is integral in exact arithmetic must not drop by one


def _num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating)


def _check_model(model: Any, where: str) -> None:
    if not isinstance(model, LlamaLM):
        raise ValueError(f"{where}: model must be a LlamaLM; got {type(model).__name__}")


def _check_budget(sparsity: Any, gamma: Any, where: str) -> None:
    if not _num(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where}: sparsity must be a float in [0, 1); got {sparsity!r}")
    if not _num(gamma) or not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"{where}: gamma must be a finite float > 0; got {gamma!r}")


def _check_ids(ids: Any, vocab: int, where: str, name: str) -> np.ndarray:
    x = np.asarray(ids) if ids is not None else None
    if x is None or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{where}: {name} must be integer token ids; got {getattr(x, 'dtype', x)}")
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{where}: {name} must be a non-empty [n, t] array; got shape {x.shape}")
    if x.min() < 0 or x.max() >= vocab:
        raise ValueError(f"{where}: {name} must lie in [0, {vocab}) (vocab_size)")
    return x


@functools.lru_cache(maxsize=8)
def _saliency(graphdef: Any):
    """``(params, rest, ids, layout) -> (attn, mlp)``: per layer, the unit sums of
    ``|grad * w|`` over the kernel slices of ``layout`` (jitted; one per model structure)."""

    def objective(params, rest, ids):
        logits = nnx.merge(graphdef, params, rest)(ids).logits.astype(jnp.float32)
        return jnp.mean(jnp.max(logits, axis=1))

    def scores(params, rest, ids, layout):
        grads = jax.grad(objective)(params, rest, ids)
        w, g = by_name(params), by_name(grads)

        def unit_sums(slices):
            parts = [jnp.sum(_units_of(jnp.abs(g[s.name] * w[s.name]), s), 1) for s in slices]
            return functools.reduce(jnp.add, parts)

        return tuple(tuple(unit_sums(slices) for slices in part) for part in layout)

    return jax.jit(scores, static_argnums=3)


def _kernel_layout(cfg: LlamaConfig) -> tuple[tuple[tuple[Any, ...], ...], ...]:
    # imported here: pruneax.models.structured imports this package's _structured module
    from pruneax.models.llama._structured import LLAMA_STRUCTURED

    heads, mlp = LLAMA_STRUCTURED.layout(cfg)
    return tuple(
        tuple(tuple(s for s in layer if s.name.endswith("/kernel")) for layer in part)
        for part in (heads, mlp)
    )


def _scores(model: LlamaLM, input_ids: Any, where: str):
    _check_model(model, where)
    cfg = model.config
    ids = jnp.asarray(_check_ids(input_ids, cfg.vocab_size, where, "input_ids"))
    values = by_name(nnx.state(model))
    f32 = _fill(LlamaLM, cfg, values, jnp.float32, jnp.float32)  # float32 copy: f32 gradients
    graphdef, params, rest = nnx.split(f32, nnx.Param, ...)
    attn, mlp = _saliency(graphdef)(params, rest, ids, _kernel_layout(cfg))
    return tuple(map(np.asarray, attn)), tuple(map(np.asarray, mlp))  # float32


def nirvana_scores(
    model: LlamaLM, input_ids: Any
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """NIRVANA's unit scores: per layer, one per GQA group and one per MLP channel.

    ONE backward of ``mean_{b,v}(max_t logits[b, t, v])`` on a float32 copy of ``model`` (the
    published code runs it in bfloat16); per weight ``|g * w|``, summed over the unit's kernel
    entries (``q_proj`` / ``k_proj`` / ``v_proj`` columns and ``o_proj`` rows of a group; the
    ``gate_proj`` / ``up_proj`` columns and ``down_proj`` row of a channel).

    Args:
      model: a ``LlamaLM`` (pruned or not; left unchanged).
      input_ids: [n, t] integer calibration token ids (the published run: 32 x 128 tokens).

    Returns:
      ``(attn, mlp)``: tuples with one float32 NumPy array per layer, of shape [key / value
      heads of that layer] and [MLP width of that layer].

    Raises:
      ValueError: if ``model`` is not a ``LlamaLM`` or ``input_ids`` is not a non-empty [n, t]
        integer array in [0, vocab_size).

    References: Ai et al., "NIRVANA", 2025; code iDEA-iSAIL-Lab-UIUC/NIRVANA ``Llama/main.py``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, nirvana_scores
      >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
      >>> attn, mlp = nirvana_scores(model, jnp.arange(2 * 8).reshape(2, 8))
      >>> [a.shape for a in attn], [m.shape for m in mlp]
      ([(2,), (2,)], [(128,), (128,)])
    """
    return _scores(model, input_ids, "nirvana_scores")


def _check_scores(scores: Any, counts: Sequence[int], name: str, where: str) -> list[np.ndarray]:
    if isinstance(scores, str) or not isinstance(scores, Sequence | np.ndarray | jax.Array):
        raise ValueError(f"{where}: {name} must hold one score array per layer; got {scores!r}")
    if len(scores) != len(counts):
        raise ValueError(f"{where}: {name} has {len(scores)} layers; the config has {len(counts)}")
    out = []
    for i, (s, n) in enumerate(zip(scores, counts, strict=True)):
        a = np.asarray(s, np.float64)
        if a.shape != (n,) or not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: {name}[{i}] must be {n} finite scores; got shape {a.shape}")
        out.append(a)
    return out


def _budget(cfg: LlamaConfig, sparsity: float, gamma: float, where: str) -> tuple[int, int]:
    """The published counts ``(n_attn, n_mlp)`` (per-layer averages for a pruned config)."""
    heads, mlp, layers = cfg.kv_heads_per_layer, cfg.mlp_per_layer, cfg.num_layers
    kv, inter = sum(heads) / layers, sum(mlp) / layers
    if kv == 0 or inter == 0:
        raise ValueError(f"{where}: config must have GQA groups and MLP channels to prune")
    c_a = cfg.head_dim * 2 * (cfg.num_groups + 1)  # attention params per group / hidden_size
    ratio = (c_a * kv) / (inter * 3) * (1.0 / gamma) * 3 / c_a
    attn = (c_a * kv + inter * 3) * sparsity / (c_a + 1 / ratio * 3) * layers
    n_attn = min(int(attn + _SLACK * max(1.0, attn)), sum(heads))
    n_mlp = min(int(attn / ratio + _SLACK * max(1.0, attn / ratio)), sum(mlp))
    return n_attn, n_mlp


def _threshold(scores: list[np.ndarray], n: int) -> float | None:  # the n-th smallest
    return float(np.sort(np.concatenate(scores))[n - 1]) if n > 0 else None


def _keep_groups(score: np.ndarray, thr: float | None) -> tuple[int, ...]:
    pruned = np.flatnonzero(score <= thr) if thr is not None else np.zeros(0, int)
    if len(score) and len(pruned) == len(score):
        pruned = pruned[:-1]  # published: the LAST candidate (highest index) survives
    return tuple(int(i) for i in np.setdiff1d(np.arange(len(score)), pruned))


def _keep_channels(score: np.ndarray, thr: float | None) -> tuple[int, ...]:
    n = len(score)
    cand = np.flatnonzero(score <= thr) if thr is not None else np.zeros(0, int)
    kept0 = n - len(cand)
    kept = min(n, -(-kept0 // 8) * 8) or 8  # round up to 8s; all pruned -> keep 8
    spare = kept - kept0
    if spare >= len(cand):
        cand = cand[:0]
    elif spare > 0:  # spare the best candidates (ties: the lower index)
        cand = np.delete(cand, np.argsort(-score[cand], kind="stable")[:spare])
    return tuple(int(i) for i in np.setdiff1d(np.arange(n), cand))


def nirvana_allocate(
    config: LlamaConfig,
    attn_scores: Any,
    mlp_scores: Any,
    *,
    sparsity: float,
    gamma: float = 1.0,
) -> tuple[StructuredKeep, dict[str, Any]]:
    """NIRVANA's global two-pool allocation: which GQA groups and MLP channels every layer keeps.

    With ``c_a = 2 hd (G + 1)`` (parameters per group over ``hidden_size``; G query heads per
    key / value head), KV and I the (mean per layer) key / value heads and MLP width, L layers
    and ``r = KV / (gamma I)``: ``n_attn = int(L s (c_a KV + 3 I) / (c_a + 3 / r))`` groups and
    ``n_mlp = int(n_attn_float / r)`` channels (each at most its pool; ``int`` with a 1e-9
    relative slack, so that float rounding cannot drop a unit). ``gamma = 1`` prunes
    the fraction s of both pools; ``gamma > 1`` moves pruning onto the MLP (published: 3.36
    for Llama-3.1-8B, 3.0 for Llama-3.2-3B). Every unit scoring <= the ``n``-th smallest score
    of its pool over all layers is a candidate (ties prune extra). Per layer: if every group is
    a candidate, the highest-index one is kept; the kept MLP channels are rounded UP to a
    multiple of 8 (at most the width; 8 if none would be kept) by sparing the best-scoring
    candidates (ties: the lower index). A pool with ``n = 0`` loses nothing.

    Args:
      config: the ``LlamaConfig`` of the scored model.
      attn_scores: one array per layer of [key / value heads] scores (``nirvana_scores``).
      mlp_scores: one array per layer of [MLP width] scores.
      sparsity: the target fraction in [0, 1) of the attention + MLP projection parameters.
      gamma: the attention vs MLP factor (> 0; the published ``--gamma``).

    Returns:
      ``(keep, info)``: a ``StructuredKeep`` for ``prune_structured`` and ``info`` with
      ``"n_attn"`` / ``"n_mlp"`` (the pool budgets) and ``"attn_threshold"`` /
      ``"mlp_threshold"`` (None for an empty budget).

    Raises:
      ValueError: if ``config`` is not a ``LlamaConfig`` or has no group or no channel,
        ``sparsity`` is outside [0, 1), ``gamma`` is not > 0, or the scores do not have one
        finite array of the right length per layer.

    References: Ai et al., "NIRVANA", 2025; code iDEA-iSAIL-Lab-UIUC/NIRVANA ``Llama/main.py``.

    Example:
      >>> import numpy as np
      >>> from pruneax.models import llm_config, nirvana_allocate
      >>> cfg = llm_config("tiny", num_layers=2)  # 2 GQA groups, 128 channels per layer
      >>> rng = np.random.default_rng(0)
      >>> keep, info = nirvana_allocate(cfg, rng.random((2, 2)), rng.random((2, 128)),
      ...                               sparsity=0.5)
      >>> info["n_attn"], info["n_mlp"], [len(k) % 8 for k in keep.mlp]
      (2, 128, [0, 0])
    """
    where = "nirvana_allocate"
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"{where}: config must be a LlamaConfig; got {type(config).__name__}")
    _check_budget(sparsity, gamma, where)
    attn = _check_scores(attn_scores, config.kv_heads_per_layer, "attn_scores", where)
    mlp = _check_scores(mlp_scores, config.mlp_per_layer, "mlp_scores", where)
    n_attn, n_mlp = _budget(config, float(sparsity), float(gamma), where)
    thr_a, thr_m = _threshold(attn, n_attn), _threshold(mlp, n_mlp)
    keep = StructuredKeep(
        heads=tuple(_keep_groups(a, thr_a) for a in attn),
        mlp=tuple(_keep_channels(m, thr_m) for m in mlp),
    )
    info = {"n_attn": n_attn, "n_mlp": n_mlp, "attn_threshold": thr_a, "mlp_threshold": thr_m}
    return keep, info


def _kernel_params(cfg: LlamaConfig) -> int:
    d, hd = cfg.hidden_size, cfg.head_dim
    sizes = zip(cfg.heads_per_layer, cfg.kv_heads_per_layer, cfg.mlp_per_layer, strict=True)
    return sum(d * hd * (2 * h + 2 * kv) + 3 * d * f for h, kv, f in sizes)


def nirvana_prune(
    model: LlamaLM, input_ids: Any, *, sparsity: float, gamma: float = 1.0
) -> tuple[LlamaLM, dict[str, Any]]:
    """NIRVANA: score (``nirvana_scores``), allocate (``nirvana_allocate``), then remove the
    pruned GQA groups and MLP channels (``prune_structured``); no weight is updated.

    Args:
      model: a ``LlamaLM`` (left unchanged).
      input_ids: [n, t] integer calibration token ids (one batch, one backward).
      sparsity: the target fraction in [0, 1) of the attention + MLP projection parameters.
      gamma: the attention vs MLP factor (> 0; ``nirvana_allocate``).

    Returns:
      ``(pruned_model, info)``: a physically smaller ``LlamaLM`` and ``info`` with ``"keep"``
      (the ``StructuredKeep``), ``"kv_heads"`` / ``"mlp"`` (kept units per layer),
      ``"sparsity"`` (the achieved fraction of the q / k / v / o / gate / up / down kernel
      parameters removed), ``"attn_scores"`` / ``"mlp_scores"`` and ``nirvana_allocate``'s
      ``info``.

    Raises:
      ValueError: for a model that is not a ``LlamaLM``, bad ``input_ids``, ``sparsity``
        outside [0, 1) or ``gamma`` not > 0.

    References: Ai et al., "NIRVANA", 2025; code iDEA-iSAIL-Lab-UIUC/NIRVANA ``Llama/main.py``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, nirvana_prune
      >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
      >>> ids = jnp.arange(2 * 8).reshape(2, 8)
      >>> small, info = nirvana_prune(model, ids, sparsity=0.5)
      >>> info["kv_heads"], info["mlp"]  # layer 1: both groups were candidates, one kept
      ((2, 1), (88, 48))
      >>> small.config.mlp_per_layer == info["mlp"], round(info["sparsity"], 3)
      (True, 0.396)
    """
    where = "nirvana_prune"
    _check_model(model, where)
    _check_budget(sparsity, gamma, where)
    attn, mlp = _scores(model, input_ids, where)
    keep, alloc = nirvana_allocate(model.config, attn, mlp, sparsity=sparsity, gamma=gamma)
    pruned = prune_structured(model, keep)
    info = {
        "keep": keep,
        "kv_heads": pruned.config.kv_heads_per_layer,
        "mlp": pruned.config.mlp_per_layer,
        "sparsity": 1.0 - _kernel_params(pruned.config) / _kernel_params(model.config),
        "attn_scores": attn,
        "mlp_scores": mlp,
        **alloc,
    }
    return pruned, info


@nnx.jit
def _log_probs(model: LlamaLM, ids: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(model(ids).logits.astype(jnp.float32), axis=-1)


def _kl(log_p: jax.Array, log_q: jax.Array) -> float:
    p = jnp.maximum(jnp.exp(log_p), 1e-12)
    return float(jnp.mean(jnp.sum(p * (log_p - log_q), axis=-1)))


def nirvana_select_calibration(
    model: LlamaLM,
    candidate_ids: Sequence[Any],
    heldout_ids: Any,
    *,
    sparsity: float,
    gamma: float = 1.0,
) -> tuple[int, tuple[float, ...]]:
    """The paper's calibration-set choice: prune with each candidate set, keep the one whose
    pruned model is closest to the dense model on held-out text.

    The measure is ``KL(dense || pruned)`` of the next-token distributions, summed over the
    vocabulary and averaged over all held-out tokens (float32, dense probabilities clamped at
    1e-12, as the published ``compute_influence_loss``). The published scripts do not run this
    search: they fix the data seed it found (12 for Llama-3.1-8B, 5 for Llama-3.2-3B).

    Args:
      model: a ``LlamaLM`` (left unchanged).
      candidate_ids: a non-empty sequence of [n, t] integer calibration sets.
      heldout_ids: [n, t] integer token ids the KL is measured on (published: 128 x 64).
      sparsity / gamma: as ``nirvana_prune``.

    Returns:
      ``(best, kls)``: the index of the candidate with the smallest KL (the first on ties) and
      every candidate's KL.

    Raises:
      ValueError: for a model that is not a ``LlamaLM``, an empty or non-sequence
        ``candidate_ids``, bad ids (naming ``candidate_ids[i]`` / ``heldout_ids``),
        ``sparsity`` outside [0, 1) or ``gamma`` not > 0.

    References: Ai et al., "NIRVANA", 2025 (calibration-set selection by KL); code
      iDEA-iSAIL-Lab-UIUC/NIRVANA ``Llama/main.py`` (``--get_kl``), ``dataset/evaluator.py``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, nirvana_select_calibration
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> sets = [jnp.arange(16).reshape(2, 8), jnp.arange(16, 32).reshape(2, 8)]
      >>> best, kls = nirvana_select_calibration(model, sets, sets[0], sparsity=0.5)
      >>> best in (0, 1), len(kls)
      (True, 2)
    """
    where = "nirvana_select_calibration"
    _check_model(model, where)
    _check_budget(sparsity, gamma, where)
    vocab = model.config.vocab_size
    if isinstance(candidate_ids, str) or not isinstance(candidate_ids, Sequence):
        raise ValueError(f"{where}: candidate_ids must be a sequence of [n, t] id arrays")
    if len(candidate_ids) == 0:
        raise ValueError(f"{where}: candidate_ids must hold at least one calibration set")
    cands = [
        _check_ids(c, vocab, where, f"candidate_ids[{i}]") for i, c in enumerate(candidate_ids)
    ]
    held = jnp.asarray(_check_ids(heldout_ids, vocab, where, "heldout_ids"))
    log_p = _log_probs(model, held)
    kls = []
    for ids in cands:
        pruned, _ = nirvana_prune(model, ids, sparsity=sparsity, gamma=gamma)
        kls.append(_kl(log_p, _log_probs(pruned, held)))
    return int(np.argmin(kls)), tuple(kls)
