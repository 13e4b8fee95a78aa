"""The in-LLM pruning protocol (``pruneax.models.PruneSpec``) with a spec defined HERE, outside
pruneax: "keep the first k image tokens at layer L" (``FirstK``) and its masking twin
(``HideAfterK``).

Oracles: the LlamaLM run on the hand-pruned sequence (layers < L on every token, gather the kept
ones with their ORIGINAL positions, layers >= L on them), for ``LlamaLM`` (uncached, cached
prefill + decode, ``generate_greedy``) and through the ``VLM`` (its ``embed_inputs`` fed to the
same hand-built run); the masking twin equals the physical one on the tokens it keeps. Malformed
specs raise ValueError naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import PruneContext, PruneSpec, PruneStep
from pruneax.models.llama import (
    FastVSpec,
    FeatherSpec,
    TodreSpec,
    generate_greedy,
    init_cache,
    llm_config,
)
from pruneax.models.vit import ViTConfig
from pruneax.models.vlm import VLM, VisualSelect, VLMConfig
from tests._models import random_model
from tests.test_llm import materialize

CFG = llm_config("tiny", vocab_size=96, attention_bias=True)  # 4 layers, H=4, KV=2, hd=16
L = CFG.num_layers
T_PROMPT = 20
START, STOP = 3, 15  # 12 image tokens


@dataclasses.dataclass(frozen=True)
class FirstK:
    """Keeps the first ``k`` image tokens of ``[start, stop)`` from layer ``layer`` on."""

    start: int
    stop: int
    k: int
    layer: int = 2

    def validate(self, num_layers: int, length: int, where: str) -> None:
        if not 0 <= self.layer < num_layers:
            raise ValueError(f"{where}: FirstK.layer must be in [0, {num_layers})")
        if not 0 <= self.start < self.stop <= length or not 1 <= self.k <= self.stop - self.start:
            raise ValueError(f"{where}: FirstK does not fit {length} tokens")

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.layer,)

    def attention_layers(self, num_layers: int) -> frozenset[int]:
        return frozenset()

    def tokens_per_layer(self, num_layers: int, length: int) -> tuple[int, ...]:
        late = length - (self.stop - self.start) + self.k
        return tuple(length if i < self.layer else late for i in range(num_layers))

    def kept(self, length: int) -> np.ndarray:
        return np.r_[0 : self.start + self.k, self.stop : length]

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        b, t = ctx.valid.shape
        keep = jnp.broadcast_to(jnp.asarray(self.kept(t), jnp.int32), (b, t - self.dropped))
        return PruneStep(keep, None, {"first_k_layer": jnp.full((b,), layer)})

    @property
    def dropped(self) -> int:
        return self.stop - self.start - self.k


@dataclasses.dataclass(frozen=True)
class HideAfterK(FirstK):
    """The same selection by masking: the dropped image tokens stay but leave the keys."""

    def tokens_per_layer(self, num_layers: int, length: int) -> tuple[int, ...]:
        return (length,) * num_layers

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        t = ctx.valid.shape[1]
        i = jnp.arange(t)
        hide = (i >= self.start + self.k) & (i < self.stop)
        return PruneStep(None, jnp.broadcast_to(hide, ctx.valid.shape), {})


SPEC = FirstK(START, STOP, k=4, layer=2)


@pytest.fixture(scope="module")
def model():
    return materialize(CFG, seed=5)


def ids_of(shape=(2, T_PROMPT), seed=1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, shape), jnp.int32)


@functools.partial(nnx.jit, static_argnames="prune")
def forward(model, ids, cache=None, prune=None):
    return model(ids, cache=cache, prune=prune)


@functools.partial(nnx.jit, static_argnames=("layer", "kept"))
def hand_pruned_logits(llm, x, layer, kept):
    """``llm``'s blocks on embeddings x [B, T, D] with plain causal attention: layers < layer on
    every token, then the tokens ``kept`` (a tuple of indices) with their original positions."""
    b, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    for i in range(llm.config.num_layers):
        if i == layer:
            idx = jnp.asarray(kept)
            x, positions = x[:, idx], positions[:, idx]
        cos, sin = llm.rope(positions)
        causal = jnp.tril(jnp.ones((x.shape[1],) * 2, bool))[None]
        x, _, _ = llm.layers[i](x, cos, sin, causal)
    return llm.head(llm.norm(x))


def test_protocol_is_runtime_checkable():
    for spec in (
        SPEC,
        HideAfterK(START, STOP, 4),
        FastVSpec(start=START, stop=STOP),
        FeatherSpec(3, 19, grid=(4, 4), layers=(1, 3), ratios=(0.25, 0.5), stride=2),
        TodreSpec(START, STOP),
    ):
        assert isinstance(spec, PruneSpec), spec
    assert not isinstance("fastv", PruneSpec)


def test_user_spec_equals_hand_pruned_llm(model):
    ids = ids_of()
    out = forward(model, ids, prune=SPEC)
    kept = tuple(int(i) for i in SPEC.kept(T_PROMPT))
    want = hand_pruned_logits(model, model.embed(ids), SPEC.layer, kept)
    assert out.logits.shape == (2, T_PROMPT - SPEC.dropped, CFG.vocab_size)
    np.testing.assert_allclose(out.logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.kept, np.tile(kept, (2, 1)))
    np.testing.assert_array_equal(out.positions, np.tile(kept, (2, 1)))  # original positions
    np.testing.assert_array_equal(out.prune_info["first_k_layer"], [2, 2])


def test_masking_twin_equals_the_physical_spec_on_kept_tokens(model):
    ids = ids_of(seed=2)
    physical = forward(model, ids, prune=SPEC)
    masked = forward(model, ids, prune=HideAfterK(START, STOP, 4, layer=2))
    kept = SPEC.kept(T_PROMPT)
    np.testing.assert_allclose(masked.logits[:, kept], physical.logits, rtol=1e-5, atol=1e-5)


def test_user_spec_with_cache_decode_and_generate(model):
    ids = ids_of(seed=3)
    cache = init_cache(CFG, 2, T_PROMPT + 3, prune=SPEC)
    assert cache.sizes == SPEC.tokens_per_layer(L, T_PROMPT + 3)
    out = forward(model, ids, cache=cache, prune=SPEC)
    ref = forward(model, ids, prune=SPEC)
    np.testing.assert_allclose(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    late = T_PROMPT - SPEC.dropped
    np.testing.assert_array_equal(out.cache.lengths, [T_PROMPT, T_PROMPT, late, late])
    # a decode step on the pruned cache == the hand-pruned run on prompt + that token
    nxt = jnp.argmax(out.logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
    step = forward(model, nxt, cache=out.cache)
    kept = tuple(int(i) for i in SPEC.kept(T_PROMPT + 1))
    full = jnp.concatenate([ids, nxt], axis=1)
    want = hand_pruned_logits(model, model.embed(full), SPEC.layer, kept)
    np.testing.assert_allclose(step.logits[:, -1], want[:, -1], rtol=1e-4, atol=1e-4)
    gen = generate_greedy(model, ids, 2, prune=SPEC)
    np.testing.assert_array_equal(gen.tokens[:, :1], nxt)
    np.testing.assert_array_equal(gen.kept, out.kept)


VISION = ViTConfig(
    image_size=16,
    patch_size=4,  # 4 x 4 grid, N = 16
    num_channels=1,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    mlp_dim=48,
    num_classes=0,
)
VLM_CFG = VLMConfig(
    vision=VISION,
    llm=llm_config("tiny", vocab_size=40, num_layers=3, hidden_size=48, intermediate_size=64),
)
P, Q = 2, 3


def test_user_spec_through_the_vlm():
    vlm = random_model(VLM, VLM_CFG, 0, 0.2, unit_embedding=True)
    rng = np.random.default_rng(7)
    images = jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32)
    prefix = jnp.asarray(rng.integers(0, 40, (2, P)), jnp.int32)
    question = jnp.asarray(rng.integers(0, 40, (2, Q)), jnp.int32)
    spec = FirstK(P, P + 16, k=5, layer=1)
    run = nnx.jit(lambda m, *a: m(*a, prune=spec))
    out = run(vlm, images, prefix, question)
    embeds, _ = nnx.jit(lambda m, *a: m.embed_inputs(*a, select=VisualSelect()))(
        vlm, images, prefix, question
    )
    t = P + 16 + Q
    kept = tuple(int(i) for i in spec.kept(t))
    want = hand_pruned_logits(vlm.llm, embeds, spec.layer, kept)
    np.testing.assert_allclose(out.logits, want, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(out.llm.kept, np.tile(kept, (2, 1)))
    with pytest.raises(ValueError, match=r"image span must be .* = \[2, 18\)"):
        vlm(images, prefix, question, prune=FirstK(P + 1, P + 16, k=5))


@dataclasses.dataclass(frozen=True)
class NoApply:
    start: int = 0
    stop: int = 4

    def validate(self, num_layers, length, where):
        pass

    def tokens_per_layer(self, num_layers, length):
        return (length,) * num_layers


class Unhashable(FirstK):
    __hash__ = None  # e.g. a dataclass with eq and without frozen


@dataclasses.dataclass(frozen=True)
class WrongTokens(FirstK):
    def tokens_per_layer(self, num_layers, length):
        return (length,) * (num_layers - 1)


@dataclasses.dataclass(frozen=True)
class WrongKeep(FirstK):
    def apply(self, layer, num_layers, ctx):
        return PruneStep(jnp.zeros((ctx.valid.shape[0], 3), jnp.int32), None, {})


@dataclasses.dataclass(frozen=True)
class NotAStep(FirstK):
    def apply(self, layer, num_layers, ctx):
        return None


def test_malformed_specs_raise(model):
    ids = ids_of((2, 12))
    assert not isinstance(NoApply(), PruneSpec)
    cases = [
        (NoApply(), "lacks pruning_layers, attention_layers, apply"),
        (Unhashable(2, 8, 2), "must be hashable"),
        (FirstK(2, 8, 2, layer=4), r"FirstK.layer must be in \[0, 4\)"),
        (FirstK(2, 13, 2), "FirstK does not fit 12 tokens"),
        (WrongTokens(2, 8, 2), r"tokens_per_layer\(4, 12\) must be 4 ints"),
        (WrongKeep(2, 8, 2), r"must return keep int \[B, T'\] = \(2, 8\)"),
        (NotAStep(2, 8, 2), "must return a PruneStep; got NoneType"),
    ]
    for spec, match in cases:
        with pytest.raises(ValueError, match=match):
            model(ids, prune=spec)
    with pytest.raises(ValueError, match=r"init_cache: prune must be a FastVSpec.*lacks"):
        init_cache(CFG, 2, 12, prune=NoApply())
    vlm = random_model(VLM, VLM_CFG, 0, 0.2, unit_embedding=True)
    images = jnp.zeros((1, 16, 16, 1))
    with pytest.raises(ValueError, match=r"LlamaLM: prune must be .*PruneSpec protocol"):
        vlm(images, prune=NoApply(0, 16))
