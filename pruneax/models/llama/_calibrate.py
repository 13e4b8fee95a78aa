"""Post-training weight pruning of a ``LlamaLM`` from calibration text, one decoder block at a
time (Wanda, SparseGPT, or the magnitude baseline), as the published Wanda / SparseGPT drivers do.

For every decoder block in order: ONE forward of the still-dense block over all calibration
sequences records the inputs of its seven linears (q, k, v, o, gate, up, down) -- each linear is
wrapped, in a throw-away clone of the block, by a module that ``sow``s its input, so the block's
own ``__call__`` runs unchanged -- and reduces them to each linear's statistic (Wanda: the
per-input sum of squares; SparseGPT: the running Hessian); then all seven are pruned; then the
PRUNED block runs again to produce the next block's inputs. Embeddings, norms, biases and the LM
head are not pruned. Calibration runs with plain causal attention and positions ``0 .. t-1``.

References: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models"
(Wanda), ICLR 2024, code locuslab/wanda ``lib/prune.py``; Frantar, Alistarh, "SparseGPT", ICML
2023, code IST-DASLab/sparsegpt ``llama.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.lab import progress
from pruneax.models.llama._layers import LlamaBlock
from pruneax.models.llama._model import LlamaLM
from pruneax.weights import (
    hessian_init,
    hessian_update,
    input_sq_norms,
    magnitude_mask,
    sparsegpt_prune,
    wanda_mask,
)
from pruneax.weights._paths import map_named
from pruneax.weights._wanda import check_pattern

LINEARS = (
    "self_attn/q_proj",
    "self_attn/k_proj",
    "self_attn/v_proj",
    "self_attn/o_proj",
    "mlp/gate_proj",
    "mlp/up_proj",
    "mlp/down_proj",
)
METHODS = ("wanda", "sparsegpt", "magnitude")


class _Tap(nnx.Module):
    """A linear that records its input (``sow``) and then runs unchanged."""

    def __init__(self, linear: nnx.Linear):
        self.linear = linear

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sow(nnx.Intermediate, "inputs", x)
        return self.linear(x)


def _linear(block: nnx.Module, name: str) -> nnx.Module:
    parent, child = name.split("/")
    return getattr(getattr(block, parent), child)


def _tapped(block: LlamaBlock) -> LlamaBlock:
    clone = nnx.clone(block)
    for name in LINEARS:
        parent, child = name.split("/")
        setattr(getattr(clone, parent), child, _Tap(_linear(clone, name)))
    return clone


@nnx.jit(static_argnames="method")
def _collect(tapped, x, cos, sin, mask, stats, method):
    """Runs the tapped (dense) block on one batch; folds each linear's input into its stat."""
    _, inter = nnx.capture(tapped, nnx.Intermediate)(x, cos, sin, mask)
    new = {}
    for name in stats:
        parent, child = name.split("/")
        (xin,) = inter[parent][child]["inputs"].get_value()
        if method == "wanda":
            new[name] = stats[name] + input_sq_norms(xin)
        else:
            new[name] = hessian_update(stats[name], xin)
    return new


@nnx.jit
def _forward(block, x, cos, sin, mask):
    return block(x, cos, sin, mask)[0]


def _block_stats(layer: LlamaBlock, live: list[str], xs: list, ctx: dict, method: str) -> dict:
    """One forward of the (dense) block over every batch -> each live linear's statistic."""
    tapped = _tapped(layer)
    stats = {}
    for nm in live:
        d_in = _linear(layer, nm).kernel.shape[0]
        stats[nm] = jnp.zeros(d_in) if method == "wanda" else hessian_init(d_in)
    for x in xs:
        stats = _collect(tapped, x, *ctx[x.shape[:2]], stats, method)
    return stats


def _prune_kernel(kernel, stat, method, pattern, blocksize, percdamp):
    """``(new_kernel, keep)`` of one linear by ``method`` from its statistic."""
    if method == "sparsegpt":
        return sparsegpt_prune(kernel, stat.h, blocksize=blocksize, percdamp=percdamp, **pattern)
    if method == "wanda":
        keep = wanda_mask(kernel, stat, **pattern)
    else:
        keep = magnitude_mask(kernel, **pattern)
    return _zero_pruned(kernel, keep), keep


@jax.jit
def _zero_pruned(kernel: jax.Array, keep: jax.Array) -> jax.Array:
    return jnp.where(keep, kernel, jnp.zeros((), kernel.dtype))


def _block_patterns(sparsity: Any, n_m: Any, num_layers: int) -> list[dict]:
    """One ``wanda_mask`` / ``sparsegpt_prune`` pattern per decoder block (ValueError else)."""
    if isinstance(sparsity, list | tuple | np.ndarray | jax.Array):
        if n_m is not None:
            raise ValueError("calibrated_prune: give sparsity OR n_m, not both")
        per = list(sparsity) if isinstance(sparsity, list | tuple) else np.ravel(sparsity)
        if np.ndim(sparsity) != 1 or len(per) != num_layers:
            raise ValueError(
                f"calibrated_prune: per-block sparsity must hold one float per decoder block "
                f"({num_layers}); got {np.shape(sparsity)}"
            )
        return [
            dict(
                sparsity=check_pattern(s, None, None, f"calibrated_prune: sparsity[{i}]")[0],
                n_m=None,
            )
            for i, s in enumerate(per)
        ]
    s, n, m = check_pattern(sparsity, n_m, None, "calibrated_prune")
    return [dict(sparsity=s, n_m=None) if not m else dict(sparsity=None, n_m=(n, m))] * num_layers


def _check_ids(input_ids: Any, vocab: int) -> np.ndarray:
    if input_ids is None:
        raise ValueError("calibrated_prune: input_ids is None: no calibration data")
    ids = np.asarray(input_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"calibrated_prune: input_ids must be integer token ids; got {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"calibrated_prune: input_ids must be [n, t]; got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"calibrated_prune: input_ids {ids.shape} hold no calibration data")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"calibrated_prune: input_ids must lie in [0, {vocab}) (vocab_size)")
    return ids


def calibrated_prune(
    model: LlamaLM,
    input_ids: jax.Array,
    *,
    method: Literal["wanda", "sparsegpt", "magnitude"] = "wanda",
    sparsity: float | Sequence[float] | None = None,
    n_m: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    batch_size: int = 8,
) -> tuple[LlamaLM, Any]:
    """Prunes every decoder-block linear of ``model`` from calibration sequences, block by block.

    Args:
      model: a ``LlamaLM`` (left unchanged).
      input_ids: [n, t] integer calibration token ids (n sequences of t tokens).
      method: ``"wanda"`` (``wanda_mask``, per output unit, no update), ``"sparsegpt"``
        (``sparsegpt_prune``: OBS reconstruction) or ``"magnitude"`` (``magnitude_mask``, one
        threshold per matrix; the calibration data are checked but not used).
      sparsity: fraction in [0, 1) of each matrix pruned (Wanda: per output unit; SparseGPT:
        per block of ``blocksize`` inputs; magnitude: per matrix); or a sequence of
        ``num_layers`` such fractions, one per decoder block, applied to all seven matrices of
        that block (ECoFLaP's layer-wise allocation, ``ecoflap_prune``).
      n_m: ``(N, M)`` instead: N pruned of every M consecutive inputs of every output unit.
      blocksize / percdamp: SparseGPT's (see ``sparsegpt_prune``).
      batch_size: calibration sequences per forward (the result does not depend on it beyond
        float rounding).

    Returns:
      ``(pruned_model, masks)``: a new ``LlamaLM`` and a mask tree with the structure of
      ``nnx.state(model, nnx.Param)`` (bool [d_in, d_out], True = kept, at the 7 projection
      kernels of every block; None elsewhere), usable with ``pruneax.weights.apply_masks`` /
      ``sparsity_report``. Pruned weights are exactly zero, so ``save_pruned`` /
      ``load_pruned`` keep them so.

    Raises:
      ValueError: for a model that is not a ``LlamaLM``, an unknown ``method``, ``sparsity``
        outside [0, 1) (or a per-block sequence of the wrong length), both or neither of
        ``sparsity`` / ``n_m``, ``n_m`` not ``1 <= N < M`` or M not dividing some matrix's
        input width, bad ``blocksize`` / ``percdamp`` / ``batch_size``, or ``input_ids`` missing,
        empty, not integer, not 2-D or out of the vocabulary.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax import weights as W
      >>> from pruneax.models import LlamaLM, llm_config, calibrated_prune
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> ids = jnp.arange(2 * 16).reshape(2, 16) % 256
      >>> pruned, masks = calibrated_prune(model, ids, method="wanda", sparsity=0.5)
      >>> W.sparsity_report(masks).sparsity
      0.5
    """
    if not isinstance(model, LlamaLM):
        raise ValueError(f"calibrated_prune: model must be a LlamaLM; got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"calibrated_prune: method must be one of {METHODS}; got {method!r}")
    patterns = _block_patterns(sparsity, n_m, len(model.layers))
    n, m = patterns[0]["n_m"] or (0, 0)
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            d_in = _linear(layer, name).kernel.shape[0]
            if m and d_in % m:
                raise ValueError(
                    f"calibrated_prune: n_m=({n}, {m}): M does not divide the input width "
                    f"{d_in} of layers/{i}/{name}"
                )
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"calibrated_prune: blocksize must be a positive int; got {blocksize!r}")
    if m and blocksize % m:
        raise ValueError(f"calibrated_prune: blocksize={blocksize} must be a multiple of M={m}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, int | float) or percdamp < 0:
        raise ValueError(f"calibrated_prune: percdamp must be a float >= 0; got {percdamp!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"calibrated_prune: batch_size must be a positive int; got {batch_size!r}")
    ids = _check_ids(input_ids, model.config.vocab_size)

    pruned = nnx.clone(model)
    batches = [jnp.asarray(ids[i : i + batch_size]) for i in range(0, ids.shape[0], batch_size)]
    xs = [pruned.scale_inputs(pruned.embed(b)) for b in batches]
    ctx = {}  # (b, t) -> (cos, sin, causal mask)
    for x in xs:
        b, t = x.shape[:2]
        if (b, t) not in ctx:
            cos, sin = pruned.rope(jnp.broadcast_to(jnp.arange(t), (b, t)))
            ctx[b, t] = (cos, sin, jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t)))
    masks: dict[str, jax.Array] = {}
    layers = progress(list(enumerate(pruned.layers)), desc=f"{method} calibration, layers")
    for i, layer in layers:  # a bar on a terminal, nothing otherwise (pruneax.lab.progress)
        live = [nm for nm in LINEARS if _linear(layer, nm).kernel.size]
        stats = _block_stats(layer, live, xs, ctx, method) if method != "magnitude" else {}
        for nm in live:
            lin = _linear(layer, nm)
            kernel, keep = _prune_kernel(
                lin.kernel[...], stats.get(nm), method, patterns[i], blocksize, percdamp
            )
            lin.kernel[...] = kernel
            masks[f"layers/{i}/{nm}/kernel"] = keep
        if method != "magnitude" and i + 1 < len(pruned.layers):
            xs = [_forward(layer, x, *ctx[x.shape[:2]]) for x in xs]
    for i, layer in enumerate(pruned.layers):  # empty matrices: all-kept masks of their shape
        for nm in LINEARS:
            masks.setdefault(
                f"layers/{i}/{nm}/kernel", jnp.ones(_linear(layer, nm).kernel.shape, bool)
            )
    tree = map_named(lambda name, _: masks.get(name), nnx.state(pruned, nnx.Param))
    return pruned, tree
