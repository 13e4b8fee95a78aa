"""Edge cases of the Hugging Face loaders (issue 19, items 10-12).

- item 10: a malformed ``config.json`` raises a ``ValueError`` naming the file and the key
  (never ``AttributeError`` / ``TypeError`` / ``UnicodeDecodeError``), and a non-integer size
  (``hidden_size: 16.7``) is refused instead of truncated.
- item 11: the shards of a sharded checkpoint stay inside the checkpoint directory (no ``..``,
  no absolute path, no symlink leading out of it -- except the Hugging Face cache layout, whose
  snapshot files link into the repository's ``blobs`` folder).
- item 12: ``read_safetensors`` is as strict as the format's own reader, and nothing but
  ``ValueError`` (naming the file) escapes it, also under fuzzing (hypothesis, derandomized by
  the ``ci`` profile of ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pruneax.models import load_llm, load_mamba, load_vit, read_checkpoint, read_safetensors

# ------------------------------------------------------------------------------ helpers


def raw_file(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    """Writes a safetensors file from a header (dict or raw JSON bytes) and a data section."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


def valid_file(path: Path, tensors: dict[str, np.ndarray], metadata=None) -> Path:
    """A well-formed safetensors file (header order = dict order, data contiguous)."""
    codes = {"<f4": "F32", "<i8": "I64", "<f2": "F16", "|u1": "U8"}
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    data, offset = b"", 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": codes[array.dtype.str],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        data, offset = data + raw, offset + len(raw)
    return raw_file(path, header, data)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# ------------------------------------------------------------------------------ item 12


def test_valid_files_still_load(tmp_path):
    tensors = {
        "a": np.arange(6, dtype="<f4").reshape(2, 3),
        "empty": np.zeros((0, 4), "<f4"),
        "b": np.array([1, -2], "<i8"),
        "s": np.array(7, "<i8"),
    }
    file = valid_file(tmp_path / "ok.safetensors", tensors, {"format": "pt"})
    got = read_safetensors(file)
    assert list(got) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(got[name], array)
        assert got[name].shape == array.shape
    # header padded with trailing spaces (the format allows it); no tensors, no data
    raw_file(tmp_path / "none.safetensors", b'{"__metadata__": null}   ')
    assert read_safetensors(tmp_path / "none.safetensors") == {}


F32x2 = b"\0" * 8

CORRUPT = {
    "header not an object": (b"[]", b"", "JSON object"),
    "deeply nested header": (b"[" * 100_000 + b"]" * 100_000, b"", "header"),
    "huge integer literal": (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b"]}}", b"", ""),
    "duplicate key": (
        b'{"a": ' + json.dumps(entry()).encode() + b', "a": ' + json.dumps(entry()).encode() + b"}",
        F32x2,
        "duplicate key 'a'",
    ),
    "entry not an object": ({"a": [1, 2]}, F32x2, "'a'"),
    "dtype a list": ({"a": entry(dtype=["F32"])}, F32x2, "'a'.*dtype"),
    "dtype lowercase": ({"a": entry(dtype="f32")}, F32x2, "'a'.*'f32'"),
    "float shape": ({"a": entry(shape=[2.0])}, F32x2, "'a'.*shape"),
    "string shape": ({"a": entry(shape=["2"])}, F32x2, "'a'.*shape"),
    "bool shape": ({"a": entry(shape=[True, 2])}, F32x2, "'a'.*shape"),
    "negative shape": ({"a": entry(shape=[-2, -1])}, F32x2, "'a'.*shape"),
    "shape not a list": ({"a": {**entry(), "shape": 2}}, F32x2, "'a'.*shape"),
    "too many dims": ({"a": entry(shape=[1] * 65 + [2])}, F32x2, "'a'.*shape"),
    "huge zero-size shape": ({"a": entry(shape=[10**30, 0], offsets=[0, 0])}, b"", "'a'"),
    "overflowing shape": ({"a": entry(shape=[2**62, 2**62], offsets=[0, 8])}, F32x2, "'a'"),
    "float offsets": ({"a": entry(offsets=[0.0, 8])}, F32x2, "'a'.*data_offsets"),
    "three offsets": ({"a": entry(offsets=[0, 8, 8])}, F32x2, "'a'.*data_offsets"),
    "bool offsets": ({"a": entry(shape=[0], offsets=[False, False])}, b"", "'a'.*data_offsets"),
    "begin after end": ({"a": entry(shape=[0], offsets=[8, 0])}, F32x2, "'a'"),
    "overlap": (
        {"a": entry(offsets=[0, 8]), "b": entry(offsets=[4, 12])},
        b"\0" * 12,
        "'b'.*overlap",
    ),
    "same bytes twice": (
        {"a": entry(offsets=[0, 8]), "b": entry(offsets=[0, 8])},
        F32x2,
        "overlap",
    ),
    "hole": ({"a": entry(offsets=[0, 8]), "b": entry(offsets=[12, 20])}, b"\0" * 20, "'b'.*hole"),
    "not from 0": ({"a": entry(offsets=[4, 12])}, b"\0" * 12, "'a'.*hole"),
    "trailing data": ({"a": entry()}, b"\0" * 9, "trailing"),
    "data without tensors": ({}, b"\0" * 4, "trailing"),
    "metadata a list": ({"__metadata__": ["x"], "a": entry()}, F32x2, "__metadata__"),
    "metadata int value": ({"__metadata__": {"k": 1}, "a": entry()}, F32x2, "__metadata__"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_reader_refuses_what_the_format_refuses(tmp_path, case):
    header, data, match = CORRUPT[case]
    file = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError) as info:
        read_safetensors(file)
    assert str(file) in str(info.value)
    assert re.search(match, str(info.value)), info.value


def _assert_valid_or_value_error(file: Path) -> None:
    try:
        out = read_safetensors(file)
    except ValueError as e:
        assert str(file) in str(e), e
        return
    assert isinstance(out, dict)
    for array in out.values():
        assert isinstance(array, np.ndarray)


@settings(max_examples=300)
@given(blob=st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path_factory, blob):
    file = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    file.write_bytes(blob)
    _assert_valid_or_value_error(file)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    dtype=st.sampled_from(["F32", "I64", "U8", "BOOL", "BF16", "X"]) | _JSON,
    shape=st.lists(st.integers(-2, 4), max_size=3) | _JSON,
    offsets=st.lists(st.integers(-2, 40), max_size=3) | _JSON,
    metadata=st.none() | _JSON,
    data=st.binary(max_size=40),
)
def test_fuzz_headers(tmp_path_factory, dtype, shape, offsets, metadata, data):
    header = {"t": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = json.dumps(header, allow_nan=True).encode()
    file = raw_file(tmp_path_factory.mktemp("fuzz") / "f.safetensors", blob, data)
    _assert_valid_or_value_error(file)


@settings(max_examples=300)
@given(
    cuts=st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]),
            st.integers(0, 400),
            st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_valid_files(tmp_path_factory, cuts):
    root = tmp_path_factory.mktemp("fuzz")
    tensors = {"w": np.arange(6, dtype="<f4").reshape(2, 3), "b": np.array([3], "<i8")}
    blob = bytearray(valid_file(root / "ok.safetensors", tensors, {"k": "v"}).read_bytes())
    for op, at, chunk in cuts:
        at = at % (len(blob) + 1)
        if op == "set":
            blob[at : at + len(chunk)] = chunk
        elif op == "insert":
            blob[at:at] = chunk
        else:
            del blob[at : at + len(chunk)]
    file = root / "f.safetensors"
    file.write_bytes(bytes(blob))
    _assert_valid_or_value_error(file)


# ------------------------------------------------------------------------------ item 11


def _sharded(root: Path, weight_map: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors"])
def test_shard_outside_directory_refused(tmp_path, shard):
    valid_file(tmp_path / "outside.safetensors", {"x": np.ones(2, "<f4")})
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    _sharded(root, {"x": shard})
    with pytest.raises(ValueError, match=f"{shard!r}.*outside the checkpoint directory"):
        read_checkpoint(root)


def test_absolute_shard_refused(tmp_path):
    outside = valid_file(tmp_path / "outside.safetensors", {"x": np.ones(2, "<f4")})
    root = tmp_path / "ckpt"
    for shard in (str(outside), "/etc/passwd"):
        _sharded(root, {"x": shard})
        with pytest.raises(ValueError, match="outside the checkpoint directory") as info:
            read_checkpoint(root)
        assert repr(shard) in str(info.value)


def test_symlinked_shard(tmp_path):
    outside = valid_file(tmp_path / "outside.safetensors", {"x": np.ones(2, "<f4")})
    root = tmp_path / "ckpt"
    _sharded(root, {"x": "model-1.safetensors"})
    os.symlink(outside, root / "model-1.safetensors")
    with pytest.raises(ValueError, match=r"'model-1\.safetensors'.*outside the checkpoint"):
        read_checkpoint(root)
    # a link that stays inside the directory is fine
    (root / "model-1.safetensors").unlink()
    valid_file(root / "real.safetensors", {"x": np.ones(2, "<f4")})
    os.symlink(root / "real.safetensors", root / "model-1.safetensors")
    np.testing.assert_array_equal(read_checkpoint(root)["x"], np.ones(2))


def test_hf_cache_layout_loads(tmp_path):
    """snapshot_download's layout: snapshots/<rev>/<file> -> ../../blobs/<sha>."""
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    valid_file(repo / "blobs" / "sha1", {"x": np.arange(2, dtype="<f4")})
    _sharded(snap, {"x": "model-00001-of-00001.safetensors"})
    os.symlink("../../blobs/sha1", snap / "model-00001-of-00001.safetensors")
    np.testing.assert_array_equal(read_checkpoint(snap)["x"], np.arange(2))


@pytest.mark.parametrize(
    "index, match",
    [
        ({"weight_map": {"x": 5}}, "'x'"),
        ({"weight_map": {"x": None}}, "'x'"),
        ({"weight_map": {"x": ""}}, "'x'"),
        ({"weight_map": {"x": "a\0.safetensors"}}, "'x'"),
        ({"weight_map": ["x"]}, "weight_map"),
        ([], "weight_map"),
    ],
)
def test_malformed_index_refused(tmp_path, index, match):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=match) as info:
        read_checkpoint(tmp_path)
    assert "model.safetensors.index.json" in str(info.value)


def test_index_not_utf8_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_bytes(b'{"weight_map": "\xff"}')
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json"):
        read_checkpoint(tmp_path)


def test_tensor_in_two_shards_refused(tmp_path):
    valid_file(tmp_path / "a.safetensors", {"x": np.ones(2, "<f4")})
    valid_file(tmp_path / "b.safetensors", {"x": np.zeros(2, "<f4")})
    _sharded(tmp_path, {"x": "a.safetensors", "y": "b.safetensors"})
    with pytest.raises(ValueError, match=r"'x'.*'a\.safetensors'.*'b\.safetensors'"):
        read_checkpoint(tmp_path)


# ------------------------------------------------------------------------------ item 10

LOADERS = {"vit": load_vit, "llama": load_llm, "mamba": load_mamba}


def _checkpoint(root: Path, config: bytes | dict) -> Path:
    """A directory with ``config`` as config.json and an empty (valid) weights file."""
    root.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, bytes) else json.dumps(config).encode()
    (root / "config.json").write_bytes(text)
    raw_file(root / "model.safetensors", {})
    return root


@pytest.mark.parametrize("model_type", sorted(LOADERS))
@pytest.mark.parametrize(
    "text",
    [b"[1, 2]", b"null", b"5", b"{", b"\xff\xfe{}", b'{"a": "\xe9"}', b"[" * 100_000],
    ids=["list", "null", "int", "bad-json", "utf16-bom", "latin1", "deep"],
)
def test_malformed_config_names_file(tmp_path, model_type, text):
    root = _checkpoint(tmp_path / "ckpt", text)
    with pytest.raises(ValueError) as info:
        LOADERS[model_type](root)
    assert str(root / "config.json") in str(info.value)


@pytest.mark.parametrize("model_type", sorted(LOADERS))
@pytest.mark.parametrize(
    "key, value",
    [
        ("architectures", [5]),
        ("architectures", "LlamaForCausalLM"),
        ("architectures", {"a": 1}),
        ("hidden_size", None),
        ("hidden_size", 16.7),
        ("hidden_size", 16.0),
        ("hidden_size", True),
        ("hidden_size", "16"),
        ("hidden_size", [16]),
        ("num_hidden_layers", 1.5),
    ],
)
def test_bad_config_value_names_key(tmp_path, model_type, key, value):
    root = _checkpoint(tmp_path / "ckpt", {"model_type": model_type, key: value})
    with pytest.raises(ValueError, match=rf"config\.json.*\b{key}\b") as info:
        LOADERS[model_type](root)
    assert "missing from the checkpoint" not in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_labels", 2.5),
        ("num_labels", None),
        ("num_labels", -1),
        ("id2label", [1]),
        ("layer_norm_eps", "x"),
        ("layer_norm_eps", float("nan")),
        ("qkv_bias", "yes"),
        ("hidden_act", ["gelu"]),
        ("image_size", [32.5, 32]),
    ],
)
def test_bad_vit_config_value_names_key(tmp_path, key, value):
    root = _checkpoint(tmp_path / "ckpt", {"model_type": "vit", key: value})
    with pytest.raises(ValueError, match=rf"config\.json.*\b{key}\b") as info:
        load_vit(root)
    assert "missing from the checkpoint" not in str(info.value)


def test_valid_sizes_pass_the_checks(tmp_path):
    """Well-typed values get past the config checks (to the empty checkpoint's missing
    tensors); ints for floats and [h, w] image sizes are accepted."""
    cfg = {
        "model_type": "vit",
        "architectures": ["ViTModel"],
        "hidden_size": 16,
        "num_attention_heads": 2,
        "layer_norm_eps": 1,
        "image_size": [32, 32],
        "num_labels": 3,
    }
    root = _checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        load_vit(root)


@pytest.mark.parametrize(
    "model_type, key, value",
    [
        ("llama", "rope_theta", "x"),
        ("llama", "rope_parameters", [1]),
        ("llama", "head_dim", 16.5),
        ("qwen2", "layer_types", 5),
        ("qwen2", "layer_types", [5]),
        ("mamba", "intermediate_size", 2.5),
        ("vit", "pooler_output_size", 2.5),
        ("clip", "vision_config_dict", [1]),
    ],
)
def test_optional_value_of_wrong_type_names_key(tmp_path, model_type, key, value):
    """Attributes whose default is ``None`` still have a type (or ``null``)."""
    cfg = {"model_type": model_type, key: value}
    if model_type == "clip":
        cfg["vision_config"] = {}
    loader = {"clip": load_vit, "qwen2": load_llm}.get(model_type) or LOADERS[model_type]
    root = _checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(ValueError, match=rf"config\.json.*\b{key}\b") as info:
        loader(root)
    assert "missing from the checkpoint" not in str(info.value)


def test_qwen2_null_sliding_window_passes(tmp_path):
    """transformers writes ``sliding_window: null`` when ``use_sliding_window`` is false."""
    cfg = {"model_type": "qwen2", "sliding_window": None, "rope_theta": 1e6, "head_dim": None}
    root = _checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        load_llm(root)


@pytest.mark.parametrize("theta", [None, "x", -1.0, float("inf")])
def test_nested_rope_theta_of_wrong_type_names_key(tmp_path, theta):
    """A bad ``rope_theta`` inside ``rope_parameters`` raised a bare TypeError from float()."""
    cfg = {"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    root = _checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(ValueError, match=r"rope_theta must be a finite number > 0"):
        load_llm(root)
