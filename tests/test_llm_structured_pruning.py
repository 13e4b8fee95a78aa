"""llm_structured_pruning on the tiny preset: outputs, the achieved sparsity, each setting's model
against a direct call, resume, claims and bad configs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from flax import nnx

from pruneax import lab, models
from pruneax.experiments import llm_structured_pruning as lsp
from pruneax.experiments import llm_weight_pruning as lwp
from tests._tensorboard import scalars as tensorboard_scalars

ARGS = ["--preset", "tiny", "--seeds", "0", "--sparsities", "0.3", "0.5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lsp")
    return workdir, lsp.main([*ARGS, "--workdir", str(workdir)])


def test_outputs_and_sparsity(reference):
    workdir, out = reference
    for name in ("results.json", "results.csv", "results.md", "perplexity.png", "progress.json"):
        assert (workdir / name).stat().st_size > 0, name
    cfg = dataclasses.replace(lsp.PRESETS["tiny"], seeds=(0,), sparsities=(0.3, 0.5))
    names = [s[0] for s in lsp.settings(cfg)]
    assert list(out["evals"]) == names and len(names) == 1 + 2 * 5
    assert len((workdir / "results.csv").read_text().splitlines()) == 1 + len(names)
    assert "NIRVANA beats global first-order Taylor" in (workdir / "results.md").read_text()
    dense = models.LlamaLM(models.llm_config("tiny"), rngs=nnx.Rngs(0))
    p_k = lsp.kernel_params(dense.config)
    assert out["evals"]["dense"]["kernel_sparsity"] == 0.0
    for name, e in out["evals"].items():
        assert math.isfinite(e["perplexity"]) and e["perplexity"] > 1.0, name
        cfg_e = dataclasses.replace(
            dense.config, layer_kv_heads=tuple(e["kv_heads"]), layer_mlp=tuple(e["mlp"]),
            layer_heads=tuple(k * dense.config.num_groups for k in e["kv_heads"]),
        )  # fmt: skip
        assert e["kernel_sparsity"] == pytest.approx(1 - lsp.kernel_params(cfg_e) / p_k)
        assert e["params"] == models.config_param_count(cfg_e)
        if e["method"] in ("magnitude", "taylor"):  # removed until at or past the budget
            budget = 1 - e["sparsity_target"] * p_k / models.config_param_count(dense.config)
            assert e["params"] <= budget * models.config_param_count(dense.config)
            assert e["kernel_sparsity"] >= e["sparsity_target"] - 1e-12
        if e["method"] == "nirvana_uniform":  # every layer at s, to within one MLP channel
            n_kv = dense.config.num_kv_heads
            drop = min(math.floor(e["sparsity_target"] * n_kv + 1e-9), n_kv - 1)
            assert e["kv_heads"] == [n_kv - drop] * dense.config.num_layers
            assert len(set(e["mlp"])) == 1
            assert abs(e["kernel_sparsity"] - e["sparsity_target"]) <= 96 / (p_k / 4)
        elif e["method"].startswith("nirvana"):
            assert all(m % 8 == 0 or m == dense.config.intermediate_size for m in e["mlp"])
            assert min(e["kv_heads"]) >= 1


def test_tensorboard_holds_every_setting(reference):
    """lab.MetricWriter: one point per setting, perplexity at its kernel sparsity (permille)."""
    workdir, out = reference
    scalars = tensorboard_scalars(workdir / "tensorboard")
    assert sum(len(v) for v in scalars.values()) == len(out["evals"])
    for e in out["evals"].values():
        seed = "" if e["seed"] is None else f"/seed{e['seed']}"
        tag = f"eval/{e['method']}{seed}/perplexity_vs_kernel_sparsity_permille"
        point = (round(1000 * e["kernel_sparsity"]), pytest.approx(e["perplexity"]))
        assert point in scalars[tag]


def test_nirvana_setting_equals_a_direct_call(reference):
    """The nirvana entry is the perplexity of nirvana_prune on the same windows."""
    _, out = reference
    cfg = lsp.PRESETS["tiny"]
    model, _ = lwp.build_model(cfg)
    calib, held_out, _ = lwp.token_streams(cfg)
    ids = lwp.calibration_windows(calib, cfg.n_calib, cfg.calib_len, 0)
    pruned, info = models.nirvana_prune(model, ids, sparsity=0.5, gamma=1.0)
    e = out["evals"]["nirvana/0.5/seed0"]
    assert e["kernel_sparsity"] == pytest.approx(info["sparsity"])
    assert e["mlp"] == list(pruned.config.mlp_per_layer)
    windows = lwp.eval_windows(held_out, cfg.seq_len, cfg.eval_windows)
    assert e["perplexity"] == pytest.approx(lwp.perplexity(pruned, windows, cfg.eval_batch), 1e-6)
    g = out["evals"]["nirvana_g/0.5/seed0"]  # the published gamma moves pruning to the MLP
    assert sum(g["kv_heads"]) >= sum(e["kv_heads"]) and sum(g["mlp"]) <= sum(e["mlp"])


def test_uniform_keep_by_hand():
    cfg = models.llm_config("tiny")  # d 64, head_dim 16, 2 query heads per group, I 128
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_groups, cfg.intermediate_size) == (
        64, 16, 2, 128,
    )  # fmt: skip
    per_group, per_channel = 6 * 16 * 64, 3 * 64  # q, k, v, o of one group; one channel
    attn = [np.array([1.0, 1.0]), np.array([2.0, 1.0])]
    mlp = [np.arange(128.0)[::-1], np.arange(128.0)]
    keep = lsp.uniform_keep(attn, mlp, 0.5, cfg)
    # floor(0.5 * 2) = 1 group: the tie drops index 1; then (0.5 P - 6144) / 192 = 64 channels
    assert keep.heads == ((0,), (0,))
    assert keep.mlp == (tuple(range(64)), tuple(range(64, 128)))
    assert 0.5 * (2 * per_group + 128 * per_channel) == per_group + 64 * per_channel
    keep = lsp.uniform_keep(attn, mlp, 0.3, cfg)  # no group; round(0.3 P / 192) = 58 channels
    assert keep.heads == ((0, 1), (0, 1)) and keep.mlp[0] == tuple(range(70))
    assert lsp.uniform_keep(attn, mlp, 0.99, cfg).heads == ((0,), (0,))  # one group stays


def test_resume_skips_finished_settings(reference, monkeypatch, tmp_path):
    workdir, out = reference

    def boom(*a, **k):
        raise AssertionError("a finished setting was pruned again")

    monkeypatch.setattr(lsp, "prune", boom)
    assert lsp.main([*ARGS, "--workdir", str(workdir)])["evals"] == out["evals"]
    progress = json.loads((workdir / "progress.json").read_text())
    del progress["evals"]["taylor/0.3/seed0"]
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(AssertionError, match="pruned again"):
        lsp.main([*ARGS, "--workdir", str(tmp_path)])
    with pytest.raises(ValueError, match="different config"):
        lsp.main([*ARGS, "--gamma", "2.0", "--workdir", str(workdir)])


def _evals(**ppl):
    ev = {"dense": {"method": "dense", "sparsity_target": None, "perplexity": 10.0}}
    for key, values in ppl.items():
        method, s = key.rsplit("_", 1)
        for seed, v in enumerate(values):
            ev[f"{method}/{s}/{seed}"] = {
                "method": method, "sparsity_target": int(s) / 100, "seed": seed,
                "perplexity": v, "kernel_sparsity": int(s) / 100,
            }  # fmt: skip
    return {"evals": ev, "config": {"sparsities": [0.2, 0.5]}}


def test_claims_rule():
    r = _evals(nirvana_20=[20.0, 21.0], taylor_20=[22.0, 23.0], magnitude_20=[20.5],
               nirvana_50=[40.0, 60.0], taylor_50=[50.0, 55.0])  # fmt: skip
    r["evals"]["nirvana_uniform/20/0"] = {
        "method": "nirvana_uniform", "sparsity_target": 0.2, "seed": 0, "perplexity": 19.0,
        "kernel_sparsity": 0.2,
    }  # fmt: skip
    verdicts = {c.claim: c.verdict for c in lsp.claims(r)}
    assert verdicts["NIRVANA's adaptive allocation beats a uniform one at 20%"] == lab.FAILS
    assert verdicts["NIRVANA's adaptive allocation beats a uniform one at 50%"] == lab.NA
    assert verdicts["NIRVANA beats global first-order Taylor at 20%"] == lab.HOLDS
    assert verdicts["NIRVANA beats magnitude at 20%"] == lab.NOISE
    assert verdicts["NIRVANA beats global first-order Taylor at 50%"] == lab.NOISE
    assert verdicts["NIRVANA beats magnitude at 50%"] == lab.NA
    r = _evals(nirvana_20=[30.0], taylor_20=[22.0], magnitude_20=[np.nan])
    verdicts = {c.claim: c.verdict for c in lsp.claims(r)}
    assert verdicts["NIRVANA beats global first-order Taylor at 20%"] == lab.FAILS
    assert verdicts["NIRVANA beats magnitude at 20%"] == lab.NA


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(model="gpt"), "model"),
        (dict(methods=("nirvana", "wanda")), "methods"),
        (dict(methods=()), "methods"),
        (dict(sparsities=(0.0,)), "sparsities"),
        (dict(sparsities=(0.3, 0.3)), "sparsities"),
        (dict(sparsities=(True,)), "sparsities"),
        (dict(seeds=()), "seeds"),
        (dict(seeds=(1, 1)), "seeds"),
        (dict(calib_len=1), "calib_len"),
        (dict(n_calib=0), "n_calib"),
        (dict(eval_batch=0), "eval_batch"),
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=True), "gamma"),
    ],
)
def test_bad_config(change, field, tmp_path):
    cfg = dataclasses.replace(lsp.PRESETS["tiny"], **change)
    with pytest.raises(ValueError, match=field):
        lsp.run(cfg, tmp_path)
