"""Greedy generation of the VLM: one jitted program (vision encoder, pre-LLM selection, the
prompt's prefill with its mask / positions / prefix-LM attention, then ``decode_greedy``).

References: transformers' ``GenerationMixin.generate(do_sample=False)`` as
``LlavaForConditionalGeneration`` / ``PaliGemmaForConditionalGeneration`` run it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruneax.models._shared.common import is_size
from pruneax.models.llama._cache import init_cache
from pruneax.models.llama._generate import GenerationOutput, decode_greedy


def generate_vlm(
    vlm: Any,
    images: jax.Array,
    prefix_ids: Any,
    question_ids: Any,
    max_new_tokens: int,
    *,
    attention_mask: Any,
    select: Any,
    prune: Any,
    key: Any,
    eos_token_id: int | None,
    pad_token_id: int | None,
) -> GenerationOutput:
    """See ``VLM.generate``."""
    if not is_size(max_new_tokens):
        raise ValueError(
            f"VLM.generate: max_new_tokens must be a positive int; got {max_new_tokens!r}"
        )
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"VLM.generate: {name} must be an int or None; got {value!r}")
    # eager checks (shapes, select, prune span) before tracing
    jax.eval_shape(
        lambda: vlm.prepare(
            images, prefix_ids, question_ids, attention_mask=attention_mask, select=select,
            prune=prune, key=key,
        )
    )  # fmt: skip
    graphdef, state = nnx.split(vlm)
    pad = eos_token_id if pad_token_id is None else pad_token_id
    return _generate(
        graphdef, state, images, prefix_ids, question_ids, attention_mask, key,
        max_new_tokens=int(max_new_tokens), select=select, prune=prune, eos=eos_token_id, pad=pad,
    )  # fmt: skip


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "select", "prune", "eos", "pad")
)
def _generate(
    graphdef, state, images, prefix_ids, question_ids, attention_mask, key, *,
    max_new_tokens, select, prune, eos, pad,
):  # fmt: skip
    vlm = nnx.merge(graphdef, state)
    kw = vlm.prepare(
        images, prefix_ids, question_ids, attention_mask=attention_mask, select=select,
        prune=prune, key=key,
    )  # fmt: skip
    kw.pop("kept")
    b, t = kw["inputs_embeds"].shape[:2]
    llm = vlm.llm
    cache = init_cache(llm.config, b, t + max_new_tokens - 1, jnp.dtype(llm.dtype), prune=prune)
    out = llm(**kw, cache=cache, prune=prune, logits_to_keep=1)
    first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    rest, cache = decode_greedy(
        llm, first, out.cache, max_new_tokens - 1, eos_token_id=eos, pad_token_id=pad
    )
    tokens = jnp.concatenate([first[:, None], rest], axis=1)
    return GenerationOutput(tokens=tokens, kept=out.kept, cache=cache, prune_info=out.prune_info)
