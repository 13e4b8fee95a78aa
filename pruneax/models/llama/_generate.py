"""Greedy decoding for ``LlamaLM``: one jitted program, a prefill then a ``lax.scan`` of
single-token decode steps over the KV cache (the sampler lives apart from the model, as in
flax's ``examples/gemma``).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pruneax.models._shared.common import is_size
from pruneax.models.llama._cache import KVCache, init_cache
from pruneax.models.llama._model import LlamaLM
from pruneax.models.llama._prune import PruneSpec


@struct.dataclass
class GenerationOutput:
    """What ``generate_greedy`` returns.

    Attributes:
      tokens: [B, max_new_tokens] int32 generated tokens (``pad_token_id`` after a row's EOS).
      kept: [B, T'] int32 prompt tokens the last layer kept (``LlamaOutput.kept``), or None
        without pruning.
      cache: the final ``KVCache`` (prompt + all generated tokens but the last).
      prune_info: the prefill's ``LlamaOutput.prune_info``.
    """

    tokens: jax.Array
    kept: jax.Array | None
    cache: KVCache
    prune_info: dict[str, jax.Array] | None = None


def generate_greedy(
    model: LlamaLM,
    input_ids: jax.Array | None = None,
    max_new_tokens: int = 16,
    *,
    inputs_embeds: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    prune: PruneSpec | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    cache_dtype: Any = None,
    bidirectional: jax.Array | None = None,
) -> GenerationOutput:
    """Greedy decoding with a KV cache: one jitted program (prefill, then ``lax.scan`` over
    single-token decode steps).

    The prompt (``input_ids`` or ``inputs_embeds``, optionally left-padded with
    ``attention_mask``, optionally pruned with ``prune``) fills a cache of ``T +
    max_new_tokens - 1`` slots (``init_cache``), then each step feeds the argmax token back.
    Always produces ``max_new_tokens`` tokens (no early stop): after a row emits
    ``eos_token_id`` it gets ``pad_token_id`` (default: the EOS id), as HF's ``generate``
    pads finished rows.

    Args:
      model: the ``LlamaLM``.
      input_ids: [B, T] prompt token ids; or ``inputs_embeds`` [B, T, D].
      max_new_tokens: tokens to generate, >= 1 (static).
      attention_mask: [B, T] prompt validity (left padding).
      positions: [B, T] prompt positions (default as ``LlamaLM.__call__``).
      prune: a ``PruneSpec`` applied to the prompt (static).
      eos_token_id, pad_token_id: see above (static).
      cache_dtype: dtype of the cache (default: the model's compute dtype).
      bidirectional: [B, T] flags of the prompt's bidirectional prefix (see
        ``LlamaLM.__call__``; PaliGemma's prefix-LM), or None; generated tokens are causal.

    Returns:
      A ``GenerationOutput``.

    Raises:
      ValueError: as ``LlamaLM.__call__``, or for a bad ``max_new_tokens`` / token id.

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.llama import LlamaLM, llm_config
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> generate_greedy(model, jnp.zeros((2, 4), jnp.int32), 3).tokens.shape
      (2, 3)
    """
    if not isinstance(model, LlamaLM):
        raise ValueError(f"generate_greedy: model must be a LlamaLM; got {type(model).__name__}")
    if not is_size(max_new_tokens):
        raise ValueError(
            f"generate_greedy: max_new_tokens must be a positive int; got {max_new_tokens!r}"
        )
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0
        ):
            raise ValueError(f"generate_greedy: {name} must be an int >= 0 or None; got {value!r}")
    graphdef, state = nnx.split(model)
    dtype = jnp.dtype(model.dtype if cache_dtype is None else cache_dtype)
    return _generate(
        graphdef,
        state,
        input_ids,
        inputs_embeds,
        attention_mask,
        positions,
        bidirectional,
        max_new_tokens=int(max_new_tokens),
        prune=prune,
        eos=eos_token_id,
        pad=eos_token_id if pad_token_id is None else pad_token_id,
        dtype=dtype,
    )


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "prune", "eos", "pad", "dtype")
)
def _generate(
    graphdef, state, input_ids, inputs_embeds, attention_mask, positions, bidirectional, *,
    max_new_tokens, prune, eos, pad, dtype,
):  # fmt: skip
    model = nnx.merge(graphdef, state)
    x = input_ids if input_ids is not None else inputs_embeds
    b, t = x.shape[:2]
    cache = init_cache(model.config, b, t + max_new_tokens - 1, dtype, prune=prune)
    out = model(
        input_ids,
        inputs_embeds=inputs_embeds,
        positions=positions,
        attention_mask=attention_mask,
        cache=cache,
        prune=prune,
        logits_to_keep=1,
        bidirectional=bidirectional,
    )
    first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    rest, cache = decode_greedy(
        model, first, out.cache, max_new_tokens - 1, eos_token_id=eos, pad_token_id=pad
    )
    tokens = jnp.concatenate([first[:, None], rest], axis=1)
    return GenerationOutput(tokens=tokens, kept=out.kept, cache=cache, prune_info=out.prune_info)


def decode_greedy(
    model: LlamaLM,
    token: jax.Array,
    cache: KVCache,
    steps: int,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> tuple[jax.Array, KVCache]:
    """Greedy decoding from a filled cache: ``steps`` single-token steps in one ``lax.scan``,
    each feeding the argmax back. The decode half of ``generate_greedy``, for callers that
    prefill themselves (a VLM's prompt of image and text, a pruned prompt).

    Call it inside ``jax.jit`` (``steps`` and the token ids static). A row that emitted
    ``eos_token_id`` (``token`` included) gets ``pad_token_id`` (default: the EOS id) from then on.

    Args:
      model: the ``LlamaLM`` whose cache this is.
      token: [B] int32, the last token already chosen (e.g. the prefill's argmax).
      cache: the ``KVCache`` after the prompt (room for ``steps`` more tokens).
      steps: decode steps, >= 0.
      eos_token_id, pad_token_id: see above.

    Returns:
      ``(tokens [B, steps] int32, the cache after them)``; ``token`` itself is not repeated.

    Raises:
      ValueError: for a bad ``steps`` or a ``token`` that is not [B] (the cache's batch).

    Example:
      >>> from flax import nnx
      >>> from pruneax.models.llama import LlamaLM, decode_greedy, init_cache, llm_config
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> out = model(jnp.zeros((2, 4), jnp.int32), cache=init_cache(model.config, 2, 7))
      >>> first = jnp.argmax(out.logits[:, -1], -1).astype(jnp.int32)
      >>> tokens, cache = decode_greedy(model, first, out.cache, 3)
      >>> tokens.shape
      (2, 3)
      >>> full = generate_greedy(model, jnp.zeros((2, 4), jnp.int32), 4).tokens
      >>> bool((full[:, 1:] == tokens).all())
      True
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"decode_greedy: steps must be an int >= 0; got {steps!r}")
    if jnp.ndim(token) != 1:
        raise ValueError(f"decode_greedy: token must be [B]; got shape {jnp.shape(token)}")
    pad = eos_token_id if pad_token_id is None else pad_token_id
    b = token.shape[0]
    done = token == eos_token_id if eos_token_id is not None else jnp.zeros((b,), bool)

    def step(carry, _):
        tok, cache, done = carry
        o = model(tok[:, None], cache=cache, logits_to_keep=1)
        nxt = jnp.argmax(o.logits[:, -1], axis=-1).astype(jnp.int32)
        if eos_token_id is not None:
            nxt = jnp.where(done, pad, nxt)
            done = done | (nxt == eos_token_id)
        return (nxt, o.cache, done), nxt

    (_, cache, _), toks = jax.lax.scan(step, (token, cache, done), None, length=int(steps))
    return toks.T, cache
