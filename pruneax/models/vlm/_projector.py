"""The VLM's multimodal projector: LLaVA-1.5's ``mlp2x_gelu`` or PaliGemma's single linear.

References: transformers' ``LlavaMultiModalProjector`` (``models/llava/modeling_llava.py``) and
``PaliGemmaMultiModalProjector`` (``models/paligemma/modeling_paligemma.py``).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from pruneax.models.vlm._config import VLMConfig

_normal02 = jax.nn.initializers.normal(0.02)
_zeros = jax.nn.initializers.zeros


class Projector(nnx.Module):
    """``linear_2(act(linear_1(x)))`` (``Dv -> D -> D``, ``config.projector == "mlp2x_gelu"``)
    or ``linear_1(x)`` (``"linear"``), times ``config.image_scale``.

    Attribute names follow transformers' ``LlavaMultiModalProjector`` (PaliGemma's ``linear``
    is ``linear_1``). ``"gelu"`` is the exact (erf) GELU of PyTorch's ``nn.GELU``.
    """

    def __init__(self, config: VLMConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        dv, d = config.vision.hidden_size, config.llm.hidden_size
        kw = dict(
            kernel_init=_normal02,
            bias_init=_zeros,
            use_bias=config.projector_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.approximate = config.projector_act == "gelu_tanh"
        self.scale = float(config.image_scale)
        self.linear_1 = nnx.Linear(dv, d, **kw)
        self.linear_2 = nnx.Linear(d, d, **kw) if config.projector == "mlp2x_gelu" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.linear_1(x)
        if self.linear_2 is not None:
            y = self.linear_2(jax.nn.gelu(y, approximate=self.approximate))
        return y if self.scale == 1.0 else y * self.scale
