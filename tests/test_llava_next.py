"""pruneax LLaVA-NeXT (anyres) against transformers: the anyres geometry against transformers'
own functions (``select_best_resolution``, ``get_anyres_image_grid_shape``, ``unpad_image``,
``image_size_to_num_patches``, the processor's token count, ``pack_image_features``) over many
image sizes; a tiny random ``LlavaNextForConditionalGeneration`` (CLIP tower, Llama text,
float32, eager) saved with ``save_pretrained`` and loaded with ``load_llava_next``: logits per
image and for a left-padded batch of two images of different aspect ratios, greedy generation;
FasterVLM's top-k over the packed tokens against CLS attention taken from the PyTorch tower;
every pre-LLM method and the in-LLM specs run.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402
from transformers.image_processing_utils import select_best_resolution as hf_best  # noqa: E402
from transformers.models.llava_next import modeling_llava_next as hf_next  # noqa: E402
from transformers.models.llava_next.processing_llava_next import (  # noqa: E402
    LlavaNextProcessor,
)

from pruneax.models.llama import (  # noqa: E402
    FastVSpec,
    FeatherSpec,
    TodreSpec,
    generate_greedy,
    llm_config,
)
from pruneax.models.vit import ViTConfig  # noqa: E402
from pruneax.models.vlm import (  # noqa: E402
    VLM_SELECT_METHODS,
    LlavaNext,
    LlavaNextConfig,
    VisualSelect,
    VLMConfig,
    anyres_layout,
    load_llava_next,
    load_vlm,
    select_best_resolution,
)

PINS = [[24, 48], [48, 24], [48, 48]]
BIG_PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SIZES = [(30, 50), (40, 20)]  # wide (2 x 2 tiles), tall (2 x 1 tiles)
IMAGE_TOKEN, VOCAB = 63, 64
PREFIX = [5, 17, 9]
QUESTION = [22, 7, 31, 12]
KEEP_ALL = VisualSelect()


@functools.partial(nnx.jit, static_argnames=("sizes", "select", "prune", "padding"))
def forward(model, pixels, prefix, question, *, sizes, select=KEEP_ALL, prune=None,
            padding="left", key=None, prefix_mask=None):  # fmt: skip
    """``model(...)`` under jit (one compile is much cheaper than eager op-by-op dispatch)."""
    return model(
        pixels, sizes, prefix, question, select=select, prune=prune, padding=padding, key=key,
        prefix_mask=prefix_mask,
    )  # fmt: skip


@functools.partial(nnx.jit, static_argnames=("sizes", "select"))
def tokens_of(model, pixels, *, sizes, select=KEEP_ALL):
    return model.image_tokens(pixels, sizes, select=select)


@functools.partial(nnx.jit, static_argnames=("sizes",))
def embeds_of(model, pixels, prefix, question, *, sizes):
    return model.embed_inputs(pixels, sizes, prefix, question)


# ------------------------------------------------------------------------------ geometry


def _hf_token_count(h, w, pins, tile, patch):
    """The processor's count (``_get_number_of_features`` minus the CLS, strategy default)."""
    proc = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=pins),
        patch_size=patch,
        num_additional_image_tokens=1,
    )
    proc._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, proc)
    return LlavaNextProcessor._get_number_of_features(proc, h, w, tile, tile)


@pytest.mark.parametrize("pins,tile,patch", [(PINS, 24, 6), (BIG_PINS, 336, 14)])
def test_geometry_matches_transformers(pins, tile, patch):
    rng = np.random.default_rng(0)
    sizes = [tuple(map(int, s)) for s in rng.integers(1, 3 * max(map(max, pins)), (400, 2))]
    sizes += [(tile, tile), (1, 1000), (1000, 1), (tile * 2, tile)]
    g = tile // patch
    for h, w in sizes:
        lay = anyres_layout((h, w), pins, tile_size=tile, patch_size=patch)
        assert (
            lay.resolution == tuple(hf_best((h, w), pins)) == select_best_resolution((h, w), pins)
        )
        assert lay.tiles == tuple(hf_next.get_anyres_image_grid_shape((h, w), pins, tile))
        assert lay.num_tiles == hf_next.image_size_to_num_patches((h, w), pins, tile)
        rows, cols = lay.tiles[0] * g, lay.tiles[1] * g
        grid = torch.arange(rows * cols).reshape(1, rows, cols)
        cut = hf_next.unpad_image(grid, (h, w))
        assert tuple(cut.shape[1:]) == lay.grid
        if cut.numel():
            assert int(cut[0, 0, 0]) == lay.rows[0] * cols + lay.cols[0]
        assert lay.num_tokens == _hf_token_count(h, w, pins, tile, patch) - 1


@pytest.mark.parametrize("size", [(30, 50), (40, 20), (24, 24), (13, 47), (47, 13), (9, 30)])
def test_pack_index_matches_pack_image_features(size):
    """HF's packing of features that are their own source index (newline = -1)."""
    lay = anyres_layout(size, PINS, tile_size=24, patch_size=6)
    feats = torch.arange(lay.num_tiles * 16, dtype=torch.float32).reshape(lay.num_tiles, 16, 1)
    vc = types.SimpleNamespace(image_size=24, patch_size=6)
    fake = types.SimpleNamespace(
        config=types.SimpleNamespace(vision_config=vc, image_grid_pinpoints=PINS)
    )
    packed, lens = hf_next.LlavaNextModel.pack_image_features(
        fake, [feats], torch.tensor([size]), "default", torch.tensor([-1.0])
    )
    np.testing.assert_array_equal(packed[0][:, 0].numpy().astype(int), lay.pack_index())
    assert int(lens[0]) == lay.num_tokens


def test_bad_geometry_raises():
    with pytest.raises(ValueError, match="multiple of the vision image size"):
        anyres_layout((10, 10), [[30, 48]], tile_size=24, patch_size=6)
    with pytest.raises(ValueError, match="image_size"):
        select_best_resolution((0, 5), PINS)
    with pytest.raises(ValueError, match="non-empty"):
        select_best_resolution((5, 5), [])


# ------------------------------------------------------------------------------ HF oracle


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny random LlavaNextForConditionalGeneration (weights N(0, 0.15^2), norms 1 + N),
    saved; the processor's pixel values of two random images; the pruneax model."""
    torch.manual_seed(0)
    vc = transformers.CLIPVisionConfig(
        image_size=24, patch_size=6, hidden_size=32, intermediate_size=64,
        num_hidden_layers=3, num_attention_heads=2,
    )  # fmt: skip
    tc = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    cfg = transformers.LlavaNextConfig(
        vision_config=vc, text_config=tc, image_grid_pinpoints=PINS, image_token_index=IMAGE_TOKEN
    )
    model = transformers.LlavaNextForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.15 * torch.randn_like(p)
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)
    model.generation_config.eos_token_id = None
    path = tmp_path_factory.mktemp("llava_next")
    model.save_pretrained(path)
    proc = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
        image_grid_pinpoints=PINS,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in SIZES]
    inputs = proc(images, return_tensors="pt")
    ours = load_llava_next(path)
    return types.SimpleNamespace(model=model, inputs=inputs, ours=ours, path=path)


def _ids(n_image, pad=0):
    return [0] * pad + PREFIX + [IMAGE_TOKEN] * n_image + QUESTION


def _ours_inputs(hf, rows):
    pixels = jnp.asarray(hf.inputs["pixel_values"][rows].numpy().transpose(0, 1, 3, 4, 2))
    sizes = tuple(tuple(int(v) for v in hf.inputs["image_sizes"][i]) for i in rows)
    prefix = jnp.asarray([PREFIX] * len(rows), jnp.int32)
    question = jnp.asarray([QUESTION] * len(rows), jnp.int32)
    return pixels, sizes, prefix, question


def _hf_batch(hf, rows):
    counts = [anyres_layout(SIZES[i], PINS, tile_size=24, patch_size=6).num_tokens for i in rows]
    length = max(counts)
    ids = torch.tensor([_ids(c, length - c) for c in counts])
    mask = torch.arange(ids.shape[1])[None] >= torch.tensor([length - c for c in counts])[:, None]
    return ids, mask.long(), counts


def _check_logits(hf, rows):
    """Logits at the valid tokens of ``rows`` equal transformers' (left padding)."""
    ids, mask, _ = _hf_batch(hf, rows)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf.model(
            input_ids=ids, attention_mask=mask, position_ids=pos,
            pixel_values=hf.inputs["pixel_values"][rows],
            image_sizes=hf.inputs["image_sizes"][rows],
        ).logits.numpy()  # fmt: skip
    pixels, sizes, prefix, question = _ours_inputs(hf, rows)
    out = forward(hf.ours, pixels, prefix, question, sizes=sizes)
    np.testing.assert_array_equal(np.asarray(out.attention_mask), mask.numpy().astype(bool))
    valid = mask.numpy().astype(bool)
    got = np.asarray(out.logits)
    assert got.shape == want.shape
    np.testing.assert_allclose(got[valid], want[valid], rtol=0, atol=1e-4)


def test_logits_match_transformers_left_padded_batch(hf):
    """Two images of different aspect ratios (5 and 3 tiles; 52 and 56 visual tokens)."""
    _check_logits(hf, [0, 1])


def test_prompts_of_different_lengths_match_transformers(hf):
    """Row 1's prefix is one token longer: row 0 is left-padded inside ``prefix_ids``."""
    prefixes = [PREFIX, [8, *PREFIX]]
    counts = [anyres_layout(s, PINS, tile_size=24, patch_size=6).num_tokens for s in SIZES]
    rows = [p + [IMAGE_TOKEN] * c + QUESTION for p, c in zip(prefixes, counts, strict=True)]
    length = max(map(len, rows))
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        want = hf.model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            pixel_values=hf.inputs["pixel_values"], image_sizes=hf.inputs["image_sizes"],
        ).logits.numpy()[mask.numpy().astype(bool)]  # fmt: skip
    pixels, sizes, _, question = _ours_inputs(hf, [0, 1])
    prefix = jnp.asarray([[0, *PREFIX], [8, *PREFIX]], jnp.int32)
    prefix_mask = jnp.asarray([[False, True, True, True], [True] * 4])
    out = forward(hf.ours, pixels, prefix, question, sizes=sizes, prefix_mask=prefix_mask)
    got = np.asarray(out.logits)[np.asarray(out.attention_mask)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("row", [0, 1])
def test_logits_match_transformers_per_image(hf, row):
    _check_logits(hf, [row])


@pytest.mark.slow
def test_image_padding_layout_gives_the_same_logits(hf):
    pixels, sizes, prefix, question = _ours_inputs(hf, [0, 1])
    left = forward(hf.ours, pixels, prefix, question, sizes=sizes)
    image = forward(hf.ours, pixels, prefix, question, sizes=sizes, padding="image")
    for b in range(2):  # the same valid tokens in the same order
        a = np.asarray(left.logits[b])[np.asarray(left.attention_mask[b])]
        c = np.asarray(image.logits[b])[np.asarray(image.attention_mask[b])]
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)


def test_greedy_generation_matches_transformers(hf):
    ids, mask, _ = _hf_batch(hf, [0, 1])
    with torch.no_grad():
        want = hf.model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=hf.inputs["pixel_values"],
            image_sizes=hf.inputs["image_sizes"], max_new_tokens=8, do_sample=False,
            pad_token_id=0,
        )[:, ids.shape[1] :].numpy()  # fmt: skip
    pixels, sizes, prefix, question = _ours_inputs(hf, [0, 1])
    embeds, m, _ = embeds_of(hf.ours, pixels, prefix, question, sizes=sizes)
    got = generate_greedy(hf.ours.vlm.llm, inputs_embeds=embeds, attention_mask=m, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(got.tokens), want)


@pytest.mark.slow
def test_jit_with_static_image_sizes(hf):
    pixels, sizes, prefix, question = _ours_inputs(hf, [0, 1])

    @functools.partial(nnx.jit, static_argnames=("sizes", "select"))
    def run(model, pixels, prefix, question, *, sizes, select):
        return model(pixels, sizes, prefix, question, select=select).logits

    eager = hf.ours(pixels, sizes, prefix, question).logits
    np.testing.assert_allclose(
        run(hf.ours, pixels, prefix, question, sizes=sizes, select=VisualSelect()),
        eager, rtol=0, atol=1e-5,
    )  # fmt: skip
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda s: hf.ours.layouts(s))(jnp.asarray(sizes))


def _rewrite(src, dst, rename):
    """A copy of the checkpoint ``src`` with every key renamed by ``rename``."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, dst / "model.safetensors")


def _v5(key):
    if key.startswith("language_model.lm_head."):
        return key.removeprefix("language_model.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    return "model." + key


def _v4_hub(key):
    if key.startswith("vision_tower."):
        return "vision_tower.vision_model." + key.removeprefix("vision_tower.")
    return key


def test_loads_the_transformers_5_and_4_hub_key_layouts(hf, tmp_path):
    src = hf.path
    want = jax.tree.leaves(nnx.state(hf.ours))
    for name, rename in (("v5", _v5), ("v4hub", _v4_hub)):
        _rewrite(src, tmp_path / name, rename)
        got = jax.tree.leaves(nnx.state(load_llava_next(tmp_path / name)))
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    assert isinstance(load_vlm(src), LlavaNext)  # registered in VLM_LOADERS
    newline = hf.model.model.image_newline.detach().numpy()
    np.testing.assert_array_equal(hf.ours.image_newline[...], newline)


def test_loader_refuses_what_it_does_not_handle(hf, tmp_path):
    import json

    for change, match in (
        ({"vision_feature_layer": [-2, -3]}, "several hidden states"),
        ({"new_thing": 1}, "new_thing"),
        ({"projector_hidden_act": "relu"}, "projector_hidden_act"),
        ({"model_type": "llava"}, "model_type"),
    ):
        d = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        cfg = json.loads((hf.path / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=match):
            load_llava_next(d)


# ------------------------------------------------------------------------------ pruning


def test_fastervlm_topk_matches_cls_attention_of_the_torch_tower(hf):
    """Kept = every newline + per group (base tile / unpadded grid) the top half by the CLS
    attention of the patch's own tile (feature layer -2 = block 1's attention)."""
    pixels, sizes, _, _ = _ours_inputs(hf, [0, 1])
    select = VisualSelect("fastervlm", keep=0.5)
    tokens, kept = tokens_of(hf.ours, pixels, sizes=sizes, select=select)
    for b in (0, 1):
        lay = anyres_layout(SIZES[b], PINS, tile_size=24, patch_size=6)
        tiles = hf.inputs["pixel_values"][b, : lay.num_tiles]
        with torch.no_grad():
            attn = hf.model.model.vision_tower(tiles, output_attentions=True).attentions[1]
        cls = attn[:, :, 0, 1:].mean(1).numpy().reshape(-1)  # [tiles * 16]
        src = lay.pack_index()
        want = set(np.flatnonzero(src < 0))
        base = np.arange(16)
        grid = np.flatnonzero(src >= 0)[16:]
        for pos in (base, grid):
            k = round(0.5 * pos.size)
            order = np.argsort(-cls[src[pos]], kind="stable")[:k]
            want |= set(pos[order])
        np.testing.assert_array_equal(np.asarray(kept[b]), sorted(want))
    # the tokens that enter the LLM are the unpruned packed tokens at those positions
    full, _ = tokens_of(hf.ours, pixels[1:], sizes=sizes[1:])
    np.testing.assert_allclose(tokens[1], full[0][np.asarray(kept[1])], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(VLM_SELECT_METHODS) - {"none"}))
def test_every_pre_llm_method_runs(hf, method):
    pixels, sizes, prefix, question = _ours_inputs(hf, [0, 1])
    select = VisualSelect(method, keep=0.25)
    out = forward(
        hf.ours, pixels, prefix, question, sizes=sizes, select=select, key=jax.random.key(0)
    )
    kept = np.asarray(out.visual_kept)
    for b in range(2):
        lay = anyres_layout(SIZES[b], PINS, tile_size=24, patch_size=6)
        rows, cols = lay.grid
        n = round(0.25 * 16) + round(0.25 * rows * cols) + rows
        row = kept[b][kept[b] >= 0]
        assert row.size == n and np.all(np.diff(row) > 0)
        assert set(np.flatnonzero(lay.pack_index() < 0)) <= set(row)  # newlines kept
    assert np.all(np.isfinite(np.asarray(out.logits)[np.asarray(out.attention_mask)]))


@pytest.mark.slow
def test_int_budget_splits_between_base_and_grid(hf):
    pixels, sizes, prefix, question = _ours_inputs(hf, [1])
    out = hf.ours(pixels, sizes, prefix, question, select=VisualSelect("topk", keep=10))
    lay = anyres_layout(SIZES[1], PINS, tile_size=24, patch_size=6)
    assert out.visual_kept.shape == (1, 10 + lay.grid[0])
    with pytest.raises(ValueError, match="keep"):
        hf.ours(pixels, sizes, prefix, question, select=VisualSelect("topk", keep=500))


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda p, n: FastVSpec(start=p, stop=p + n, layer=1),
        lambda p, n: FeatherSpec(
            start=p, stop=p + n, grid=(1, n), layers=(1, 2), ratios=(0.5, 0.25)
        ),
        lambda p, n: TodreSpec(start=p, stop=p + n, layer=1),
    ],
)
def test_in_llm_specs_run_over_the_image_span(hf, make):
    pixels, sizes, prefix, question = _ours_inputs(hf, [0, 1])
    plain = forward(hf.ours, pixels, prefix, question, sizes=sizes, padding="image")
    n_max = plain.visual_kept.shape[1]
    spec = make(len(PREFIX), n_max)
    out = forward(hf.ours, pixels, prefix, question, sizes=sizes, prune=spec, padding="image")
    assert out.logits.shape[0] == 2
    assert np.all(np.isfinite(np.asarray(out.logits[:, -1])))
    with pytest.raises(ValueError, match="padding='image'"):
        hf.ours(pixels, sizes, prefix, question, prune=spec)
    with pytest.raises(ValueError, match="image span"):
        hf.ours(pixels, sizes, prefix, question, prune=make(0, n_max), padding="image")


@pytest.mark.slow
def test_pre_llm_selection_combined_with_fastv(hf):
    pixels, sizes, prefix, question = _ours_inputs(hf, [0])
    select = VisualSelect("divprune", keep=0.5)
    first = forward(hf.ours, pixels, prefix, question, sizes=sizes, select=select)
    k = first.visual_kept.shape[1]
    spec = FastVSpec(start=len(PREFIX), stop=len(PREFIX) + k, layer=1)
    out = forward(hf.ours, pixels, prefix, question, sizes=sizes, select=select, prune=spec)
    assert out.llm.kept.shape == (1, len(PREFIX) + spec.num_keep + len(QUESTION))


# ------------------------------------------------------------------------------ configs


def _vit(**kw):
    base = dict(image_size=24, patch_size=6, hidden_size=16, num_layers=2, num_heads=2,
                mlp_dim=32, num_classes=0)  # fmt: skip
    return ViTConfig(**{**base, **kw})


@pytest.mark.slow
def test_full_strategy_needs_a_tower_without_cls():
    llm = llm_config("tiny", num_layers=1, vocab_size=32)
    with pytest.raises(ValueError, match="prefix token"):
        LlavaNextConfig(VLMConfig(_vit(), llm, feature_select="full"), PINS)
    cfg = LlavaNextConfig(
        VLMConfig(_vit(class_token=False, pool="mean"), llm, feature_select="full"), PINS
    )
    model = LlavaNext(cfg, rngs=nnx.Rngs(0))
    out = model(jnp.ones((1, 5, 24, 24, 3)), [(30, 50)], select=VisualSelect("topk", keep=0.5))
    lay = cfg.layout((30, 50))
    assert out.visual_kept.shape == (1, 8 + round(0.5 * lay.grid[0] * lay.grid[1]) + lay.grid[0])


def test_argument_errors():
    llm = llm_config("tiny", num_layers=1, vocab_size=32)
    with pytest.raises(ValueError, match="square"):
        LlavaNextConfig(VLMConfig(_vit(image_size=(24, 48)), llm), PINS)
    cfg = LlavaNextConfig(VLMConfig(_vit(), llm), PINS)
    model = nnx.eval_shape(lambda: LlavaNext(cfg, rngs=nnx.Rngs(0)))  # errors come first
    with pytest.raises(ValueError, match="pixel_values"):
        model(jnp.ones((1, 5, 3, 24, 24)), [(30, 50)])
    with pytest.raises(ValueError, match="tiles"):
        model(jnp.ones((1, 2, 24, 24, 3)), [(30, 50)])
    with pytest.raises(ValueError, match="image_sizes"):
        model(jnp.ones((1, 5, 24, 24, 3)), [(30, 50), (3, 4)])
    with pytest.raises(ValueError, match="padding"):
        model(jnp.ones((1, 5, 24, 24, 3)), [(30, 50)], padding="right")
    with pytest.raises(ValueError, match="key"):
        model(jnp.ones((1, 5, 24, 24, 3)), [(30, 50)], select=VisualSelect("random", keep=0.5))
    with pytest.raises(ValueError, match="prefix_mask"):
        model(jnp.ones((1, 5, 24, 24, 3)), [(30, 50)], jnp.ones((1, 2), jnp.int32),
              prefix_mask=jnp.ones((1, 3), bool))  # fmt: skip
    with pytest.raises(ValueError, match="keep_positions"):
        model(jnp.ones((1, 5, 24, 24, 3)), [(30, 50)], select=VisualSelect(keep_positions=True))
