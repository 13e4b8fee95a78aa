"""Prefill FLOPs of the VLM: projector + LLM layers + LM head, per pre-LLM / in-LLM pruning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pruneax.models._shared.fields import is_int
from pruneax.models.llama._model import FastVSpec
from pruneax.models.vlm._select import NO_SELECT, VisualSelect

if TYPE_CHECKING:
    from pruneax.models.vlm._config import VLMConfig


# ------------------------------------------------------------------------------ FLOPs


def llm_tokens_per_layer(num_layers: int, t: int, prune: Any = None) -> tuple[int, ...]:
    """Tokens each LLM layer processes in a prefill of ``t`` tokens under ``prune``.

    Uses ``prune.tokens_per_layer(num_layers, t)`` when the spec has it; a ``FastVSpec`` keeps
    ``t`` before ``prune.layer`` and ``t - prune.num_dropped`` from it on.

    Args:
      num_layers: LLM layers.
      t: prefill tokens.
      prune: None or an in-LLM spec (``PruneSpec``).

    Returns:
      One token count per layer.

    Raises:
      ValueError: for a spec of unknown kind.

    Example:
      >>> from pruneax.models import FastVSpec, llm_tokens_per_layer
      >>> llm_tokens_per_layer(4, 100, FastVSpec(start=10, stop=74, layer=2, keep_ratio=0.25))
      (100, 100, 52, 52)
    """
    if prune is None:
        return (t,) * num_layers
    if hasattr(prune, "tokens_per_layer"):
        return tuple(int(v) for v in prune.tokens_per_layer(num_layers, t))
    if isinstance(prune, FastVSpec):
        return tuple(t if i < prune.layer else t - prune.num_dropped for i in range(num_layers))
    raise ValueError(
        f"llm_tokens_per_layer: prune must be a FastVSpec or have tokens_per_layer; got "
        f"{type(prune).__name__}"
    )


def vlm_prefill_flops(
    config: VLMConfig,
    *,
    prefix_len: int,
    question_len: int,
    select: VisualSelect = NO_SELECT,
    prune: Any = None,
    logits_to_keep: int = 1,
) -> float:
    """Prefill FLOPs (2 x multiply-adds) of the projector and the LLM for one example.

    Projector: every one of the ``config.num_visual`` visual tokens (selection reads the
    projector outputs before choosing): ``2 Nv (Dv D + D D)`` (``2 Nv Dv D`` for the linear
    projector); only the ``pv + k`` kept ones for a method that selects inside the vision
    encoder (``select.in_vision``: FlowCut). LLM layer with ``t`` tokens (FastV's count, full
    ``t x t`` attention, GQA-aware, SwiGLU): ``2 [t D (H hd) 2 + 2 t D (KV hd) + 2 t^2 H hd +
    3 t D F]``, with ``t`` from ``llm_tokens_per_layer``. LM head: ``2 D V`` per kept logit row.
    The vision encoder (the same for every method; FlowCut runs its feature block on
    ``1 + k`` tokens, a saving not counted here), the embeddings, norms, softmax and the
    selection itself are not counted.

    Args:
      config: the VLM's config.
      prefix_len: text tokens before the image.
      question_len: text tokens after it.
      select: the pre-LLM selection (how many visual tokens enter the LLM).
      prune: the in-LLM spec, or None.
      logits_to_keep: LM-head rows computed (0: all).

    Returns:
      FLOPs (a float).

    Raises:
      ValueError: for negative lengths or a ``select`` / ``prune`` that does not fit.

    Example:
      >>> import pruneax.models as M
      >>> vit = M.vit_config("mnist/4", num_classes=0)
      >>> cfg = M.VLMConfig(vision=vit, llm=M.llm_config("tiny"))
      >>> half = M.VisualSelect(method="divprune", keep=0.5)
      >>> full = M.vlm_prefill_flops(cfg, prefix_len=4, question_len=8)
      >>> M.vlm_prefill_flops(cfg, prefix_len=4, question_len=8, select=half) < full
      True

    References: Chen et al., FastV, ECCV 2024, Sec. 4.3 (the per-layer count).
    """
    for name, value in (("prefix_len", prefix_len), ("question_len", question_len)):
        if not is_int(value) or value < 0:
            raise ValueError(f"vlm_prefill_flops: {name} must be an int >= 0; got {value!r}")
    if not isinstance(select, VisualSelect):
        raise ValueError(f"vlm_prefill_flops: select must be a VisualSelect; got {select!r}")
    c, v = config.llm, config.vision
    k = select.num_kept(v.num_patches)
    n = config.num_visual  # tokens projected: the N patches (+ the prefix ones, "full")
    n = config.num_visual_prefix + k if select.in_vision else n
    t = prefix_len + config.num_visual_prefix + k + question_len
    d, hd, f = c.hidden_size, c.head_dim, c.intermediate_size
    proj = 2.0 * n * (v.hidden_size * d + (d * d if config.projector == "mlp2x_gelu" else 0))
    llm = 0.0
    for tl in llm_tokens_per_layer(c.num_layers, t, prune):
        llm += 2.0 * (
            2 * tl * d * c.num_heads * hd
            + 2 * tl * d * c.num_kv_heads * hd
            + 2 * tl * tl * c.num_heads * hd
            + 3 * tl * d * f
        )
    rows = t if logits_to_keep == 0 else min(logits_to_keep, t)
    return proj + llm + 2.0 * rows * d * c.vocab_size
