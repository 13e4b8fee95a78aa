"""The runner's model side: a batch of encoded items -> padded arrays, greedy generation (one
jitted program: prefill + decoding), a prefill-only program for latency, prefill FLOPs.

Padding (both families keep transformers' semantics: pad tokens are masked keys and positions
count only valid tokens, ``cumsum(mask) - 1``): the prefix is left-padded to the batch's
longest; the question is padded at its start to a multiple of ``bucket`` (the pads sit
between the image and the question, so every row's image span is ``[P, P + n)`` for an in-LLM
spec, and the number of compiled shapes stays bounded). ``VLM`` takes the HF-layout mask over
``[P] [Nv] [Q]``; ``LlavaNext`` takes ``prefix_mask`` / ``question_mask`` and needs one image
size per batch (``image_sizes`` is static).

References: transformers ``generation/utils.py`` (greedy search, left padding).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.experiments.vlm_bench._prompting import Encoded
from pruneax.experiments.vlm_bench._run_methods import Setting, llm_spec, retained
from pruneax.models.llama import generate_greedy
from pruneax.models.vlm import vlm_prefill_flops
from pruneax.models.vlm._next_select import num_selected


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m if n else 0


def build_batch(encs: Sequence[Encoded], pad: int, bucket: int) -> dict[str, Any]:
    """Padded NumPy arrays of a batch (see the module docstring)."""
    p = max(len(e.prefix) for e in encs)
    q = _round_up(max(len(e.question) for e in encs), bucket)
    b = len(encs)
    prefix = np.full((b, p), pad, np.int32)
    question = np.full((b, q), pad, np.int32)
    pmask = np.zeros((b, p), bool)
    qmask = np.zeros((b, q), bool)
    for i, e in enumerate(encs):
        if len(e.prefix):
            prefix[i, p - len(e.prefix) :], pmask[i, p - len(e.prefix) :] = e.prefix, True
        if len(e.question):
            question[i, q - len(e.question) :], qmask[i, q - len(e.question) :] = e.question, True
    sizes = None if encs[0].image_size is None else tuple(e.image_size for e in encs)
    return dict(
        pixels=np.stack([e.pixels for e in encs]), prefix=prefix, question=question,
        prefix_mask=pmask, question_mask=qmask, sizes=sizes, P=p,
    )  # fmt: skip


def visual_counts(model: Any, family: str, setting: Setting, sizes: Any) -> int:
    """Visual tokens entering the LLM per row (the image span's length)."""
    if family == "llava_next":
        return max(num_selected(lay, setting.select) for lay in model.layouts(sizes))
    c = model.config
    return c.num_visual_prefix + setting.select.num_kept(c.vision.num_patches)


def spec_for(model: Any, family: str, setting: Setting, p: int, n: int, fastv_layer: int) -> Any:
    """The in-LLM spec of ``setting`` for a batch with prefix length ``p`` and ``n`` visual
    tokens in the LLM."""
    if setting.llm is None:
        return None
    llm_cfg = model.vlm.config.llm if family == "llava_next" else model.config.llm
    if family == "llava_next":
        grid = (1, n)
    else:
        c = model.config
        grid = c.vision.grid if n == c.vision.num_patches else (1, n)
    return llm_spec(setting, p, n, layer=fastv_layer, num_layers=llm_cfg.num_layers, grid=grid)


def _vlm_inputs(model: Any, batch: dict[str, Any]) -> tuple:
    nv = model.config.num_visual
    b = batch["pixels"].shape[0]
    mask = np.concatenate([batch["prefix_mask"], np.ones((b, nv), bool), batch["question_mask"]], 1)
    prefix = jnp.asarray(batch["prefix"]) if batch["P"] else None
    return jnp.asarray(batch["pixels"]), prefix, jnp.asarray(batch["question"]), jnp.asarray(mask)


@functools.partial(
    nnx.jit, static_argnames=("sizes", "select", "prune", "max_new_tokens", "eos", "pad")
)
def _next_generate(model, pixels, prefix, question, pmask, qmask, key, *, sizes, select, prune,
                   max_new_tokens, eos, pad):  # fmt: skip
    embeds, mask, _ = model.embed_inputs(
        pixels, sizes, prefix, question, select=select, key=key, prefix_mask=pmask,
        question_mask=qmask,
    )  # fmt: skip
    return generate_greedy(
        model.vlm.llm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
        prune=prune, eos_token_id=eos, pad_token_id=pad,
    ).tokens  # fmt: skip


@functools.partial(nnx.jit, static_argnames=("sizes", "select", "prune"))
def _next_prefill(model, pixels, prefix, question, pmask, qmask, key, *, sizes, select, prune):
    out = model(
        pixels, sizes, prefix, question, select=select, prune=prune, key=key, prefix_mask=pmask,
        question_mask=qmask, logits_to_keep=1,
    )  # fmt: skip
    return out.logits


@functools.partial(nnx.jit, static_argnames=("select", "prune"))
def _vlm_prefill(model, pixels, prefix, question, mask, key, *, select, prune):
    out = model(
        pixels, prefix, question, attention_mask=mask, select=select, prune=prune, key=key,
        logits_to_keep=1,
    )  # fmt: skip
    return out.llm.logits


def _place(arrays: tuple, mesh: Any) -> tuple:
    if mesh is None or mesh.shape.get("data", 1) == 1:
        return arrays
    from pruneax import lab

    return tuple(None if a is None else lab.shard_batch(a, mesh) for a in arrays)


def generate_batch(
    model: Any, family: str, setting: Setting, batch: dict[str, Any], *, max_new_tokens: int,
    eos: int | None, pad: int, key: Any, fastv_layer: int, mesh: Any = None,
) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """Greedy tokens [B, max_new_tokens] of a batch, the visual tokens entering the LLM and
    those reaching its last layer."""
    n = visual_counts(model, family, setting, batch["sizes"])
    prune = spec_for(model, family, setting, batch["P"], n, fastv_layer)
    if family == "llava_next":
        arrays = (batch["pixels"], batch["prefix"], batch["question"], batch["prefix_mask"],
                  batch["question_mask"])  # fmt: skip
        pixels, prefix, question, pmask, qmask = _place(tuple(map(jnp.asarray, arrays)), mesh)
        if not batch["P"]:
            prefix = pmask = None
        tokens = _next_generate(
            model, pixels, prefix, question, pmask, qmask, key, sizes=batch["sizes"],
            select=setting.select, prune=prune, max_new_tokens=max_new_tokens, eos=eos, pad=pad,
        )  # fmt: skip
    else:
        pixels, prefix, question, mask = _place(_vlm_inputs(model, batch), mesh)
        tokens = model.generate(
            pixels, prefix, question, max_new_tokens, attention_mask=mask, select=setting.select,
            prune=prune, key=key, eos_token_id=eos, pad_token_id=pad,
        ).tokens  # fmt: skip
    return np.asarray(tokens), n, retained(setting, n, prune)


def prefill_latency(
    model: Any, family: str, setting: Setting, batch: dict[str, Any], *, key: Any,
    fastv_layer: int, repeats: int, mesh: Any = None,
) -> float:  # fmt: skip
    """Median seconds of ``repeats`` timed calls of a jitted prefill-only program on ``batch``
    (after one warm-up call that compiles)."""
    n = visual_counts(model, family, setting, batch["sizes"])
    prune = spec_for(model, family, setting, batch["P"], n, fastv_layer)
    if family == "llava_next":
        arrays = (batch["pixels"], batch["prefix"], batch["question"], batch["prefix_mask"],
                  batch["question_mask"])  # fmt: skip
        pixels, prefix, question, pmask, qmask = _place(tuple(map(jnp.asarray, arrays)), mesh)
        if not batch["P"]:
            prefix = pmask = None

        def call():
            return _next_prefill(
                model, pixels, prefix, question, pmask, qmask, key, sizes=batch["sizes"],
                select=setting.select, prune=prune,
            )  # fmt: skip
    else:
        pixels, prefix, question, mask = _place(_vlm_inputs(model, batch), mesh)

        def call():
            return _vlm_prefill(
                model, pixels, prefix, question, mask, key, select=setting.select, prune=prune
            )

    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prefill_flops(
    model: Any, family: str, setting: Setting, lengths: Sequence[tuple[int, int]],
    fastv_layer: int,
) -> float | None:  # fmt: skip
    """Mean per-example prefill FLOPs (``vlm_prefill_flops``) over the items' own (unpadded)
    ``(prefix, question)`` lengths; None for LLaVA-NeXT (anyres token counts are not covered
    by ``vlm_prefill_flops``)."""
    if family == "llava_next" or not lengths:
        return None
    cache: dict[tuple[int, int], float] = {}
    n = visual_counts(model, family, setting, None)
    total = 0.0
    for pq in lengths:
        pq = (int(pq[0]), int(pq[1]))
        if pq not in cache:
            prune = spec_for(model, family, setting, pq[0], n, fastv_layer)
            cache[pq] = vlm_prefill_flops(
                model.config, prefix_len=pq[0], question_len=pq[1], select=setting.select,
                prune=prune,
            )  # fmt: skip
        total += cache[pq]
    return total / len(lengths)
