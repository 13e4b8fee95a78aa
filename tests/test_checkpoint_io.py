"""Checkpoint input / output: the safetensors writer, save_pruned / load_pruned in bfloat16,
hub ids, ``dtype="auto"`` and loading straight onto a device mesh (8 fake CPU devices, in a
subprocess because the device count is fixed when JAX starts)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.weights import leaf_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
BF16 = jnp.bfloat16


# ------------------------------------------------------------------------------ writer

DTYPES = [
    np.float64,
    np.float32,
    np.float16,
    ml_dtypes.bfloat16,
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e5m2,
    np.int64,
    np.int32,
    np.int16,
    np.int8,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


def test_writer_round_trips_every_dtype_through_the_reference_reader(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": (rng.normal(size=(3, i + 1)) * 4).astype(dt) for i, dt in enumerate(DTYPES)}
    tensors["scalar"] = np.float32(2.5)
    tensors["empty"] = np.zeros((0, 4), np.float32)
    path = M.write_safetensors(tmp_path / "a.safetensors", tensors, metadata={"k": "v"})
    ours = M.read_safetensors(path)
    assert list(ours) == list(tensors)
    for name, want in tensors.items():
        got = ours[name]
        assert got.dtype == np.asarray(want).dtype and got.shape == np.shape(want), name
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), name
    # the reference reader (the safetensors package) reads what we wrote ...
    from safetensors import safe_open  # its NumPy reader has no bfloat16 / float8

    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"k": "v"}
        for name in ("t0", "t1", "t2", "t6", "t14"):
            np.testing.assert_array_equal(f.get_tensor(name), tensors[name])
    # ... and we read what it writes
    safetensors_numpy.save_file({"x": tensors["t1"]}, str(tmp_path / "b.safetensors"))
    np.testing.assert_array_equal(
        M.read_safetensors(tmp_path / "b.safetensors")["x"], tensors["t1"]
    )


def test_writer_refuses_bad_input_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match=r"tensor 'c' has dtype complex64"):
        M.write_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="tensor name '__metadata__'"):
        M.write_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(2)})
    with pytest.raises(ValueError, match="metadata must be a mapping of str to str"):
        M.write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, metadata={"k": 1})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ save_pruned


def _bits(model):
    state = nnx.state(model)
    return {
        n: np.asarray(v) for n, v in zip(leaf_names(state), jax.tree.leaves(state), strict=True)
    }


@pytest.mark.parametrize("arch", ["vit", "llm"])
def test_bfloat16_pruned_model_round_trips_bit_for_bit(tmp_path, arch):
    if arch == "vit":
        cfg = M.vit_config("mnist/4", num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64)
        model = M.ViT(cfg, rngs=nnx.Rngs(0), dtype=BF16, param_dtype=BF16)
        model = M.prune_structured(model, M.StructuredKeep(mlp=((0, 5, 9), None)))
        x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
        run = lambda m: np.asarray(m(x).logits, np.float32)
    else:
        cfg = M.llm_config("tiny", num_layers=2)
        model = M.LlamaLM(cfg, rngs=nnx.Rngs(0), dtype=BF16, param_dtype=BF16)
        model = M.prune_structured(model, M.StructuredKeep(mlp=(tuple(range(40)), None)))
        ids = jax.random.randint(jax.random.key(1), (2, 7), 0, cfg.vocab_size)
        run = lambda m: np.asarray(m(ids).logits, np.float32)
    M.save_pruned(tmp_path / arch, model)
    assert sorted(p.name for p in (tmp_path / arch).iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    back = M.load_pruned(tmp_path / arch)
    assert back.config == model.config
    want, got = _bits(model), _bits(back)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype == np.dtype(BF16), name
        assert got[name].tobytes() == want[name].tobytes(), name
    np.testing.assert_array_equal(run(back), run(model))
    as_f32 = M.load_pruned(tmp_path / arch, dtype=jnp.float32)  # bf16 params, f32 compute
    assert jax.tree.leaves(nnx.state(as_f32))[0].dtype == np.dtype(BF16)


def test_directory_written_before_safetensors_still_loads(tmp_path):
    model = M.ViT(M.vit_config("mnist/4", num_layers=1), rngs=nnx.Rngs(0))
    (tmp_path / "config.json").write_text(M.config_to_json(model.config))
    np.savez(tmp_path / "variables.npz", **_bits(model))
    back = M.load_pruned(tmp_path)
    for name, value in _bits(model).items():
        np.testing.assert_array_equal(_bits(back)[name], value)
    (tmp_path / "variables.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        M.load_pruned(tmp_path)


# ------------------------------------------------------------------------------ hub ids, dtype


@pytest.fixture(scope="module")
def mamba_dirs(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MambaConfig(
        vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2
    )
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("mamba")
    model.save_pretrained(root / "f32")
    model.to(torch.bfloat16).save_pretrained(root / "bf16")
    return root


def _fake_hub_cache(cache: pathlib.Path, repo: str, files: pathlib.Path) -> None:
    """The layout ``snapshot_download`` leaves: refs/main -> a snapshot of symlinks to blobs."""
    base = cache / f"models--{repo.replace('/', '--')}"
    rev = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    snap = base / "snapshots" / rev
    (base / "blobs").mkdir()
    snap.mkdir(parents=True)
    for f in files.iterdir():
        blob = base / "blobs" / f"blob-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(blob)


def test_hub_id_resolves_from_the_cache_offline_and_names_the_id_otherwise(
    mamba_dirs, tmp_path, monkeypatch
):
    hub = pytest.importorskip("huggingface_hub")
    _fake_hub_cache(tmp_path, "someone/tiny-mamba", mamba_dirs / "f32")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    from_hub = M.load_mamba("someone/tiny-mamba")
    local = M.load_mamba(mamba_dirs / "f32")
    for name, value in _bits(local).items():
        np.testing.assert_array_equal(_bits(from_hub)[name], value)
    with pytest.raises(ValueError, match=r"load_mamba: hub id 'someone/other' could not be"):
        M.load_mamba("someone/other")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ValueError, match=r"'someone/tiny-mamba' .* needs the huggingface_hub"):
        M.load_mamba("someone/tiny-mamba")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        M.load_mamba(tmp_path / "absent")


def test_dtype_auto_keeps_the_checkpoint_dtype(mamba_dirs):
    bf = M.load_mamba(mamba_dirs / "bf16")
    assert {v.dtype for v in jax.tree.leaves(nnx.state(bf))} == {np.dtype(BF16)}
    assert M.load_mamba(mamba_dirs / "f32").config is not None
    f32 = M.load_mamba(mamba_dirs / "f32")
    assert {v.dtype for v in jax.tree.leaves(nnx.state(f32))} == {np.dtype(np.float32)}
    up = M.load_mamba(mamba_dirs / "bf16", dtype=jnp.float32)
    assert {v.dtype for v in jax.tree.leaves(nnx.state(up))} == {np.dtype(np.float32)}
    for name, value in _bits(bf).items():  # bf16 -> f32 is exact
        np.testing.assert_array_equal(_bits(up)[name], value.astype(np.float32))
    with pytest.raises(ValueError, match="load_mamba: dtype must be 'auto' or a floating dtype"):
        M.load_mamba(mamba_dirs / "f32", dtype="fp32")
    with pytest.raises(ValueError, match="load_mamba: param_dtype must be"):
        M.load_mamba(mamba_dirs / "f32", param_dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"load_mamba: mesh must be a jax\.sharding\.Mesh"):
        M.load_mamba(mamba_dirs / "f32", mesh="model")


# ------------------------------------------------------------------------------ mesh loading

SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    import pruneax.models as M
    from pruneax.weights import leaf_names

    paths = json.loads(sys.argv[1])
    out = {"devices": len(jax.devices())}
    for arch, path in paths.items():
        load = {"mamba": M.load_mamba, "llama": M.load_llm, "vit": M.load_vit}[arch]
        one = load(path)
        for shape, axes in [((8,), ("model",)), ((2, 4), ("fsdp", "model"))]:
            mesh = jax.make_mesh(shape, axes)
            many = load(path, mesh=mesh)
            state = nnx.state(many)
            specs = nnx.get_partition_spec(state)
            names = leaf_names(state)
            split = 0
            for name, leaf, spec in zip(names, jax.tree.leaves(state), jax.tree.leaves(specs)):
                assert leaf.sharding.mesh.shape == mesh.shape, name
                assert tuple(leaf.sharding.spec) == tuple(M.partition_spec(name, leaf.shape, mesh))
                assert tuple(spec) == tuple(leaf.sharding.spec), name
                split += any(a is not None for a in leaf.sharding.spec)
            equal = all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(jax.tree.leaves(nnx.state(one)), jax.tree.leaves(state))
            )
            if arch == "vit":
                x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 24, 24, 3)), jnp.float32)
                f = jax.jit(lambda m, x: m(x).hidden)
                a, b = one(x).hidden, f(many, x)
            else:
                ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)))
                a, b = one(ids).logits, jax.jit(lambda m, i: m(i).logits)(many, ids)
            out[f"{arch}{shape}"] = {
                "equal_params": equal, "split_leaves": split, "leaves": len(names),
                "max_diff": float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
            }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, mamba_dirs):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    llama = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.LlamaForCausalLM(llama).save_pretrained(root / "llama")
    clip = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=24,
        patch_size=6,
    )
    transformers.CLIPVisionModel(clip).save_pretrained(root / "vit")
    return {
        "mamba": str(mamba_dirs / "f32"),
        "llama": str(root / "llama"),
        "vit": str(root / "vit"),
    }


def test_loading_onto_eight_devices_equals_one_device(hf_dirs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    run = subprocess.run(
        [sys.executable, "-c", SHARDED, json.dumps(hf_dirs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out.pop("devices") == 8
    assert len(out) == 6
    for case, r in out.items():
        assert r["equal_params"], case
        assert r["split_leaves"] >= 4, case  # the projections really are split
        assert r["max_diff"] < 1e-5, (case, r)
