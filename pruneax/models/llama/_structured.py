"""``LlamaLM``'s structured-pruning hooks: where its GQA groups and MLP channels sit, its
analytic parameter and FLOP counts (``pruneax.models.structured`` reads them).

Units: heads are removed a whole GQA group at a time so that grouped-query attention stays
grouped: one key / value head (``hd`` columns of ``k_proj`` / ``v_proj``) with its
``num_groups`` query heads (``num_groups * hd`` columns of ``q_proj``, rows of ``o_proj``); an
MLP channel is a column of ``gate_proj`` and ``up_proj`` (and their biases) and a row of
``down_proj``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pruneax.models.llama._model import LlamaConfig, LlamaLM
from pruneax.models.structured._arch import Slice


class LlamaStructured:
    """``StructuredArch`` of ``LlamaLM``."""

    config_type = LlamaConfig
    model_type = LlamaLM
    head_unit = "GQA group"

    def layout(self, config: LlamaConfig) -> tuple[list[list[Slice]], list[list[Slice]]]:
        heads, mlp = [], []
        for i in range(config.num_layers):
            p, hd, g = f"layers/{i}", config.head_dim, config.num_groups
            widths = {"q_proj": g * hd, "k_proj": hd, "v_proj": hd}
            h = [Slice(f"{p}/self_attn/{n}/kernel", 1, w) for n, w in widths.items()]
            if config.attention_bias:
                h += [Slice(f"{p}/self_attn/{n}/bias", 0, w) for n, w in widths.items()]
            h.append(Slice(f"{p}/self_attn/o_proj/kernel", 0, g * hd))
            m = [Slice(f"{p}/mlp/{n}/kernel", 1, 1) for n in ("gate_proj", "up_proj")]
            if config.mlp_bias:
                m += [Slice(f"{p}/mlp/{n}/bias", 0, 1) for n in ("gate_proj", "up_proj")]
            m.append(Slice(f"{p}/mlp/down_proj/kernel", 0, 1))
            heads.append(h)
            mlp.append(m)
        return heads, mlp

    def unit_counts(self, config: LlamaConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(config.kv_heads_per_layer), tuple(config.mlp_per_layer)

    def param_count(self, cfg: LlamaConfig) -> int:
        d, hd = cfg.hidden_size, cfg.head_dim
        total = cfg.vocab_size * d + d + cfg.vocab_size * d * (not cfg.tie_word_embeddings)
        for h, kv, f in zip(
            cfg.heads_per_layer, cfg.kv_heads_per_layer, cfg.mlp_per_layer, strict=True
        ):
            total += 2 * d  # two RMSNorm scales
            total += (d + cfg.attention_bias) * (h + 2 * kv) * hd + h * hd * d
            total += d * cfg.attention_out_bias
            total += 3 * d * f + (2 * f + d) * cfg.mlp_bias
        return int(total)

    def flops(self, cfg: LlamaConfig, tokens: int) -> int:
        d, hd, t = cfg.hidden_size, cfg.head_dim, tokens
        total = 2 * d * cfg.vocab_size
        for h, kv, f in zip(
            cfg.heads_per_layer, cfg.kv_heads_per_layer, cfg.mlp_per_layer, strict=True
        ):
            total += 2 * d * (h + 2 * kv) * hd + 2 * h * hd * d + 4 * t * h * hd + 6 * d * f
        return int(total)

    def default_tokens(self, cfg: LlamaConfig) -> None:
        return None  # the context length: the caller must say

    def unit_costs(self, cfg: LlamaConfig, kind: str, tokens: int) -> tuple[int, int]:
        d, hd, g = cfg.hidden_size, cfg.head_dim, cfg.num_groups
        if kind == "params":
            head = (d + cfg.attention_bias) * (g + 2) * hd + g * hd * d
            return head, 3 * d + 2 * cfg.mlp_bias
        return 2 * d * (g + 2) * hd + 2 * g * hd * d + 4 * tokens * g * hd, 6 * d

    def dense(self, cfg: LlamaConfig) -> LlamaConfig:
        return dataclasses.replace(cfg, layer_heads=None, layer_kv_heads=None, layer_mlp=None)

    def pruned(self, cfg: LlamaConfig, heads: Sequence[int], mlp: Sequence[int]) -> LlamaConfig:
        return dataclasses.replace(
            cfg,
            layer_heads=tuple(g * cfg.num_groups for g in heads),
            layer_kv_heads=tuple(heads),
            layer_mlp=tuple(mlp),
        )

    def to_json(self, cfg: LlamaConfig) -> dict[str, Any]:
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        fields["rope_scaling"] = cfg.rope_scaling_dict
        return fields


LLAMA_STRUCTURED = LlamaStructured()
