"""lucidrains' ``vit-pytorch`` ViT in pruneax: the torch-free ``torch.save`` reader, the
non-default head width and ReLU MLP of ``ViTConfig``, and ``load_lucidrains_vit``.

Oracles: ``torch.load`` for the reader; a float64 PyTorch transcription of lucidrains' PreNorm
ViT forward (written here from ``vit_pytorch/vit.py`` as documented in the checkpoint's
README) on random weights of that layout and on the real MNIST checkpoint; analytic counts for
the FLOPs and parameters.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.models.vit import PruningPlan, ViT, ViTConfig, block_flops, load_lucidrains_vit

torch = pytest.importorskip("torch")
F = torch.nn.functional

DATA = Path(os.environ.get("PRUNEAX_DATA", "/work/shared/data"))
REAL = DATA / "pretrained" / "vit-mnist-lucidrains" / "vit_mnist_gpu.pt"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="the pretrained checkpoint is absent")


# ------------------------------------------------------------------------------ the oracle


def lucid_forward(sd, img, *, heads, patch, act=F.relu, keep_at=None, keep=None):
    """lucidrains' PreNorm ViT forward in float64 torch; NCHW ``img``.

    Returns (logits, per-block attention [B, H, T, T], kept patch ids or None). With
    ``keep_at=L`` and ``keep=k``, before block L the k patch tokens of highest CLS attention
    (mean over heads) of block L-1 are kept, in their original order (FasterVLM / EViT top-k).
    """
    sd = {k: v.double() for k, v in sd.items()}
    b, c, h, w = img.shape
    p = patch
    x = img.double().reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)  # (p1 p2 c) per patch, patches row-major
    x = F.linear(x, sd["to_patch_embedding.1.weight"], sd["to_patch_embedding.1.bias"])
    d = x.shape[-1]
    x = torch.cat([sd["cls_token"].expand(b, 1, d), x], 1)
    x = x + sd["pos_embedding"][:, : x.shape[1]]
    attns, kept = [], None
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.layers."))
    for i in range(depth):
        if keep_at == i:
            row = attns[-1][:, :, 0, 1:].mean(1)  # [B, N] CLS -> patches
            kept = torch.sort(torch.topk(row, keep, dim=-1).indices, dim=-1).values
            x = torch.cat(
                [x[:, :1], torch.gather(x[:, 1:], 1, kept[..., None].expand(-1, -1, d))], 1
            )
        pre = f"transformer.layers.{i}."
        t = x.shape[1]
        y = F.layer_norm(x, (d,), sd[pre + "0.norm.weight"], sd[pre + "0.norm.bias"], 1e-5)
        q, k, v = F.linear(y, sd[pre + "0.fn.to_qkv.weight"]).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, heads, -1).transpose(1, 2) for z in (q, k, v))
        a = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        attns.append(a)
        o = (a @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + F.linear(o, sd[pre + "0.fn.to_out.0.weight"], sd[pre + "0.fn.to_out.0.bias"])
        y = F.layer_norm(x, (d,), sd[pre + "1.norm.weight"], sd[pre + "1.norm.bias"], 1e-5)
        y = act(F.linear(y, sd[pre + "1.fn.net.0.weight"], sd[pre + "1.fn.net.0.bias"]))
        x = x + F.linear(y, sd[pre + "1.fn.net.3.weight"], sd[pre + "1.fn.net.3.bias"])
    cls = F.layer_norm(x[:, 0], (d,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], 1e-5)
    return F.linear(cls, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"]), attns, kept


def random_lucid_sd(*, d, heads, dim_head, mlp, depth, classes, patch, channels, n, seed=0):
    """A random state dict of lucidrains' PreNorm ViT layout (every tensor non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=0.3: torch.randn(*s, generator=g) * scale
    inner = heads * dim_head
    sd = {
        "pos_embedding": r(1, n + 1, d),
        "cls_token": r(1, 1, d),
        "to_patch_embedding.1.weight": r(d, patch * patch * channels),
        "to_patch_embedding.1.bias": r(d),
    }
    for i in range(depth):
        pre = f"transformer.layers.{i}."
        sd |= {
            pre + "0.norm.weight": 1 + r(d),
            pre + "0.norm.bias": r(d),
            pre + "0.fn.to_qkv.weight": r(3 * inner, d),
            pre + "0.fn.to_out.0.weight": r(d, inner),
            pre + "0.fn.to_out.0.bias": r(d),
            pre + "1.norm.weight": 1 + r(d),
            pre + "1.norm.bias": r(d),
            pre + "1.fn.net.0.weight": r(mlp, d),
            pre + "1.fn.net.0.bias": r(mlp),
            pre + "1.fn.net.3.weight": r(d, mlp),
            pre + "1.fn.net.3.bias": r(d),
        }
    sd |= {
        "mlp_head.0.weight": 1 + r(d),
        "mlp_head.0.bias": r(d),
        "mlp_head.1.weight": r(classes, d),
        "mlp_head.1.bias": r(classes),
    }
    return sd


# (height, width), channels, patch, width, heads, head width (x heads != width), MLP, depth, K
SMALL = dict(hw=(12, 8), channels=3, patch=4, d=32, heads=2, dim_head=24, mlp=40, depth=2, k=5)


def small_sd(seed=0):
    s = SMALL
    n = (s["hw"][0] // s["patch"]) * (s["hw"][1] // s["patch"])
    return random_lucid_sd(
        d=s["d"], heads=s["heads"], dim_head=s["dim_head"], mlp=s["mlp"], depth=s["depth"],
        classes=s["k"], patch=s["patch"], channels=s["channels"], n=n, seed=seed,
    )  # fmt: skip


def load_small(path, **kw):
    s = SMALL
    return load_lucidrains_vit(
        path, num_heads=s["heads"], image_size=s["hw"], patch_size=s["patch"],
        num_channels=s["channels"], **kw,
    )  # fmt: skip


def images(b, seed=1):
    s = SMALL
    return np.random.default_rng(seed).normal(size=(b, s["channels"], *s["hw"])).astype(np.float32)


# ------------------------------------------------------------------------------ the reader


def _as_numpy(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy()
    return t.contiguous().numpy()


def _raw(a):
    return a.view(np.int16) if a.dtype.name == "bfloat16" else a


def test_reader_matches_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    lin = torch.nn.Linear(3, 2)
    sd = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 7, generator=g).bfloat16(),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "i32": torch.arange(6, dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "transposed": torch.randn(3, 5, generator=g).t(),  # a non-contiguous view
        "base": base,
        "slice": base[1:4, 3:7],  # offset 11, strides (8, 1), sharing base's storage
        "every_other": base[::2, 1::3],  # strides (16, 3)
        **{f"lin.{k}": v for k, v in lin.state_dict().items()},  # an OrderedDict's tensors
    }
    assert not sd["transposed"].is_contiguous() and sd["slice"].storage_offset() == 11
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    ref = torch.load(path, weights_only=True, map_location="cpu")
    got = M.read_torch_state_dict(path)
    assert list(got) == list(ref)
    for k, t in ref.items():
        assert got[k].shape == tuple(t.shape), k
        assert got[k].dtype == (
            np.dtype("bfloat16") if t.dtype == torch.bfloat16 else _as_numpy(t).dtype
        ), k
        np.testing.assert_array_equal(_raw(got[k]), _as_numpy(t), err_msg=k)
        assert got[k].flags.c_contiguous and got[k].flags.owndata, k
    # a module's own state_dict (an OrderedDict carrying _metadata)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    got = M.read_torch_state_dict(tmp_path / "net.pt")
    for k, t in net.state_dict().items():
        np.testing.assert_array_equal(got[k], t.numpy())


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_reader_refuses_other_globals_without_running_them(tmp_path):
    target = tmp_path / "created_by_pickle"
    torch.save({"w": torch.ones(2), "evil": _Evil(target)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"needs (posix|nt|os)\.mkdir.*refused"):
        M.read_torch_state_dict(tmp_path / "evil.pt")
    assert not target.exists()
    torch.save({"p": torch.nn.Parameter(torch.ones(2))}, tmp_path / "param.pt")
    with pytest.raises(ValueError, match=r"torch\._utils\._rebuild_parameter"):
        M.read_torch_state_dict(tmp_path / "param.pt")


def test_reader_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        M.read_torch_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"not a torch\.save zip archive"):
        M.read_torch_state_dict(tmp_path / "junk.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        M.read_torch_state_dict(tmp_path / "list.pt")


# ------------------------------------------------------------------------------ the config


def test_config_head_width_and_relu():
    cfg = ViTConfig(
        image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_layers=6, num_heads=4,
        mlp_dim=128, num_classes=10, attention_head_dim=64, hidden_act="relu", qkv_bias=False,
    )  # fmt: skip
    assert cfg.head_dim == 64
    # dataclasses.replace carries the field, not a resolved value
    assert dataclasses.replace(cfg, attention_head_dim=None).head_dim == 16
    assert dataclasses.replace(cfg, num_heads=2).head_dim == 64
    assert M.config_from_json(M.config_to_json(cfg)) == cfg
    # FLOPs with the real inner width 256: 8 T D (H hd) + 4 T^2 (H hd) + 4 T D M
    t, d, inner, m = 50, 64, 256, 128
    assert block_flops(cfg, 0, t, t) == 8 * t * d * inner + 4 * t * t * inner + 4 * t * d * m
    model = ViT(cfg, rngs=nnx.Rngs(0))
    assert model.blocks[0].attn.query.kernel.shape == (64, 256)
    assert M.config_param_count(cfg) == M.param_count(model)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ViTConfig(hidden_size=30, num_heads=4)
    ViTConfig(hidden_size=30, num_heads=4, attention_head_dim=8)  # fine with an explicit width
    with pytest.raises(ValueError, match="map_head"):
        ViTConfig(hidden_size=30, num_heads=4, attention_head_dim=8, map_head=True,
                  class_token=False, pool="mean")  # fmt: skip
    with pytest.raises(ValueError, match="attention_head_dim"):
        ViTConfig(attention_head_dim=0)
    with pytest.raises(ValueError, match="hidden_act"):
        ViTConfig(hidden_act="swish")


def test_structured_pruning_with_wide_heads():
    """Dropping a head of width 24 (inner 48 != D 32) equals zeroing its weights."""
    cfg = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_layers=2, num_heads=2,
        mlp_dim=16, num_classes=3, attention_head_dim=24, hidden_act="relu",
    )  # fmt: skip
    model = ViT(cfg, rngs=nnx.Rngs(3))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    small = M.prune_structured(model, M.StructuredKeep(heads=((1,), None)))
    assert small.config.heads_per_layer == (1, 2) and small.config.head_dim == 24
    assert M.config_param_count(small.config) == M.param_count(small)
    attn = model.blocks[0].attn
    for lin in (attn.query, attn.key, attn.value):
        lin.kernel[...] = lin.kernel[...].at[:, :24].set(0)
        lin.bias[...] = lin.bias[...].at[:24].set(0)
    attn.out.kernel[...] = attn.out.kernel[...].at[:24].set(0)
    np.testing.assert_allclose(small(x).logits, model(x).logits, atol=1e-5)


# ------------------------------------------------------------------------------ the loader


def test_patch_linear_is_the_patch_conv(tmp_path):
    sd = small_sd()
    torch.save(sd, tmp_path / "m.pt")
    model = load_small(tmp_path / "m.pt")
    img = images(2)
    s = SMALL
    p, c = s["patch"], s["channels"]
    b, _, h, w = img.shape
    flat = img.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
    flat = flat.reshape(b, -1, p * p * c)  # NumPy: the (p1 p2 c) flattening
    want = (
        flat @ sd["to_patch_embedding.1.weight"].numpy().T + sd["to_patch_embedding.1.bias"].numpy()
    )
    got = model.patch_embed(jnp.asarray(img.transpose(0, 2, 3, 1))).reshape(b, -1, s["d"])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_random_lucidrains_layout_matches_torch(tmp_path, act):
    sd = small_sd(seed=2)
    torch.save(sd, tmp_path / "m.pt")
    model = load_small(tmp_path / "m.pt", hidden_act=act)
    s = SMALL
    assert model.config.head_dim == s["dim_head"] and model.config.hidden_act == act
    img = images(3)
    ref, attns, _ = lucid_forward(
        sd, torch.from_numpy(img), heads=s["heads"], patch=s["patch"], act=getattr(F, act)
    )
    out = model(jnp.asarray(img.transpose(0, 2, 3, 1)), return_attention=True)
    diff = float(np.abs(np.asarray(out.logits) - ref.numpy()).max())
    assert diff < 2e-5, diff
    for a, r in zip(out.attentions, attns, strict=True):
        np.testing.assert_allclose(a, r.numpy(), atol=2e-6)


def test_loader_errors(tmp_path):
    sd = small_sd()
    bad = dict(sd)
    del bad["transformer.layers.1.1.fn.net.3.bias"]
    torch.save(bad, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing.*transformer\.layers\.1\.1\.fn\.net\.3\.bias"):
        load_small(tmp_path / "missing.pt")
    torch.save({**sd, "transformer.norm.weight": torch.ones(32)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected tensors.*transformer\.norm\.weight"):
        load_small(tmp_path / "extra.pt")
    wrong = {**sd, "transformer.layers.1.0.fn.to_out.0.weight": torch.ones(32, 40)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong shape.*layers\.1\.0\.fn\.to_out\.0\.weight"):
        load_small(tmp_path / "wrong.pt")
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="to_qkv"):  # 3 * 48 rows are not 3 * 5 * hd
        load_lucidrains_vit(tmp_path / "m.pt", num_heads=5, image_size=(12, 8), patch_size=4,
                            num_channels=3)  # fmt: skip
    with pytest.raises(ValueError, match="pos_embedding"):  # a 4 x 4 grid is not 6 + 1 tokens
        load_lucidrains_vit(tmp_path / "m.pt", num_heads=2, image_size=16, patch_size=4,
                            num_channels=3)  # fmt: skip
    with pytest.raises(ValueError, match="num_heads"):
        load_lucidrains_vit(tmp_path / "m.pt", num_heads=0, image_size=(12, 8), patch_size=4)
    with pytest.raises(ValueError, match="dtype"):
        load_small(tmp_path / "m.pt", dtype="float99")


def test_loader_dtypes(tmp_path):
    sd = {k: v.bfloat16() for k, v in small_sd().items()}
    torch.save(sd, tmp_path / "bf16.pt")
    model = load_small(tmp_path / "bf16.pt")
    assert model.blocks[0].attn.query.kernel.dtype == jnp.bfloat16
    model32 = load_small(tmp_path / "bf16.pt", dtype=jnp.float32)
    assert model32.blocks[0].attn.query.kernel.dtype == jnp.float32
    ref, _, _ = lucid_forward(sd, torch.from_numpy(images(2)), heads=2, patch=4)
    got = model32(jnp.asarray(images(2).transpose(0, 2, 3, 1))).logits
    np.testing.assert_allclose(got, ref.numpy(), atol=2e-5)


def test_topk_plan_on_lucidrains_layout(tmp_path):
    """A top-k stage before block 1 keeps the patches of highest CLS attention (the real
    softmax row of block 0, mean over heads) and computes the pruned forward."""
    sd = small_sd(seed=4)
    torch.save(sd, tmp_path / "m.pt")
    model = load_small(tmp_path / "m.pt")
    img = images(4, seed=5)
    ref, _, kept = lucid_forward(sd, torch.from_numpy(img), heads=2, patch=4, keep_at=1, keep=3)
    out = model(jnp.asarray(img.transpose(0, 2, 3, 1)), plan=PruningPlan.at(1, 3, "topk"))
    np.testing.assert_array_equal(out.kept[0], kept.numpy())
    np.testing.assert_allclose(out.logits, ref.numpy(), atol=2e-5)


# ------------------------------------------------------------------------------ the real file


def _mnist_test(n=None):
    from pruneax.data import load_mnist

    try:
        ds = load_mnist(DATA)
    except FileNotFoundError:
        pytest.skip("the MNIST data folder is absent")
    x, y = ds.test_images[:n], ds.test_labels[:n]
    return ((x.astype(np.float32) / 255 - 0.1307) / 0.3081)[..., None], y


def _real():
    return load_lucidrains_vit(REAL, num_heads=4, image_size=28, patch_size=4)


@needs_real
def test_real_checkpoint_matches_torch():
    model = _real()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.num_layers) == (
        64, 4, 64, 128, 6,
    )  # fmt: skip
    sd = torch.load(REAL, weights_only=True, map_location="cpu")
    x, _ = _mnist_test(16)
    ref, attns, _ = lucid_forward(sd, torch.from_numpy(x.transpose(0, 3, 1, 2)), heads=4, patch=4)
    out = model(jnp.asarray(x), return_attention=True)
    diff = float(np.abs(np.asarray(out.logits) - ref.numpy()).max())
    assert diff < 1e-4, diff  # logits of magnitude ~10
    assert (np.argmax(out.logits, -1) == ref.numpy().argmax(-1)).all()
    for a, r in zip(out.attentions, attns, strict=True):  # the CLS rows are the real softmax
        np.testing.assert_allclose(a[:, :, 0], r[:, :, 0].numpy(), atol=1e-5)


@needs_real
def test_real_checkpoint_token_pruning():
    model = _real()
    sd = torch.load(REAL, weights_only=True, map_location="cpu")
    x, _ = _mnist_test(8)
    for layer, k in ((2, 10),):  # pruning before block 2, as the observation
        ref, _, kept = lucid_forward(
            sd, torch.from_numpy(x.transpose(0, 3, 1, 2)), heads=4, patch=4, keep_at=layer, keep=k
        )
        out = model(jnp.asarray(x), plan=PruningPlan.at(layer, k, "topk"))
        np.testing.assert_array_equal(out.kept[0], kept.numpy())
        np.testing.assert_allclose(out.logits, ref.numpy(), atol=1e-4)
        assert out.hidden.shape == (8, 1 + k, 64)


@needs_real
@pytest.mark.slow
def test_real_checkpoint_mnist_accuracy():
    """The README's 97.21% on the 10,000 MNIST test images, reproduced exactly."""
    model = _real()
    x, y = _mnist_test()
    logits = nnx.jit(lambda m, x: m(x).logits)
    correct = sum(
        int(
            (
                np.argmax(np.asarray(logits(model, jnp.asarray(x[i : i + 1000]))), -1)
                == y[i : i + 1000]
            ).sum()
        )
        for i in range(0, len(y), 1000)
    )
    assert correct == 9721, correct
    assert math.isclose(correct / len(y), 0.9721)


def test_loader_mesh(tmp_path):
    """``mesh=`` places every parameter with its spec (a one-device ``model`` x ``fsdp`` mesh
    here; the layout rules are ``load_vit``'s)."""
    import jax

    torch.save(small_sd(), tmp_path / "m.pt")
    mesh = jax.make_mesh((1, 1), ("model", "fsdp"))
    model = load_small(tmp_path / "m.pt", mesh=mesh)
    specs = nnx.get_partition_spec(nnx.state(model))
    q = model.blocks[0].attn.query.kernel
    assert specs["blocks"][0]["attn"]["query"]["kernel"] == M.partition_spec(
        "blocks/0/attn/query/kernel", q.shape, mesh
    )
    assert q[...].sharding.mesh.shape == mesh.shape
    ref = load_small(tmp_path / "m.pt")
    x = jnp.asarray(images(2).transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model(x).logits, ref(x).logits, atol=1e-6)
    with pytest.raises(ValueError, match="mesh must be"):
        load_small(tmp_path / "m.pt", mesh="model")
