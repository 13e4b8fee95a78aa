"""Analytic FLOPs of a ViT forward pass, dense or under a token-pruning plan: the one count the
structured allocator, the experiments and the benchmarks share."""

from __future__ import annotations

from typing import Any

from pruneax.models.vit._config import ViTConfig


def block_flops(config: ViTConfig, layer: int, attn_tokens: int, mlp_tokens: int) -> int:
    """FLOPs (2 per multiply-add) of block ``layer``: Q/K/V/output projections and the two
    attention products on ``attn_tokens``, the MLP on ``mlp_tokens`` (both prefix included).

    Args:
      config: the ``ViTConfig`` (per-layer heads and MLP widths of a pruned model honoured).
      layer: the block, in ``[0, num_layers)``.
      attn_tokens, mlp_tokens: tokens the attention and the MLP run on.

    Returns:
      ``8 Ta D H hd + 4 Ta^2 H hd + 4 Tm D M`` (norms, softmax, activations not counted).

    Example:
      >>> from pruneax.models.vit import block_flops, vit_config
      >>> block_flops(vit_config("mnist/4"), 0, 50, 50)
      14387200
    """
    d, hd = config.hidden_size, config.head_dim
    h, m = config.heads_per_layer[layer], config.mlp_per_layer[layer]
    ta, tm = int(attn_tokens), int(mlp_tokens)
    return 8 * ta * d * h * hd + 4 * ta * ta * h * hd + 4 * tm * d * m


def vit_flops(config: ViTConfig, plan: Any = None, *, tokens: int | None = None) -> int:
    """Analytic forward FLOPs per image of a ``ViT``: patch embedding, every block, pooler or
    MAP head, and classifier; the blocks on the tokens ``plan`` leaves them.

    An in-block stage (ToMe, EViT) shortens the MLP of the block it runs in, as the published
    blocks do (``PruningPlan.block_tokens``). The selection itself (scores, matching, gathers)
    is not counted.

    Args:
      config: the ``ViTConfig``.
      plan: a ``PruningPlan`` or None (dense).
      tokens: dense only: tokens per block (default: the prefix + patch tokens); the
        structured allocator prices units at a given sequence length with it.

    Returns:
      FLOPs (2 per multiply-add).

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig``, ``tokens`` is given with a plan or is
        not a positive int, or the plan does not fit the model.

    Example:
      >>> from pruneax.models.vit import PruningPlan, vit_config, vit_flops
      >>> c = vit_config("mnist/4")
      >>> round(vit_flops(c, PruningPlan.at(3, 0.5, "topk")) / vit_flops(c), 3)
      0.749
    """
    if not isinstance(config, ViTConfig):
        raise ValueError(f"vit_flops: config must be a ViTConfig; got {type(config).__name__}")
    p, n = config.num_prefix, config.num_patches
    if tokens is not None:
        if plan is not None:
            raise ValueError("vit_flops: give tokens (a dense length) or plan, not both")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"vit_flops: tokens must be a positive int or None; got {tokens!r}")
        pairs = [(tokens, tokens)] * config.num_layers
    elif plan is None:
        pairs = [(p + n, p + n)] * config.num_layers
    else:
        pairs = [(p + a, p + b) for a, b in plan.block_tokens(config.num_layers, n)]
    d, c = config.hidden_size, config.num_classes
    total = 2 * n * config.num_channels * config.patch_size**2 * d
    total += sum(block_flops(config, i, a, b) for i, (a, b) in enumerate(pairs))
    total += 2 * d * d * config.pooler
    if config.map_head:  # probe query, keys / values of the final tokens, scores, out, MLP
        t = pairs[-1][1]
        total += 2 * d * d + 4 * t * d * d + 4 * t * d + 2 * d * d + 4 * d * config.mlp_dim
    total += 2 * d * c * ((c > 0) + (config.pool == "cls_dist"))
    return int(total)
