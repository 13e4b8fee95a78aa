"""Reduced attention scores for in-LLM pruning specs: what a spec reads of a layer's attention
without the layer materialising its [B, H, T, S] probabilities.

A ``PruneSpec`` may declare, per layer of its ``attention_layers``, the FORM in which it reads
the attention (optional method ``attention_form(layer, num_layers)``; absent means
``"probs"``):

- ``"probs"``: the full probabilities [B, H, T, S] (the layer runs the explicit attention).
- ``"last_query"``: the probabilities of the LAST query only, [B, H, 1, S] (FastV): softmax of
  ``q_last . K^T`` under the same mask, float32; the layer output uses the fused attention.
- ``("key_mass", start, stop)``: for every query, the probability mass on the key slots of the
  call's tokens ``[start, stop)``, [B, H, T, 1] (ToDRE's shares), computed in float32 over
  blocks of ``QUERY_BLOCK`` queries (at most [B, H, QUERY_BLOCK, S] at a time).

When the caller also asks for the layer's probabilities (``return_attention_at``) the form is
derived from them instead (``reduce_probs``), so a spec always sees the same quantity.

References: transformers' ``eager_attention_forward`` (the probabilities these reproduce);
Chen et al., "FastV", ECCV 2024 (arXiv:2403.06764) (last-query scores).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pruneax.models._shared.fields import is_int
from pruneax.models.llama._rope import apply_rope, rope_cos_sin

_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST
QUERY_BLOCK = 256


def check_form(form: Any, where: str, name: str) -> Any:
    """Returns ``form`` if it is ``"probs"``, ``"last_query"`` or ``("key_mass", start, stop)``
    with ints ``0 <= start < stop`` (as a tuple); raises ``ValueError`` naming ``name`` else."""
    if isinstance(form, str) and form in ("probs", "last_query"):
        return form
    if (
        isinstance(form, tuple | list)
        and len(form) == 3
        and form[0] == "key_mass"
        and is_int(form[1])
        and is_int(form[2])
        and 0 <= form[1] < form[2]
    ):
        return ("key_mass", int(form[1]), int(form[2]))
    raise ValueError(
        f"{where}: {name} must be 'probs', 'last_query' or ('key_mass', start, stop) with "
        f"0 <= start < stop; got {form!r}"
    )


def prune_form(prune: Any, layer: int, num_layers: int, where: str) -> Any:
    """The checked form in which ``prune`` reads layer ``layer``'s attention (``"probs"`` when
    the spec has no ``attention_form`` method)."""
    method = getattr(prune, "attention_form", None)
    if method is None:
        return "probs"
    name = f"{type(prune).__name__}.attention_form({layer}, {num_layers})"
    return check_form(method(layer, num_layers), where, name)


def _span(s: int, offset: Any, start: int, stop: int) -> jax.Array:
    slots = jnp.arange(s)
    return (slots >= offset + start) & (slots < offset + stop)


def reduce_probs(probs: jax.Array, form: Any, offset: Any) -> jax.Array:
    """``form`` of explicit probabilities [B, H, T, S] (the call's tokens at slots
    ``[offset, offset + T)``)."""
    if form == "probs":
        return probs
    if form == "last_query":
        return probs[:, :, -1:]
    span = _span(probs.shape[-1], offset, form[1], form[2])
    return jnp.sum(jnp.where(span, probs.astype(_F32), 0.0), axis=-1, keepdims=True)


def _logits(q: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked float32 logits [B, KV, G, T, S] of ``q`` [B, T, H, hd] over ``k`` [B, S, KV, hd]
    (query head h uses key head h // G, as ``_attend``)."""
    b, t, h, hd = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, hd)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=_F32) * hd**-0.5
    return jnp.where(mask[:, None, None], logits, jnp.finfo(_F32).min)


def attention_scores(
    q: jax.Array, k: jax.Array, mask: jax.Array, form: Any, offset: Any
) -> jax.Array:
    """``form`` (not ``"probs"``) of the attention of ``q`` [B, T, H, hd] over ``k`` [B, S, KV,
    hd] (RoPE applied) under ``mask`` bool [B, T, S], without the [B, H, T, S] probabilities:
    ``"last_query"`` [B, H, 1, S], ``("key_mass", start, stop)`` [B, H, T, 1] float32."""
    b, t, h, _ = q.shape
    s = k.shape[1]
    if form == "last_query":
        probs = jax.nn.softmax(_logits(q[:, -1:], k, mask[:, -1:]), axis=-1)
        return probs.reshape(b, h, 1, s)
    span = _span(s, offset, form[1], form[2])
    c = min(t, QUERY_BLOCK)
    n = -(-t // c)
    pad = n * c - t
    qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, c, *q.shape[2:])
    mb = jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, s)

    def block(args):
        qc, mc = args
        logits = _logits(qc, k, mc)  # [B, KV, G, c, S]
        lse = jax.nn.logsumexp(logits, axis=-1)
        inside = jax.nn.logsumexp(jnp.where(span, logits, -jnp.inf), axis=-1)
        return jnp.exp(inside - lse).reshape(b, h, c)

    mass = jax.lax.map(block, (jnp.moveaxis(qb, 1, 0), jnp.moveaxis(mb, 1, 0)))  # [n, B, H, c]
    mass = jnp.moveaxis(mass, 0, 2).reshape(b, h, n * c)[:, :, :t]
    return mass[..., None]


def block_query_probs(
    block: Any, x: jax.Array, positions: jax.Array, valid: jax.Array, q_start: int, q_stop: int
) -> tuple[jax.Array, jax.Array]:
    """The attention a block WOULD compute for the queries ``[q_start, q_stop)`` of ``x`` [B, T,
    D] over all T keys, from its own ``input_layernorm``, q / k projections (biases) and RoPE at
    ``positions`` [B, T], in float32: causal, keys masked by ``valid`` [B, T], softmax over the
    row, query head h on KV head h // G. Returns ``(probs [B, H, q_stop - q_start, T], keys
    [B, T, KV, hd] after RoPE)``; the criteria of VisionDrop and TransPrune read it."""
    attn = block.self_attn
    cfg = attn.config
    b, t, _ = x.shape
    q, k = attn.project_qk(block.input_layernorm(x))  # [B, T, H, hd], [B, T, KV, hd]
    cos, sin = rope_cos_sin(jnp.asarray(positions), cfg, _F32)
    q = apply_rope(q.astype(_F32), cos, sin)[:, q_start:q_stop]
    k = apply_rope(k.astype(_F32), cos, sin)
    nq, h, kv = q_stop - q_start, q.shape[2], k.shape[2]
    qg = q.reshape(b, nq, kv, h // kv, cfg.head_dim)
    logits = jnp.einsum("bnkgd,btkd->bkgnt", qg, k, precision=_HIGHEST) / cfg.head_dim**0.5
    rows = jnp.arange(q_start, q_stop)[:, None]
    allowed = (jnp.arange(t)[None, :] <= rows)[None] & jnp.asarray(valid, bool)[:, None, :]
    logits = jnp.where(allowed[:, None, None], logits, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1).reshape(b, h, nq, t), k
