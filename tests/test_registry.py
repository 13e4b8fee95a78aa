"""The token-method registry (``pruneax.tokens.METHODS``) and its consumers.

(a) Every registered method runs through every consumer: ``select_tokens`` directly, the VLM's
pre-LLM selection (equal to ``select_tokens`` per example on inputs computed by hand from the
full ViT forward) and a ViT ``PruningPlan``. (b) A method registered here (``"lowest"``, with an
option) appears in the VLM, the property tests, the selection benchmark and the VLM experiment
with no other edit, and is unregistered afterwards. (c) Bad registrations, missing inputs and
unknown options raise ValueError naming the problem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pruneax.tokens as T
from pruneax.models.llama import llm_config
from pruneax.models.vit import PruneStage, PruningPlan, ViT, ViTConfig
from pruneax.models.vlm import VLM, VLM_SELECT_METHODS, VisualSelect, VLMConfig
from tests._models import random_model

VISION = ViTConfig(
    image_size=16,
    patch_size=4,  # 4 x 4 grid, N = 16
    num_channels=1,
    hidden_size=32,
    num_layers=3,
    num_heads=2,
    mlp_dim=48,
    num_classes=0,
)
LLM = llm_config("tiny", vocab_size=40, num_layers=2, hidden_size=48, intermediate_size=64)
CONFIG = VLMConfig(vision=VISION, llm=LLM)  # features: hidden state -2 = after block 1
GRID, N, B, K = (4, 4), 16, 2, 5
BUILTIN = list(T.METHODS)  # the methods registered by pruneax itself


def _lowest(k, inp, *, skip):
    """The k lowest scores among the tokens from index ``skip`` on (a user's own selector)."""
    n = inp["scores"].shape[0]
    return T.topk(jnp.where(jnp.arange(n) < skip, -jnp.inf, -inp["scores"]), k)


@pytest.fixture
def lowest():
    """Registers ``"lowest"`` (needs scores, option ``skip``) for one test, then removes it."""
    T.register(T.Method("lowest", _lowest, {"scores"}, options={"skip": 0}, summary="test"))
    yield "lowest"
    T.unregister("lowest")
    assert "lowest" not in T.METHODS


@pytest.fixture(scope="module")
def vlm() -> VLM:
    return random_model(VLM, CONFIG, 0, 0.2, unit_embedding=True)


@pytest.fixture(scope="module")
def vit() -> ViT:
    return random_model(ViT, VISION, 1, 0.2)


def inputs(seed: int = 1):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(B, 16, 16, 1)), jnp.float32)
    question = jnp.asarray(rng.integers(0, LLM.vocab_size, (B, 3)), jnp.int32)
    return images, question


def one_example(name: str, seed: int = 0) -> dict:
    """Every input a method may need, for one example of N tokens (scores are attention-like)."""
    rng = np.random.default_rng(seed)
    have = {
        "scores": rng.random(N, dtype=np.float32),
        "features": rng.normal(size=(N, 8)).astype(np.float32),
        "shallow_scores": rng.random(N, dtype=np.float32),
        "deep_scores": rng.random(N, dtype=np.float32),
        "grid": GRID,
        "text": rng.normal(size=(3, 8)).astype(np.float32),
        "vision_features": rng.normal(size=(N, 6)).astype(np.float32),
        "key": jax.random.key(seed),
    }
    assert set(have) == set(T.INPUTS), "a new registry input needs a value here"
    return have


def assert_contract(idx, n, k):
    idx = np.asarray(idx)
    assert idx.dtype == np.int32 and idx.shape[-1] == k, (idx.dtype, idx.shape)
    assert np.all(idx >= 0) and np.all(idx < n), idx
    assert np.all(np.diff(idx, axis=-1) > 0), f"not unique and sorted ascending: {idx}"


def vlm_by_hand(vlm: VLM, select: VisualSelect, images, question, key) -> np.ndarray:
    """``select_tokens`` per example on inputs computed from the FULL ViT forward by hand."""
    out = vlm.vision(images, return_attention=True, return_hidden_states=True)
    h, p = CONFIG.feature_layer, VISION.num_prefix
    feats = out.hidden_states[h][:, p:]
    proj = vlm.projector(feats)
    text = vlm.llm.embed(question)
    shallow = (
        max(0, round(h * 9 / 24) - 1) if select.shallow_layer is None else select.shallow_layer
    )
    keys = jax.random.split(key, B)
    method = T.get_method(select.registry_name)
    picks = []
    for b in range(B):
        have = {
            "scores": T.cls_attention(out.attentions[h - 1][b], num_prefix=p),
            "deep_scores": T.received_attention(out.attentions[h - 1][b], num_prefix=p),
            "shallow_scores": T.received_attention(out.attentions[shallow][b], num_prefix=p),
            "features": proj[b],
            "vision_features": feats[b],
            "text": text[b],
            "grid": GRID,
            "key": keys[b],
        }
        used = {i: v for i, v in have.items() if i in method.needs | method.optional}
        k = select.num_kept(N)
        picks.append(np.asarray(T.select_tokens(method.name, k, **used, **select.method_options())))
    return np.stack(picks)


# ----------------------------------------------------------- (a) every method, every consumer


@pytest.mark.parametrize("name", BUILTIN)
def test_direct_select_tokens(name):
    have = one_example(name)
    m = T.get_method(name)
    idx = T.select_tokens(name, K, **{i: have[i] for i in m.needs})
    assert_contract(idx, N, K)
    # a consumer may pass everything it has: unused inputs are ignored
    np.testing.assert_array_equal(T.select_tokens(name, K, **have), T.select_tokens(name, K, **{
        i: have[i] for i in m.needs | m.optional}))  # fmt: skip


@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_in_the_vlm(vlm, name):
    assert name in VLM_SELECT_METHODS
    images, question = inputs()
    key = jax.random.key(3)
    select = VisualSelect(name, keep=K)
    tokens, kept = vlm.select_visual(images, question, select=select, key=key)
    assert tokens.shape == (B, K, LLM.hidden_size)
    assert_contract(kept, N, K)
    np.testing.assert_array_equal(kept, vlm_by_hand(vlm, select, images, question, key))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_in_a_vit_plan(vit, name):
    plan = PruningPlan((PruneStage(layer=2, keep=K, method=name),))
    images, _ = inputs(seed=2)
    out = vit(images, plan=plan, key=jax.random.key(4))
    (kept,) = out.kept
    assert kept.shape == (B, K)
    assert_contract(kept, N, K)


# ------------------------------------------------------------- (b) a method registered in a test


def test_registered_method_reaches_the_vlm(vlm, lowest):
    assert lowest in VLM_SELECT_METHODS and lowest in T.METHODS
    images, question = inputs(seed=5)
    select = VisualSelect(lowest, keep=4, options={"skip": 3})
    assert select.method_options() == {"skip": 3}
    _, kept = vlm.select_visual(images, question, select=select)
    want = vlm_by_hand(vlm, select, images, question, jax.random.key(0))
    np.testing.assert_array_equal(kept, want)
    assert np.all(np.asarray(kept) >= 3)  # the option reached the selector
    # and through the whole VLM under jit (VisualSelect with options is static / hashable)
    out = nnx.jit(lambda m, x, q: m(x, None, q, select=select))(vlm, images, question)
    np.testing.assert_array_equal(out.visual_kept, want)


def test_registered_method_is_property_tested(lowest):
    from tests import test_properties as tp

    tp.test_contract_random_inputs(name=lowest)
    tp.test_contract_duplicate_rows(name=lowest)
    for fill in ("zeros", "ones", "same_row"):
        tp.test_contract_degenerate_inputs(name=lowest, fill=fill)
    rng = np.random.default_rng(0)
    batch = [tp.random_arrays(rng, 6, ties=bool(i % 2)) for i in range(3)]
    stacked = {key: jnp.stack([e[key] for e in batch]) for key in batch[0]}
    got = jax.jit(jax.vmap(lambda a: tp.select(lowest, a, 2)))(stacked)
    np.testing.assert_array_equal(got, np.stack([tp.select(lowest, e, 2) for e in batch]))
    a16 = tp.to_dtype(batch[0], jnp.bfloat16)
    np.testing.assert_array_equal(
        tp.select(lowest, a16, 2), tp.select(lowest, tp.to_dtype(a16, np.float32), 2)
    )


def test_registered_method_reaches_the_vit_benchmark_and_experiment(vit, lowest):
    stage = PruneStage(layer=2, keep=4, method=lowest, options={"skip": 3})
    out = vit(inputs(seed=6)[0], plan=PruningPlan((stage,)))
    assert np.all(np.asarray(out.kept[0]) >= 3)

    from benchmarks import selection
    from pruneax.experiments import vlm_token_pruning as vtp

    sel = selection.selectors()[lowest]
    shape = selection.QUICK_SHAPES["tiny"]
    data = selection.make_inputs(shape, 2, seed=0)
    idx = jax.vmap(sel.make(shape))(*(jnp.asarray(data[i]) for i in sel.inputs))
    assert_contract(idx, shape.n, shape.k)
    assert lowest in vtp.pre_methods()
    assert vtp.pre_select(lowest, 0.25) == VisualSelect(lowest, keep=0.25)


# ------------------------------------------------------------------------------------ (c) errors


def test_registration_errors():
    with pytest.raises(ValueError, match="method must be a Method"):
        T.register(lambda k, inp: inp)
    with pytest.raises(ValueError, match="'topk' exists; pass replace=True"):
        T.register(T.Method("topk", _lowest, {"scores"}))
    with pytest.raises(ValueError, match=r"needs / optional must be among .*'attention'"):
        T.Method("bad", _lowest, {"attention"})
    with pytest.raises(ValueError, match="no method named 'nope'"):
        T.unregister("nope")
    assert "bad" not in T.METHODS


def test_call_errors(vlm):
    with pytest.raises(ValueError, match="method must be one of"):
        T.select_tokens("nope", 2, scores=jnp.ones(4))
    with pytest.raises(ValueError, match=r"missing inputs \['features', 'scores'\]"):
        T.select_tokens("kcenter", 2)
    with pytest.raises(ValueError, match=r"unknown options \['alpha'\]; it takes \['stride'\]"):
        T.select_tokens("feather", 2, scores=jnp.ones(4), grid=(2, 2), alpha=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        VisualSelect("nope", keep=2)
    with pytest.raises(ValueError, match=r"'feather' takes no options \['alpha'\]"):
        VisualSelect("feather", keep=2, options={"alpha": 0.5})
    with pytest.raises(ValueError, match="must be hashable"):
        VisualSelect("feather", keep=2, options={"stride": [2]})
    with pytest.raises(ValueError, match="options must be a mapping"):
        VisualSelect("feather", keep=2, options=3)
    with pytest.raises(ValueError, match="method must be one of"):
        PruneStage(layer=1, keep=2, method="nope")


def test_vlm_cannot_give_a_needed_input(vlm):
    """A method that needs the question's text fails, naming it, when there is no question."""
    name = "needs_text"
    fn = lambda k, inp: T.coverage(inp["features"], k, text=inp["text"])
    T.register(T.Method(name, fn, {"features", "text"}))
    try:
        images, question = inputs()
        select = VisualSelect(name, keep=3)
        _, kept = vlm.select_visual(images, question, select=select)
        assert_contract(kept, N, 3)
        with pytest.raises(ValueError, match=r"missing inputs \['text'\]"):
            vlm.select_visual(images, None, select=select)
        off = VisualSelect(name, keep=3, coverage_text=False)
        with pytest.raises(ValueError, match=r"missing inputs \['text'\]"):
            vlm.select_visual(images, question, select=off)
    finally:
        T.unregister(name)
