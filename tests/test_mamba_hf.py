"""pruneax.models.load_mamba / MambaMixer against transformers' Mamba (its slow, pure-PyTorch
path on CPU): tiny random models saved with ``save_pretrained`` must give the same hidden
states after every block, last hidden state and logits, in every scan mode; one mixer's output
and its gated scan output y (the input of out_proj) must match directly; broken checkpoints
fail with clear errors.

Every parameter of the PyTorch models is perturbed (norm scales 1 + N(0, 0.2^2), the rest
+ N(0, 0.2^2) on top of Mamba's init, dt_proj's bias + N(0, 1)), so no bias, A_log, D or
norm scale is trivial and a mapping mistake shows.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import read_checkpoint
from pruneax.models.mamba import MambaConfig, MambaLM, MambaMixer, load_mamba

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-4
SIZES = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4
)
# name -> (transformers class, MambaConfig overrides, expected MambaConfig.lm_head)
CASES = {
    "causal_lm_tied": ("MambaForCausalLM", {}, "tied"),
    "causal_lm_untied_bias": (
        "MambaForCausalLM",
        dict(
            tie_word_embeddings=False,
            use_bias=True,
            use_conv_bias=False,
            time_step_rank=5,
            residual_in_fp32=False,
            layer_norm_epsilon=1e-3,
        ),
        "untied",
    ),
    "base_model": ("MambaModel", {}, "none"),
}
MODES = {
    "associative": dict(),
    "sequential": dict(scan_mode="sequential"),
    "chunked_remat": dict(scan_chunk=4, scan_remat=True),
}


@pytest.fixture(scope="module", autouse=True)
def slow_path_only():
    """The reference must be transformers' pure-PyTorch path: no CUDA kernels, no mambapy."""
    present = [m for m in ("mamba_ssm", "causal_conv1d", "mambapy") if importlib.util.find_spec(m)]
    if present or torch.cuda.is_available():
        pytest.skip(f"transformers would not run its slow torch path ({present or 'cuda'})")


def perturb(model, seed: int = 0, std: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = std * torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + noise)
            elif name.endswith("dt_proj.bias"):
                p.add_(torch.randn(p.shape, generator=gen))
            else:
                p.add_(noise)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[object, Path]]:
    """name -> (the perturbed PyTorch model, its save_pretrained directory)."""
    torch.manual_seed(0)
    out = {}
    for i, (name, (cls, overrides, _)) in enumerate(CASES.items()):
        config = transformers.MambaConfig(**{**SIZES, **overrides})
        model = perturb(getattr(transformers, cls)(config), seed=i)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def token_ids(shape=(2, 11), seed=1):
    return torch.randint(
        0, SIZES["vocab_size"], shape, generator=torch.Generator().manual_seed(seed)
    )


@nnx.jit
def forward(model: MambaLM, ids: jax.Array):
    return model(ids, return_hidden_states=True)


def diff(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(saved, case):
    hf, path = saved[case]
    ids = token_ids()
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, use_cache=False)
    ref_hidden = ref.last_hidden_state if hasattr(ref, "last_hidden_state") else None
    for mode, options in MODES.items():
        model = load_mamba(path, **options)
        assert model.config.lm_head == CASES[case][2]
        out = forward(model, jnp.asarray(ids.numpy()))
        # HF: the block outputs, then norm_f(last). Ours: embeddings, then the block outputs.
        assert len(ref.hidden_states) == len(out.hidden_states) == SIZES["num_hidden_layers"] + 1
        diffs = {
            f"block{i}": diff(r, o)
            for i, (r, o) in enumerate(
                zip(ref.hidden_states[:-1], out.hidden_states[1:], strict=True)
            )
        }
        diffs["norm_f"] = diff(ref.hidden_states[-1], out.hidden)
        if ref_hidden is not None:
            diffs["last_hidden_state"] = diff(ref_hidden, out.hidden)
        embeddings = hf.get_input_embeddings()(ids)
        diffs["embeddings"] = diff(embeddings, out.hidden_states[0])
        if CASES[case][2] == "none":
            assert out.logits is None
        else:
            assert out.logits.dtype == jnp.float32
            diffs["logits"] = diff(ref.logits, out.logits)
        assert max(diffs.values()) < TOL, (mode, diffs)


def test_mixer_output_and_scan_output_match(saved):
    """One mixer on random inputs: out_proj's output and its input y (the gated scan output
    that ToP-ViM scores tokens with), captured from the PyTorch module with a hook."""
    hf, path = saved["causal_lm_untied_bias"]
    hf_mixer = hf.backbone.layers[1].mixer
    captured = {}
    handle = hf_mixer.out_proj.register_forward_pre_hook(
        lambda module, args: captured.__setitem__("y", args[0].detach().clone())
    )
    x = torch.randn(3, 9, SIZES["hidden_size"], generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            ref = hf_mixer(x)
    finally:
        handle.remove()
    model = load_mamba(path)
    mixer = model.layers[1].mixer
    assert isinstance(mixer, MambaMixer)
    for mode in ("associative", "sequential"):
        out, y = mixer(jnp.asarray(x.numpy()), mode=mode, return_y=True)
        assert y.shape == (3, 9, 2 * SIZES["hidden_size"])
        assert diff(ref, out) < TOL
        assert diff(captured["y"], y) < TOL


def test_bfloat16_model_runs_close_to_float32(saved):
    _, path = saved["causal_lm_tied"]
    ids = jnp.asarray(token_ids().numpy())
    ref = forward(load_mamba(path), ids)
    out = forward(load_mamba(path, dtype=jnp.bfloat16), ids)
    assert out.logits.dtype == jnp.float32
    assert out.hidden.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out.logits) - np.asarray(ref.logits)).max()
    assert err < 0.05 * np.abs(np.asarray(ref.logits)).max()


def test_scan_outputs_returned_per_block(saved):
    _, path = saved["causal_lm_tied"]
    model = load_mamba(path)
    out = model(jnp.asarray(token_ids().numpy()), return_ys=True)
    assert len(out.ys) == SIZES["num_hidden_layers"]
    assert all(y.shape == (2, 11, 2 * SIZES["hidden_size"]) for y in out.ys)


def test_config_matches_transformers_defaults():
    """MambaConfig resolves time_step_rank "auto" as transformers does (ceil(D / 16))."""
    for d in (32, 40, 768):
        ours = MambaConfig(hidden_size=d, num_layers=1, vocab_size=8)
        theirs = transformers.MambaConfig(hidden_size=d)
        assert ours.time_step_rank == theirs.time_step_rank
        assert ours.d_inner == theirs.intermediate_size


def test_model_from_scratch_runs_and_is_causal():
    cfg = MambaConfig(hidden_size=16, num_layers=2, vocab_size=20, state_size=4)
    model = MambaLM(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 20, (2, 7)))
    run = nnx.jit(lambda m, i: m(i))
    out = run(model, ids)
    assert out.logits.shape == (2, 7, 20) and np.all(np.isfinite(out.logits))
    changed = ids.at[:, 4].set((ids[:, 4] + 1) % 20)
    out2 = run(model, changed)
    np.testing.assert_allclose(out.logits[:, :4], out2.logits[:, :4], atol=1e-6)  # causal
    assert not np.allclose(out.logits[:, 4:], out2.logits[:, 4:])


# ------------------------------------------------------------------------------ errors


def _copy(src: Path, dst: Path, drop: str | None = None, add: dict | None = None) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = {k: np.ascontiguousarray(v) for k, v in read_checkpoint(src).items() if k != drop}
    tensors.update(add or {})
    st_numpy.save_file(tensors, str(dst / "model.safetensors"))
    return dst


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_tensor_is_named(saved, tmp_path):
    _, src = saved["causal_lm_untied_bias"]
    path = _copy(src, tmp_path / "m", drop="backbone.layers.1.mixer.A_log")
    with pytest.raises(ValueError, match=r"missing.*backbone\.layers\.1\.mixer\.A_log"):
        load_mamba(path)
    path = _copy(src, tmp_path / "h", drop="lm_head.weight")
    with pytest.raises(ValueError, match=r"missing.*lm_head\.weight"):
        load_mamba(path)


def test_unexpected_and_wrong_shape_tensors(saved, tmp_path):
    _, src = saved["causal_lm_tied"]
    extra = {"backbone.layers.0.mixer.extra.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"does not use.*mixer\.extra\.weight"):
        load_mamba(_copy(src, tmp_path / "u", add=extra))
    bad = {"backbone.layers.0.mixer.D": np.zeros((3,), np.float32)}
    with pytest.raises(ValueError, match=r"wrong shape.*mixer\.D: \[3\], expected \[64\]"):
        load_mamba(_copy(src, tmp_path / "s", add=bad))


def test_config_errors(saved, tmp_path):
    _, src = saved["causal_lm_tied"]
    path = _copy(src, tmp_path / "c")
    _edit_config(path, model_type="mamba2")
    with pytest.raises(ValueError, match=r"model_type 'mamba2'.*not supported"):
        load_mamba(path)
    _edit_config(path, model_type="mamba", hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act"):
        load_mamba(path)
    _edit_config(path, hidden_act="silu", intermediate_size=48)
    with pytest.raises(ValueError, match="intermediate_size"):
        load_mamba(path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mamba(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_mamba(tmp_path / "empty")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(time_step_rank="big"), "time_step_rank"),
        (dict(lm_head="shared"), "lm_head"),
        (dict(scan_mode="parallel"), "scan_mode"),
        (dict(scan_chunk=0), "scan_chunk"),
        (dict(use_bias=1), "use_bias"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
    ],
)
def test_mamba_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        MambaConfig(**kw)


def test_call_errors():
    cfg = MambaConfig(hidden_size=16, num_layers=1, vocab_size=20, state_size=4)
    model = MambaLM(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_ids must be integer"):
        model(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="input_ids must be integer"):
        model(jnp.zeros((3,), jnp.int32))
    mixer = model.layers[0].mixer
    with pytest.raises(ValueError, match="x must be"):
        mixer(jnp.zeros((2, 3, 8)))
    with pytest.raises(ValueError, match="keep must be"):
        mixer(jnp.zeros((2, 3, 16)), keep=jnp.ones((2, 4), bool))


def test_mixer_keep_mask_reaches_the_scan():
    """keep all True is the dense mixer; pruning a position changes only later outputs."""
    cfg = MambaConfig(hidden_size=16, num_layers=1, vocab_size=20, state_size=4)
    mixer = MambaMixer(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 16)), jnp.float32)
    dense = mixer(x)
    np.testing.assert_allclose(mixer(x, keep=jnp.ones((2, 6), bool)), dense, atol=1e-6)
    keep = jnp.ones((2, 6), bool).at[:, 3].set(False)
    pruned = mixer(x, keep=keep)
    np.testing.assert_allclose(pruned[:, :3], dense[:, :3], atol=1e-6)
    assert not np.allclose(pruned[:, 4:], dense[:, 4:])
