"""``load_vit`` on SigLIP vision towers against transformers' ``modeling_siglip.py``.

Tiny random ``SiglipVisionModel`` / ``SiglipModel`` / ``SiglipForImageClassification`` models
(float32, eager attention, every parameter redrawn so no bias or norm is trivially 0 or 1) are
saved with ``save_pretrained`` and loaded with ``load_vit``: the last hidden state, every hidden
state, every attention map, the MAP head's ``pooler_output`` and the classifier logits must
match. Token pruning on the CLS-less tower is checked against the PyTorch encoder layers run
on the kept tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models.vit import PruneStage, PruningPlan, ViT, ViTOutput, load_vit

TOL = 1e-4
SIZES = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tr(torch):
    return pytest.importorskip("transformers")


@nnx.jit
def forward(model: ViT, x: jax.Array) -> ViTOutput:
    return model(x, return_attention=True, return_hidden_states=True)


def perturb(torch, model, seed: int = 0, std: float = 0.2):
    """Redraws every parameter: LayerNorm scales ~ 1 + N(0, std^2), the rest ~ N(0, std^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                noise = std * torch.randn(p.shape, generator=gen)
                is_scale = isinstance(module, torch.nn.LayerNorm) and name == "weight"
                p.copy_(noise + 1.0 if is_scale else noise)
    return model.eval()


def pixels(torch, seed: int = 1):
    return torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


def nhwc(x) -> jax.Array:
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def vision_config(tr, **kw):
    return tr.SiglipVisionConfig(**{**SIZES, **kw}, attn_implementation="eager")


def full_config(tr, **kw):
    text = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=64,
        max_position_embeddings=8,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    config = tr.SiglipConfig(text_config=text, vision_config=SIZES, **kw)
    config.vision_config._attn_implementation = "eager"
    return config


def compare(torch, hf_vision, ours: ViT, x) -> dict[str, float]:
    """Max |difference| of every output the two towers share."""
    with torch.no_grad():
        ref = hf_vision(pixel_values=x, output_hidden_states=True, output_attentions=True)
    out = forward(ours, nhwc(x))
    diff = lambda a, b: float(np.abs(a.numpy() - np.asarray(b)).max())
    worst = lambda xs, ys: max(diff(a, b) for a, b in zip(xs, ys, strict=True))
    n = ours.config.num_layers
    assert len(ref.hidden_states) == len(out.hidden_states) == n + 1
    assert len(ref.attentions) == len(out.attentions) == n
    d = {
        "last_hidden_state": diff(ref.last_hidden_state, out.hidden),
        "hidden_states": worst(ref.hidden_states, out.hidden_states),
        "attentions": worst(ref.attentions, out.attentions),
    }
    if ref.pooler_output is not None:
        d["pooler_output"] = diff(ref.pooler_output, out.pooler_output)
    else:
        assert out.pooler_output is None
    return d


@pytest.fixture(scope="module")
def saved(torch, tr, tmp_path_factory):
    """A perturbed SiglipVisionModel with its MAP head, and its save_pretrained directory."""
    path = tmp_path_factory.mktemp("siglip_vision")
    hf = perturb(torch, tr.SiglipVisionModel(vision_config(tr)))
    hf.save_pretrained(path)
    return hf, path


@pytest.mark.parametrize("use_head", [True, False])
def test_siglip_vision_model_matches_transformers(torch, tr, tmp_path, saved, use_head):
    if use_head:
        hf, path = saved
    else:
        hf = perturb(torch, tr.SiglipVisionModel(vision_config(tr, vision_use_head=False)))
        hf.save_pretrained(path := tmp_path)
    ours = load_vit(path)
    c = ours.config
    assert (c.class_token, c.num_prefix, c.num_patches, c.map_head) == (False, 0, 16, use_head)
    assert (c.hidden_act, c.layer_norm_eps, c.patch_bias) == ("gelu_tanh", 1e-6, True)
    assert c.pool == "mean" and c.final_norm == "all" and not c.pre_norm
    d = compare(torch, hf, ours, pixels(torch))
    print(f"SiglipVisionModel(vision_use_head={use_head}): {d}")
    assert ("pooler_output" in d) == use_head
    assert max(d.values()) < TOL, d


def test_siglip_model_loads_its_vision_tower(torch, tr, tmp_path):
    hf = perturb(torch, tr.SiglipModel(full_config(tr)))
    hf.save_pretrained(tmp_path)
    ours = load_vit(tmp_path)  # text_model.*, logit_scale / logit_bias ignored
    assert ours.config.map_head and ours.config.num_classes == 0
    d = compare(torch, hf.vision_model, ours, pixels(torch, 2))
    print(f"SiglipModel: {d}")
    assert set(d) == {"last_hidden_state", "hidden_states", "attentions", "pooler_output"}
    assert max(d.values()) < TOL, d


def test_siglip_for_image_classification(torch, tr, tmp_path):
    hf = perturb(torch, tr.SiglipForImageClassification(full_config(tr, num_labels=5)))
    hf.save_pretrained(tmp_path)
    ours = load_vit(tmp_path)
    assert ours.config.num_classes == 5 and ours.config.pool == "mean"
    x = pixels(torch, 3)
    with torch.no_grad():
        want = hf(pixel_values=x).logits.numpy()
    got = np.asarray(forward(ours, nhwc(x)).logits)
    err = float(np.abs(got - want).max())
    print(f"SiglipForImageClassification logits: {err:.2e}")
    assert err < TOL


def test_pre_v5_vision_model_prefix(torch, tr, tmp_path):
    """transformers < 5 wrapped SiglipVisionModel's tower as ``vision_model.``: both load."""
    st = pytest.importorskip("safetensors.numpy")
    hf = perturb(torch, tr.SiglipVisionModel(vision_config(tr, vision_use_head=False)))
    hf.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    st.save_file({f"vision_model.{k}": v for k, v in st.load_file(file).items()}, file)
    d = compare(torch, hf, load_vit(tmp_path), pixels(torch, 4))
    assert max(d.values()) < TOL, d


def _write_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_bad_siglip_configs_are_refused(torch, tr, tmp_path):
    tr.SiglipVisionModel(vision_config(tr)).save_pretrained(tmp_path)
    _write_config(tmp_path, vision_use_head="yes")
    with pytest.raises(ValueError, match="vision_use_head"):
        load_vit(tmp_path)
    _write_config(tmp_path, vision_use_head=True, hidden_act="tanh")
    with pytest.raises(ValueError, match="hidden_act 'tanh'"):
        load_vit(tmp_path)
    _write_config(tmp_path, hidden_act="gelu_pytorch_tanh", some_new_field=3)
    with pytest.raises(ValueError, match="some_new_field"):
        load_vit(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ValueError, match="'vision_config' object"):
        load_vit(tmp_path)


# ------------------------------------------------------------------------ token pruning


def _layer_out(layer, h):
    out = layer(h, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


def test_received_attention_topk_on_siglip(torch, saved):
    """With no CLS token, ``topk`` ranks patches by the attention they receive (column means of
    block 0's probabilities over heads and queries). Oracle: HF's attention picks the tokens,
    then HF's encoder layers 1.., post_layernorm and MAP head run on the kept ones."""
    hf, path = saved
    ours = load_vit(path)
    x, k = pixels(torch, 5), 6
    plan = PruningPlan.at(1, k, "topk")
    out = ours(nhwc(x), plan=plan)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True, output_attentions=True)
        received = ref.attentions[0].mean(dim=(1, 2))  # [B, N]
        idx = torch.sort(torch.topk(received, k, dim=1).indices, dim=1).values
        np.testing.assert_array_equal(np.asarray(out.kept[0]), idx.numpy())
        h = torch.gather(ref.hidden_states[1], 1, idx[..., None].expand(-1, -1, 32))
        for layer in hf.encoder.layers[1:]:
            h = _layer_out(layer, h)
        h = hf.post_layernorm(h)
        pooled = hf.head(h)
    assert float(np.abs(np.asarray(out.hidden) - h.numpy()).max()) < TOL
    assert float(np.abs(np.asarray(out.pooler_output) - pooled.numpy()).max()) < TOL


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(PruningPlan.at(1, 0.5, "evit"), id="evit"),
        pytest.param(
            PruningPlan.tome(4, num_layers=3, num_patches=16, num_prefix=0),
            id="tome",
            marks=pytest.mark.slow,
        ),
        pytest.param(PruningPlan.at(2, 0.5, "hiprune"), id="hiprune", marks=pytest.mark.slow),
        pytest.param(
            PruningPlan((PruneStage(layer=1, keep=10, method="divprune"),)),
            id="divprune",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_plans_run_on_siglip(torch, saved, plan):
    ours = load_vit(saved[1])
    out = ours(nhwc(pixels(torch, 6)), plan=plan)
    n = plan.token_counts(16)[-1]
    assert out.hidden.shape == (2, n, 32) and out.pooler_output.shape == (2, 32)
    assert bool(jnp.all(jnp.isfinite(out.pooler_output)))
    # merging and fusing keep every patch's mass; selectors drop the rest
    total = 16.0 if plan.stages[0].method in ("tome", "evit") else float(n)
    np.testing.assert_allclose(np.asarray(out.sizes.sum(axis=1)), total, rtol=1e-6)
