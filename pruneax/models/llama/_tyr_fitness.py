"""Týr-the-Pruner on a ``LlamaLM``: the search's fitness, ``sparse_kl``.

Fitness (AMD-AGI/Tyr-the-Pruner ``src/metric_utils.py::compute_sparse_kl_div``):
KL(dense || pruned) over the dense model's ``top_k`` logits (published 8192) of every position
but each sequence's last, both sides renormalised by a log-softmax over those ids, averaged over
tokens (the published running mean weighted by tokens). The dense targets are computed once per
calibration sequence, as published; a genome's model is the dense model with its candidate
kernels swapped in (one compiled forward for every genome).

Deviations: float32 logits (published: the model's bf16); ``top_k`` above the vocabulary means
the vocabulary (``torch.topk`` would fail).

References: "Týr-the-Pruner: Structural Pruning of LLMs through Global Sparsity Distribution
Optimization" (AMD, 2025); code AMD-AGI/Tyr-the-Pruner @ c69d040.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models.llama._nirvana import _check_ids
from pruneax.models.llama._tyr import TyrSupernet, _check_positive, _is_int
from pruneax.weights._paths import map_named

_F32 = jnp.float32


def _targets(dense_logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    values, ids = jax.lax.top_k(dense_logits.astype(_F32), k)
    return jax.nn.log_softmax(values, axis=-1), ids


def _kl_tokens(target_logp: jax.Array, target_ids: jax.Array, logits: jax.Array) -> jax.Array:
    log_q = jax.nn.log_softmax(jnp.take_along_axis(logits.astype(_F32), target_ids, -1), -1)
    return jnp.sum(jnp.exp(target_logp) * (target_logp - log_q), axis=-1)


def tyr_sparse_kl(dense_logits: Any, logits: Any, *, top_k: int = 8192) -> float:
    """Týr-the-Pruner's ``sparse_kl`` fitness: KL(dense || pruned) on the dense model's top-k
    logits, both renormalised by a log-softmax over those ids, averaged over every position but
    each sequence's last (the published shift).

    Args:
      dense_logits: [n, t, V] logits of the dense model (t >= 2).
      logits: [n, t, V] logits of the pruned model.
      top_k: ids per position (published: 8192); more than V means V (the full KL).

    Returns:
      The mean KL (float).

    Raises:
      ValueError: for shapes that differ or are not [n, t >= 2, V], or a non-positive top_k.

    Example:
      >>> import numpy as np
      >>> from pruneax.models import tyr_sparse_kl
      >>> x = np.random.default_rng(0).normal(size=(2, 5, 16))
      >>> tyr_sparse_kl(x, x, top_k=4), tyr_sparse_kl(x, 2 * x, top_k=4) > 0
      (0.0, True)
    """
    p, q = np.asarray(dense_logits), np.asarray(logits)
    if p.ndim != 3 or p.shape != q.shape or p.shape[1] < 2 or p.size == 0:
        raise ValueError(f"tyr_sparse_kl: dense_logits and logits must both be [n, t >= 2, V]; "
                         f"got {p.shape} and {q.shape}")  # fmt: skip
    if not _is_int(top_k) or top_k < 1:
        raise ValueError(f"tyr_sparse_kl: top_k must be a positive int; got {top_k!r}")
    logp, ids = _targets(jnp.asarray(p), min(int(top_k), p.shape[-1]))
    kl = _kl_tokens(logp, ids, jnp.asarray(q))[:, :-1]
    return float(np.mean(np.asarray(kl, np.float64)))


@functools.lru_cache(maxsize=8)
def _programs(graphdef: Any, k: int):
    def targets(state, ids):
        return _targets(nnx.merge(graphdef, state)(ids).logits, k)

    def kl(state, ids, logp, tids):
        return _kl_tokens(logp, tids, nnx.merge(graphdef, state)(ids).logits)

    return jax.jit(targets), jax.jit(kl)


class _Fitness:
    """Sparse-KL fitness of genomes on chosen calibration sequences (dense targets once)."""

    def __init__(self, net: TyrSupernet, ids: np.ndarray, top_k: int, batch_size: int):
        self.net, self.ids = net, ids
        self.graphdef, self.state = nnx.split(net.model)
        k = min(top_k, net.model.config.vocab_size)
        self.bs = min(batch_size, len(ids))
        self.targets, self.kl = _programs(self.graphdef, k)
        parts = [self.targets(self.state, jnp.asarray(ids[c])) for c, _ in self._chunks(len(ids))]
        self.logp = np.concatenate([np.asarray(p[0]) for p in parts])[: len(ids)]
        self.tids = np.concatenate([np.asarray(p[1]) for p in parts])[: len(ids)]

    def _chunks(self, n: int):
        """``(rows, real)``: ``bs`` row indices (padded with row 0) and how many are real."""
        for s in range(0, n, self.bs):
            real = min(self.bs, n - s)
            yield np.pad(np.arange(s, s + real), (0, self.bs - real)), real

    def __call__(self, genome: tuple[int, ...], seqs: np.ndarray, lens: np.ndarray) -> float:
        net = self.net
        new = {net.leaf(s): net.kernels[s][lvl] for s, lvl in enumerate(genome)}
        state = map_named(lambda name, v: new.get(name, v), self.state)
        t = self.ids.shape[1]
        total, count = 0.0, 0
        for rows, real in self._chunks(len(seqs)):
            chunk, cut = seqs[rows], np.where(np.arange(self.bs) < real, lens[rows] - 1, 0)
            kl = np.asarray(self.kl(state, jnp.asarray(self.ids[chunk]), self.logp[chunk],
                                    self.tids[chunk]), np.float64)  # fmt: skip
            mask = np.arange(t)[None] < cut[:, None]
            total += float(np.sum(kl * mask))
            count += int(mask.sum())
        return total / max(count, 1)


def tyr_fitness(
    supernet: TyrSupernet, genome: Any, input_ids: Any, *, top_k: int = 8192, batch_size: int = 8
) -> float:
    """The search's fitness of a genome on ALL of ``input_ids``: ``tyr_sparse_kl`` of the dense
    model's and the genome's model's logits (``tyr_apply``), averaged over tokens.

    Args:
      supernet: from ``tyr_supernet``.
      genome: one int level per slot.
      input_ids: [n, t >= 2] integer token ids.
      top_k: as ``tyr_sparse_kl``.
      batch_size: sequences per forward.

    Returns:
      The mean sparse KL (float).

    Raises:
      ValueError: for a bad supernet / genome (``tyr_apply``), bad ``input_ids``, or a
        non-positive ``top_k`` / ``batch_size``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, tyr_fitness, tyr_supernet
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> ids = jnp.arange(32).reshape(2, 16)
      >>> net = tyr_supernet(model, ids, start=0.0, steps=(1, 16), num_levels=3)
      >>> tyr_fitness(net, (0, 0), ids), tyr_fitness(net, (1, 1), ids) > 1e-6
      (0.0, True)
    """
    where = "tyr_fitness"
    if not isinstance(supernet, TyrSupernet):
        raise ValueError(f"{where}: supernet must be a TyrSupernet; got "
                         f"{type(supernet).__name__}")  # fmt: skip
    g = supernet.check_genome(genome, where)
    ids = _check_ids(input_ids, supernet.model.config.vocab_size, where, "input_ids")
    if ids.shape[1] < 2:
        raise ValueError(f"{where}: input_ids must have >= 2 tokens per sequence (the last "
                         f"position is not scored); got shape {ids.shape}")  # fmt: skip
    _check_positive(where, top_k=top_k, batch_size=batch_size)
    fit = _Fitness(supernet, ids, top_k, batch_size)
    return fit(g, np.arange(len(ids)), np.full(len(ids), ids.shape[1]))
