"""pruneax.models.load_vit against transformers: tiny random ViT / DeiT / CLIP models saved with
``save_pretrained`` must give the same logits, hidden states and attention probabilities; the
NumPy safetensors reader against the ``safetensors`` package; and clear errors for missing,
corrupt or unsupported checkpoints.

Every parameter of the PyTorch models is redrawn (LayerNorm scales 1 + N(0, 0.2^2), all else
N(0, 0.2^2)), so no bias or norm parameter is trivially 0 or 1 and a mapping mistake shows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.models import read_checkpoint, read_safetensors

st_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-4
SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
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
def forward(model: M.ViT, x: jax.Array) -> M.ViTOutput:
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


def pixels(torch, shape=(2, 3, 32, 32), seed: int = 1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def max_diffs(torch, hf_model, ours: M.ViT, x) -> dict[str, float]:
    """Max |difference| of every output the two models share."""
    with torch.no_grad():
        ref = hf_model(pixel_values=x, output_hidden_states=True, output_attentions=True)
    out = forward(ours, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    diff = lambda a, b: float(np.abs(a.numpy() - np.asarray(b)).max())
    assert len(ref.hidden_states) == len(out.hidden_states) == ours.config.num_layers + 1
    assert len(ref.attentions) == len(out.attentions) == ours.config.num_layers
    d = {
        "hidden_states": max(
            diff(a, b) for a, b in zip(ref.hidden_states, out.hidden_states, strict=True)
        ),
        "attentions": max(diff(a, b) for a, b in zip(ref.attentions, out.attentions, strict=True)),
    }
    if getattr(ref, "logits", None) is not None:
        d["logits"] = diff(ref.logits, out.logits)
    if getattr(ref, "last_hidden_state", None) is not None:
        d["last_hidden_state"] = diff(ref.last_hidden_state, out.hidden)
    if getattr(ref, "pooler_output", None) is not None:
        # HF ViT's pooler is ViTOutput.pooler_output; CLIP's pooled CLS is ViTOutput.pooled
        ours_pool = out.pooled if ours.config.final_norm == "pooled" else out.pooler_output
        d["pooler_output"] = diff(ref.pooler_output, ours_pool)
    if getattr(ref, "image_embeds", None) is not None:
        # CLIPVisionModelWithProjection: the projection (not loaded) of our pooled CLS
        proj = hf_model.visual_projection.weight.detach().numpy()
        d["image_embeds"] = diff(ref.image_embeds, np.asarray(out.pooled) @ proj.T)
    return d


def vit_config(tr, **kw):
    return tr.ViTConfig(**{**SIZES, **kw}, attn_implementation="eager")


def deit_config(tr, **kw):
    return tr.DeiTConfig(**{**SIZES, **kw}, attn_implementation="eager")


def clip_vision_config(tr, **kw):
    return tr.CLIPVisionConfig(**{**SIZES, **kw}, attn_implementation="eager")


def clip_full(tr):
    text = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=99,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    config = tr.CLIPConfig(text_config=text, vision_config=SIZES, projection_dim=16)
    config.vision_config._attn_implementation = "eager"
    return tr.CLIPModel(config)


# name -> (builder, expected ViTConfig fields, image shape NCHW)
CASES = {
    "ViTModel+pooler": (
        lambda tr: tr.ViTModel(vit_config(tr)),
        dict(pooler=True, num_classes=0, layer_norm_eps=1e-12),
    ),
    "ViTModel": (
        lambda tr: tr.ViTModel(vit_config(tr), add_pooling_layer=False),
        dict(pooler=False, num_classes=0),
    ),
    "ViTForImageClassification": (
        lambda tr: tr.ViTForImageClassification(vit_config(tr, num_labels=5)),
        dict(num_classes=5, pool="cls"),
    ),
    "ViTForImageClassification-rect-tanh-noqkvbias": (
        lambda tr: tr.ViTForImageClassification(
            vit_config(
                tr,
                num_labels=3,
                image_size=[32, 48],
                qkv_bias=False,
                hidden_act="gelu_pytorch_tanh",
                layer_norm_eps=1e-6,
            )
        ),
        dict(image_size=(32, 48), qkv_bias=False, hidden_act="gelu_tanh", layer_norm_eps=1e-6),
    ),
    "DeiTModel+pooler": (
        lambda tr: tr.DeiTModel(deit_config(tr)),
        dict(distillation_token=True, pooler=True, num_classes=0),
    ),
    "DeiTForImageClassification": (
        lambda tr: tr.DeiTForImageClassification(deit_config(tr, num_labels=5)),
        dict(distillation_token=True, num_classes=5, pool="cls"),
    ),
    "DeiTForImageClassificationWithTeacher": (
        lambda tr: tr.DeiTForImageClassificationWithTeacher(deit_config(tr, num_labels=5)),
        dict(distillation_token=True, num_classes=5, pool="cls_dist"),
    ),
    "CLIPVisionModel": (
        lambda tr: tr.CLIPVisionModel(clip_vision_config(tr)),
        dict(pre_norm=True, final_norm="pooled", patch_bias=False, hidden_act="quick_gelu"),
    ),
    "CLIPVisionModelWithProjection": (
        lambda tr: tr.CLIPVisionModelWithProjection(clip_vision_config(tr, projection_dim=16)),
        dict(pre_norm=True, final_norm="pooled", layer_norm_eps=1e-5),
    ),
    "CLIPModel": (clip_full, dict(pre_norm=True, final_norm="pooled", num_classes=0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers(torch, tr, tmp_path, name):
    build, fields = CASES[name]
    hf_model = perturb(torch, build(tr))
    hf_model.save_pretrained(tmp_path)
    ours = M.load_vit(tmp_path)
    for field, value in fields.items():
        assert getattr(ours.config, field) == value, field
    vision = hf_model.vision_model if name == "CLIPModel" else hf_model
    h, w = ours.config.image_hw
    diffs = max_diffs(torch, vision, ours, pixels(torch, (2, 3, h, w)))
    print(f"{name}: {diffs}")
    expected = {"hidden_states", "attentions"}
    assert expected <= set(diffs)
    if "Classification" in name:
        assert "logits" in diffs
    if "pooler" in name or name in ("CLIPVisionModel", "CLIPModel"):
        assert "pooler_output" in diffs
    if "Projection" in name:
        assert "image_embeds" in diffs
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize(
    "name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"]
)
def test_transformers5_layout_loads(torch, tr, tmp_path, name):
    """``save_pretrained(save_original_format=False)``: ``layers.{i}.attention.q_proj`` names."""
    hf_model = perturb(torch, CASES[name][0](tr), seed=3)
    hf_model.save_pretrained(tmp_path, save_original_format=False)
    keys = read_checkpoint(tmp_path)
    assert any(".layers.0.attention.q_proj." in k for k in keys), sorted(keys)[:5]
    diffs = max_diffs(torch, hf_model, M.load_vit(tmp_path), pixels(torch))
    assert max(diffs.values()) < TOL, diffs


def test_sharded_checkpoint(torch, tr, tmp_path):
    hf_model = perturb(torch, CASES["ViTForImageClassification"][0](tr), seed=4)
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    diffs = max_diffs(torch, hf_model, M.load_vit(tmp_path), pixels(torch))
    assert max(diffs.values()) < TOL, diffs


def test_bfloat16_checkpoint(torch, tr, tmp_path):
    hf_model = perturb(torch, CASES["CLIPVisionModel"][0](tr), seed=5)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path)
    stored = read_checkpoint(tmp_path)
    assert {a.dtype for a in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert M.load_vit(tmp_path).blocks[0].attn.query.kernel.dtype == jnp.bfloat16  # "auto"
    ours = M.load_vit(tmp_path, dtype=jnp.float32)
    assert ours.blocks[0].attn.query.kernel.dtype == jnp.float32
    # the bf16 weights, computed in float32 on both sides
    diffs = max_diffs(torch, hf_model.to(torch.float32), ours, pixels(torch))
    assert max(diffs.values()) < TOL, diffs


def test_vit_b16_real_config(torch, tr, tmp_path):
    """ViT-B/16 at 224 with 1000 labels, random weights (about 12 s on 2 cores)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    hf_model = tr.ViTForImageClassification(
        tr.ViTConfig(num_labels=1000, attn_implementation="eager")
    )
    perturb(torch, hf_model, std=0.02)
    hf_model.save_pretrained(tmp_path)
    ours = M.load_vit(tmp_path)
    assert ours.config == M.vit_config("B/16", layer_norm_eps=1e-12)
    diffs = max_diffs(torch, hf_model, ours, pixels(torch, (1, 3, 224, 224)))
    print(f"ViT-B/16: {diffs}, {time.perf_counter() - start:.1f} s")
    assert max(diffs.values()) < TOL, diffs


# ------------------------------------------------------------------------------ errors


@pytest.fixture
def saved(torch, tr, tmp_path) -> Path:
    """A tiny ViTForImageClassification checkpoint directory."""
    perturb(torch, CASES["ViTForImageClassification"][0](tr)).save_pretrained(tmp_path)
    return tmp_path


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = {k: np.array(v) for k, v in read_safetensors(file).items()}
    edit(tensors)
    st_numpy.save_file(tensors, file, metadata={"format": "pt"})


def test_missing_directory_and_config(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        M.load_vit(tmp_path / "nowhere")
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in"):
        M.load_vit(saved)


def test_pytorch_bin_only_says_how_to_fix(torch, saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors or .*index.json"):
        M.load_vit(saved)
    torch.save({"w": torch.zeros(2)}, saved / "pytorch_model.bin")
    match = r"found only \['pytorch_model.bin'\].*save_pretrained"
    with pytest.raises(FileNotFoundError, match=match):
        M.load_vit(saved)


def test_unsupported_config(saved):
    _edit_config(saved, model_type="bert")
    with pytest.raises(ValueError, match=r"'bert'.*supported: \['vit', 'deit', 'clip_vision"):
        M.load_vit(saved)
    _edit_config(saved, model_type="vit", hidden_act="silu")
    with pytest.raises(ValueError, match="hidden_act 'silu' is not supported"):
        M.load_vit(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        M.load_vit(saved)


def test_missing_tensor_is_named(saved):
    _edit_tensors(saved, lambda t: t.pop("vit.encoder.layer.1.output.dense.bias"))
    with pytest.raises(ValueError, match=r"missing.*'vit.encoder.layer.1.output.dense.bias'"):
        M.load_vit(saved)


def test_unused_tensor_is_named(saved):
    def add(t):
        t["vit.encoder.layer.2.output.dense.bias"] = np.zeros(32, np.float32)

    _edit_tensors(saved, add)
    with pytest.raises(ValueError, match=r"does not use: \['vit.encoder.layer.2.output"):
        M.load_vit(saved)


def test_wrong_shape_is_named(saved):
    _edit_config(saved, num_labels=4, id2label={str(i): str(i) for i in range(4)})
    match = r"wrong shape.*classifier.weight: \[5, 32\], expected \[4, 32\]"
    with pytest.raises(ValueError, match=match):
        M.load_vit(saved)


def test_truncated_file(saved):
    file = saved / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        M.load_vit(saved)


# ------------------------------------------------------------------------------ reader


def test_reader_matches_safetensors_numpy(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f64": rng.normal(size=(3, 4)),
        "f32": rng.normal(size=(2, 3, 5)).astype(np.float32),
        "f16": rng.normal(size=(7,)).astype(np.float16),
        "i64": rng.integers(-(2**40), 2**40, size=(4, 2)),
        "i32": rng.integers(-1000, 1000, size=(5,)).astype(np.int32),
        "i16": rng.integers(-1000, 1000, size=(3,)).astype(np.int16),
        "i8": rng.integers(-100, 100, size=(3,)).astype(np.int8),
        "u8": rng.integers(0, 255, size=(2, 2)).astype(np.uint8),
        "bool": rng.random((3, 3)) > 0.5,
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    file = tmp_path / "x.safetensors"
    st_numpy.save_file(arrays, file, metadata={"format": "np", "note": "test"})
    ours = read_safetensors(file)
    theirs = st_numpy.load_file(file)
    assert set(ours) == set(theirs) == set(arrays)
    for name, want in theirs.items():
        assert ours[name].dtype == want.dtype, name
        assert ours[name].shape == want.shape, name
        np.testing.assert_array_equal(ours[name], want)
        np.testing.assert_array_equal(ours[name], arrays[name])


def test_reader_bfloat16_matches_safetensors_torch(torch, tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    tensors = {
        "bf16": torch.randn(4, 3).to(torch.bfloat16),
        "f16": torch.randn(5).to(torch.float16),
        "f32": torch.randn(2, 2),
    }
    file = tmp_path / "t.safetensors"
    st_torch.save_file(tensors, file)
    ours = read_safetensors(file)
    assert ours["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    bits = tensors["bf16"].view(torch.int16).numpy()
    np.testing.assert_array_equal(ours["bf16"].view(np.int16), bits)
    np.testing.assert_array_equal(ours["bf16"].astype(np.float32), tensors["bf16"].float().numpy())
    np.testing.assert_array_equal(ours["f16"], tensors["f16"].numpy())
    np.testing.assert_array_equal(ours["f32"], tensors["f32"].numpy())


def _write_raw(path: Path, header: dict | bytes, data: bytes = b"") -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize(
    "header, data, match",
    [
        (None, b"", "expected an 8-byte header length"),
        (b"{", b"", "corrupt JSON header"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "malformed header entry"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "'Q4'"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "12 bytes"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
    ],
)
def test_reader_rejects_corrupt_files(tmp_path, header, data, match):
    file = tmp_path / "bad.safetensors"
    if header is None:
        file.write_bytes(b"\1\2")
    else:
        _write_raw(file, header, data)
    with pytest.raises(ValueError, match=match):
        read_safetensors(file)


def test_reader_rejects_oversized_header(tmp_path):
    file = tmp_path / "bad.safetensors"
    file.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header length 1000000 but only 2 bytes follow"):
        read_safetensors(file)
    with pytest.raises(FileNotFoundError, match="no file"):
        read_safetensors(tmp_path / "absent.safetensors")


def test_sharded_reader(tmp_path):
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    b = {"y": np.ones(4, np.int64), "z": np.zeros((), np.float16)}
    st_numpy.save_file(a, tmp_path / "model-00001-of-00002.safetensors")
    st_numpy.save_file(b, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"x": "model-00001-of-00002.safetensors"}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in b}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    got = read_checkpoint(tmp_path)
    assert set(got) == {"x", "y", "z"}
    np.testing.assert_array_equal(got["x"], a["x"])
    index.write_text(json.dumps({"weight_map": {**weight_map, "w": weight_map["x"]}}))
    with pytest.raises(ValueError, match=r"absent from their shards: \['w'\]"):
        read_checkpoint(tmp_path)
    index.write_text(json.dumps({"weight_map": {"x": "model-00009.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"lists shard 'model-00009\.safetensors'"):
        read_checkpoint(tmp_path)
    index.write_text(json.dumps({"shards": []}))
    with pytest.raises(ValueError, match="'weight_map'"):
        read_checkpoint(tmp_path)
