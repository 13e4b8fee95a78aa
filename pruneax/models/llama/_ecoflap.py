"""ECoFLaP on a ``LlamaLM``: a global importance per decoder block -> per-block sparsity ->
Wanda (or SparseGPT) inside every block at its block's sparsity (``calibrated_prune``).

Groups are the decoder blocks (the seven projection kernels of a block: the published
``sparsity_ratio_granularity="block"``). The importance is ECoFLaP's zeroth-order one
(``pruneax.weights.zeroth_order_scores``: one MeZO central difference per matrix and batch with
every other weight fixed; the loss is the model's next-token cross-entropy on the calibration
ids, mean over the scored tokens), or the first-order ``W^2 * mean g^2`` alternative; block
score = the sum over its matrices (``"sum"``, published) or per parameter (``"avg"``). The
keep budget is shared by ``pruneax.weights.allocate_keep`` with every block at most
``max_sparsity`` (default ``sparsity + 0.1``, as the published scripts).

Exactness: the allocation keeps exactly ``int(P (1 - sparsity))`` of the P block-kernel weights
(1e-9 float slack); Wanda / SparseGPT then prune ``int(d_in * s_b)`` per output unit (per
128-input block for SparseGPT) of a block at sparsity ``s_b = 1 - keep_b / P_b``, so the pruned
count of a block is at most the allocated one and short of it by less than one weight per output
unit (SparseGPT: per output unit and input block).

Reference: Sung et al., "ECoFLaP: Efficient Coarse-to-Fine Layer-wise Pruning for
Vision-Language Models", ICLR 2024; code ylsung/ECoFLaP
(``LAVIS/lavis/compression/pruners/layer_single_base_pruner.py``, ``wanda_pruner.py``; the
published LLaMA directory lacks its ``lib/``, so this follows the LAVIS path with the LLM's own
language-model loss).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax import weights as W
from pruneax.models.llama._calibrate import LINEARS, _check_ids, calibrated_prune
from pruneax.models.llama._model import LlamaLM


@functools.lru_cache(maxsize=8)
def _lm_loss(graphdef):
    """``(params, (rest, ids)) -> mean next-token cross-entropy`` of the merged model; one
    function per model structure, so repeated calls reuse the jit compilations."""

    def loss(params, batch):
        rest, ids = batch
        model = nnx.merge(graphdef, params, rest)
        logits = model(ids).logits[:, :-1].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)
        return jnp.mean(nll)

    return loss


def _num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating)


def _check_leaf_scores(leaf_scores: Any, groups: dict[str, list[str]], complete: bool, where):
    """The given scores as floats; all of them when ``complete``, else any subset."""
    if not isinstance(leaf_scores, Mapping):
        raise ValueError(
            f"{where}: leaf_scores must be a {{kernel name: score}} mapping or None; got "
            f"{type(leaf_scores).__name__}"
        )
    names = [n for ns in groups.values() for n in ns]
    if unknown := [n for n in leaf_scores if n not in names]:
        raise ValueError(f"{where}: leaf_scores names kernels not scored here: {unknown[:3]}")
    out = {}
    for name in names:
        if name not in leaf_scores and not complete:
            continue
        v = leaf_scores.get(name)
        if not _num(v) or not np.isfinite(v) or v < 0:
            raise ValueError(
                f"{where}: leaf_scores[{name!r}] must be a finite float >= 0; got {v!r}"
            )
        out[name] = float(v)
    return out


def ecoflap_prune(
    model: LlamaLM,
    input_ids: jax.Array,
    *,
    sparsity: float,
    key: jax.Array,
    max_sparsity: float | None = None,
    method: Literal["wanda", "sparsegpt"] = "wanda",
    score: Literal["zeroth_order", "first_order"] = "zeroth_order",
    reduce: Literal["sum", "avg"] = "sum",
    num_batches: int | None = None,
    batch_size: int = 8,
    eps: float = 1e-3,
    num_noise: int = 1,
    blocksize: int = 128,
    percdamp: float = 0.01,
    leaf_scores: Mapping[str, float] | None = None,
    progress: Any = None,
) -> tuple[LlamaLM, Any, dict[str, Any]]:
    """ECoFLaP: per-block sparsity from a global (zeroth-order) importance, then Wanda /
    SparseGPT inside every decoder block at that sparsity.

    Args:
      model: a ``LlamaLM`` (left unchanged).
      input_ids: [n, t] integer calibration token ids (both stages; at least 2 tokens each).
      sparsity: the overall fraction in [0, 1) of the 7 projection kernels of all blocks pruned.
      key: a ``jax.random`` key (the MeZO directions; see ``zeroth_order_scores``).
      max_sparsity: the largest sparsity of any block, in [sparsity, 1); default
        ``min(sparsity + 0.1, (1 + sparsity) / 2)`` (``sparsity + 0.1`` below 0.8).
      method: ``"wanda"`` or ``"sparsegpt"`` inside the blocks.
      score: ``"zeroth_order"`` (published ``MEZO-GradOnly``) or ``"first_order"``
        (``GradMagSquare``).
      reduce: block score = the ``"sum"`` of its matrices' scores or that over its size
        (``"avg"``).
      num_batches: batches of ``batch_size`` sequences (the first ones of ``input_ids``) for the
        importance; None: all.
      batch_size: sequences per batch (importance and calibration forwards).
      eps / num_noise: MeZO's perturbation size and directions per batch.
      blocksize / percdamp: SparseGPT's.
      leaf_scores: ``{kernel name: score}`` from an earlier call's ``info["leaf_scores"]`` (same
        model, ids, key and scoring settings): the scoring stage is skipped and these are used,
        so one scoring pass serves several sparsities (the scores do not depend on it). With
        ``score="zeroth_order"`` it may be partial (saved through ``progress`` by an interrupted
        call): only the missing kernels are scored, with the same result. None: computed here.
      progress: passed to ``zeroth_order_scores`` (``progress(done, total, kernel name,
        score)``).

    Returns:
      ``(pruned_model, masks, info)``: as ``calibrated_prune`` returns, and ``info`` with
      ``"leaf_scores"`` ({kernel name: score}), ``"block_scores"``, ``"block_sizes"``,
      ``"block_keep"`` (allocated kept weights), ``"block_sparsities"`` (what each block was
      pruned at) and ``"max_sparsity"``.

    Raises:
      ValueError: for a model that is not a ``LlamaLM``, ``sparsity`` outside [0, 1),
        ``max_sparsity`` outside [sparsity, 1), an unknown ``method`` / ``score`` /
        ``reduce``, bad ``num_batches`` / ``batch_size`` / ``eps`` / ``num_noise``, bad
        ``input_ids`` (as ``calibrated_prune``; also fewer than 2 tokens), ``leaf_scores`` not
        a mapping of finite scores >= 0 of block kernels (all of them unless zeroth-order), an
        infeasible allocation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax import weights as W
      >>> from pruneax.models import LlamaLM, llm_config, ecoflap_prune
      >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
      >>> ids = jnp.arange(4 * 16).reshape(4, 16) % 256
      >>> pruned, masks, info = ecoflap_prune(model, ids, sparsity=0.5, key=jax.random.key(0),
      ...                                     batch_size=2)
      >>> s = W.sparsity_report(masks).sparsity  # <= 0.5, short by < 1 weight per output unit
      >>> bool(max(info["block_sparsities"]) <= 0.6), bool(0.5 - 1 / 64 < s <= 0.5)
      (True, True)
    """
    where = "ecoflap_prune"
    if not isinstance(model, LlamaLM):
        raise ValueError(f"{where}: model must be a LlamaLM; got {type(model).__name__}")
    if not _num(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where}: sparsity must be a float in [0, 1); got {sparsity!r}")
    if max_sparsity is None:
        max_sparsity = min(sparsity + 0.1, (1.0 + sparsity) / 2)
    if not _num(max_sparsity) or not sparsity <= max_sparsity < 1.0:
        raise ValueError(
            f"{where}: max_sparsity must be a float in [sparsity, 1) = [{sparsity}, 1); "
            f"got {max_sparsity!r}"
        )
    if method not in ("wanda", "sparsegpt"):
        raise ValueError(f"{where}: method must be 'wanda' or 'sparsegpt'; got {method!r}")
    if score not in ("zeroth_order", "first_order"):
        raise ValueError(f"{where}: score must be 'zeroth_order' or 'first_order'; got {score!r}")
    if reduce not in ("sum", "avg"):
        raise ValueError(f"{where}: reduce must be 'sum' or 'avg'; got {reduce!r}")
    if not _num(eps) or not eps > 0:
        raise ValueError(f"{where}: eps must be a float > 0; got {eps!r}")
    if isinstance(num_noise, bool) or not isinstance(num_noise, int) or num_noise < 1:
        raise ValueError(f"{where}: num_noise must be an int >= 1; got {num_noise!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive int; got {batch_size!r}")
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise ValueError(
            f"{where}: num_batches must be a positive int or None; got {num_batches!r}"
        )
    ids = _check_ids(input_ids, model.config.vocab_size)
    if ids.shape[1] < 2:
        raise ValueError(f"{where}: input_ids need >= 2 tokens per sequence; got {ids.shape}")

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    groups = {
        f"layers/{i}": [
            f"layers/{i}/{nm}/kernel"
            for nm in LINEARS
            if np.size(getattr(getattr(layer, nm.split("/")[0]), nm.split("/")[1]).kernel)
        ]
        for i, layer in enumerate(model.layers)
    }
    n_seq = ids.shape[0] if num_batches is None else min(ids.shape[0], num_batches * batch_size)
    batches = [(rest, jnp.asarray(ids[i : i + batch_size])) for i in range(0, n_seq, batch_size)]
    loss = _lm_loss(graphdef)
    names = [n for ns in groups.values() for n in ns]
    partial = leaf_scores is not None and score == "zeroth_order"
    if leaf_scores is not None:
        given = _check_leaf_scores(leaf_scores, groups, not partial, where)
    if leaf_scores is not None and len(given) == len(names):
        leaf = given
    elif score == "zeroth_order":
        leaf = W.zeroth_order_scores(
            loss,
            params,
            groups,
            batches,
            key=key,
            eps=eps,
            num_noise=num_noise,
            progress=progress,
            done=given if partial else None,
        )
    else:
        leaf = W.first_order_scores(loss, params, groups, batches)
    block_scores = W.group_scores(leaf, groups, params, reduce=reduce)
    named = dict(zip(W.leaf_names(params), jax.tree.leaves(params), strict=True))
    block_sizes = np.array([sum(int(np.size(named[n])) for n in ns) for ns in groups.values()])
    keep = W.allocate_keep(block_scores, block_sizes, float(sparsity), max_sparsity=max_sparsity)
    per_block = [float(s) for s in 1.0 - keep / block_sizes]
    pruned, masks = calibrated_prune(
        model, ids, method=method, sparsity=per_block, blocksize=blocksize, percdamp=percdamp,
        batch_size=batch_size,
    )  # fmt: skip
    info = {
        "leaf_scores": leaf,
        "block_scores": block_scores,
        "block_sizes": block_sizes,
        "block_keep": keep,
        "block_sparsities": per_block,
        "max_sparsity": float(max_sparsity),
    }
    return pruned, masks, info
