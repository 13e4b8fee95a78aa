"""The ViT's structured-pruning hooks: where its heads and MLP channels sit, its analytic
parameter and FLOP counts (``pruneax.models.structured`` reads them).

Units: an attention head is its ``hd`` columns of ``query`` / ``key`` / ``value`` (kernel and
bias) and its ``hd`` rows of ``out``'s kernel; an MLP channel is a column of ``fc1`` (kernel and
bias) and a row of ``fc2``'s kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pruneax.models.structured._arch import Slice
from pruneax.models.vit._flops import vit_flops
from pruneax.models.vit._model import ViT, ViTConfig


class ViTStructured:
    """``StructuredArch`` of ``ViT``."""

    config_type = ViTConfig
    model_type = ViT
    head_unit = "head"

    def layout(self, config: ViTConfig) -> tuple[list[list[Slice]], list[list[Slice]]]:
        heads, mlp = [], []
        for i in range(config.num_layers):
            p, hd = f"blocks/{i}", config.head_dim
            h = [Slice(f"{p}/attn/{n}/kernel", 1, hd) for n in ("query", "key", "value")]
            if config.qkv_bias:
                h += [Slice(f"{p}/attn/{n}/bias", 0, hd) for n in ("query", "key", "value")]
            h.append(Slice(f"{p}/attn/out/kernel", 0, hd))
            heads.append(h)
            mlp.append(
                [
                    Slice(f"{p}/mlp/fc1/kernel", 1, 1),
                    Slice(f"{p}/mlp/fc1/bias", 0, 1),
                    Slice(f"{p}/mlp/fc2/kernel", 0, 1),
                ]
            )
        return heads, mlp

    def unit_counts(self, config: ViTConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(config.heads_per_layer), tuple(config.mlp_per_layer)

    def param_count(self, cfg: ViTConfig) -> int:
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
        total = c * p * p * d + d * cfg.patch_bias
        total += d * (cfg.class_token + cfg.distillation_token + cfg.num_registers)
        if cfg.pos_embed == "learned":
            total += d * (cfg.num_pos_prefix + cfg.num_patches)
        total += 2 * d * cfg.pre_norm + 2 * d * (cfg.final_norm != "none")
        hd = cfg.head_dim
        for h, m in zip(cfg.heads_per_layer, cfg.mlp_per_layer, strict=True):
            total += 4 * d  # two LayerNorms
            total += 4 * d * h * hd + 3 * h * hd * cfg.qkv_bias + d  # q, k, v, out (+ out bias)
            total += 2 * d * m + m + d  # fc1, fc2
        total += (d * d + d) * cfg.pooler
        if cfg.map_head:  # probe, packed in_proj, out, LayerNorm, MLP (never pruned)
            total += d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d
            total += 2 * d * cfg.mlp_dim + cfg.mlp_dim + d
        k = cfg.num_classes
        total += (d * k + k) * ((k > 0) + (cfg.pool == "cls_dist"))
        return int(total)

    def flops(self, cfg: ViTConfig, tokens: int) -> int:
        return vit_flops(cfg, tokens=tokens)

    def default_tokens(self, cfg: ViTConfig) -> int:
        return cfg.num_prefix + cfg.num_patches

    def unit_costs(self, cfg: ViTConfig, kind: str, tokens: int) -> tuple[int, int]:
        d, hd = cfg.hidden_size, cfg.head_dim
        if kind == "params":
            return 4 * d * hd + 3 * hd * cfg.qkv_bias, 2 * d + 1
        return 8 * tokens * d * hd + 4 * tokens * tokens * hd, 4 * tokens * d

    def dense(self, cfg: ViTConfig) -> ViTConfig:
        return dataclasses.replace(cfg, layer_heads=None, layer_mlp=None)

    def pruned(self, cfg: ViTConfig, heads: Sequence[int], mlp: Sequence[int]) -> ViTConfig:
        return dataclasses.replace(cfg, layer_heads=tuple(heads), layer_mlp=tuple(mlp))

    def to_json(self, cfg: ViTConfig) -> dict[str, Any]:
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


VIT_STRUCTURED = ViTStructured()
