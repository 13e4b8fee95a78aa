"""The LLM weight-pruning experiment on its tiny preset: outputs, exact sparsity, the dense
perplexity against a direct computation, resuming, the claims' verdict rule, bad configs."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from pruneax import lab, models
from pruneax.experiments import llm_weight_pruning as lwp
from tests._tensorboard import scalars as tensorboard_scalars

SEEDS = (0, 1)
ARGS = ["--preset", "tiny", "--seeds", *map(str, SEEDS)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One tiny run through the CLI; every mask ``calibrated_prune`` returned, by call."""
    workdir = tmp_path_factory.mktemp("lwp")
    calls = []
    real = models.calibrated_prune

    def spy(model, ids, **kw):
        pruned, masks = real(model, ids, **kw)
        calls.append((kw, masks, np.asarray(ids)))
        return pruned, masks

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "calibrated_prune", spy)
        out = lwp.main([*ARGS, "--workdir", str(workdir)])
    return workdir, out, calls


def test_outputs_sparsity_and_perplexity(reference):
    workdir, out, calls = reference
    for name in ("results.json", "results.csv", "results.md", "perplexity.png", "progress.json"):
        assert (workdir / name).stat().st_size > 0, name
    cfg = dataclasses.replace(lwp.PRESETS["tiny"], seeds=SEEDS)
    names = [s[0] for s in lwp.settings(cfg)]
    assert list(out["evals"]) == names
    unstructured = [p for p in cfg.patterns if ":" not in p]
    ecoflap = len(unstructured) * len(SEEDS)  # ecoflap: unstructured patterns only
    scores = json.loads((workdir / "progress.json").read_text())["ecoflap_scores"]
    assert sorted(scores) == sorted(str(s) for s in SEEDS)
    assert len(scores["0"]) == 7 * models.llm_config("tiny").num_layers
    assert len(names) == 1 + len(cfg.patterns) * (1 + 2 * len(SEEDS)) + ecoflap
    assert json.loads((workdir / "results.json").read_text())["evals"] == out["evals"]
    assert len((workdir / "results.csv").read_text().splitlines()) == 1 + len(names)
    assert "SparseGPT beats Wanda at 2:4" in (workdir / "results.md").read_text()
    for name, e in out["evals"].items():
        assert math.isfinite(e["perplexity"]) and e["perplexity"] > 1.0, name
        if e["method"] == "ecoflap":  # per-block ratios <= 0.6, Wanda's per-output rounding
            assert 0.5 - 1 / 64 < e["sparsity"] <= 0.5, name
            assert max(e["block_sparsities"]) <= 0.6 + 1e-12 and e["prune_seconds"] > 0
            assert e["matrix_sparsity_range"][1] <= 0.6 + 1e-12
            assert len(set(e["block_sparsities"])) > 1  # not uniform
            assert e["scores_reused"] is False  # one unstructured pattern: scored once per seed
        elif name != "dense":
            assert e["sparsity"] == 0.5 and e["matrix_sparsity_range"] == [0.5, 0.5], name
            assert e["prune_seconds"] > 0
            assert e.get("n_m_exact", True) is True, name
    # the masks themselves: 50% of every matrix, or exactly 2 of every 4 inputs per output
    assert len(calls) == len(names) - 1 - ecoflap  # ecoflap_prune calls it internally
    for kw, masks, ids in calls:
        assert ids.shape == (cfg.n_calib, cfg.seq_len)
        for keep in (np.asarray(m) for m in jax.tree.leaves(masks)):
            assert keep.mean() == 0.5
            if kw.get("n_m") == (2, 4):
                d_in, d_out = keep.shape
                assert np.all(keep.reshape(d_in // 4, 4, d_out).sum(1) == 2)
    # seeds draw different calibration windows
    wanda = [ids for kw, _, ids in calls if kw["method"] == "wanda"]
    assert not np.array_equal(wanda[0], wanda[1])


def test_tensorboard_holds_every_setting(reference):
    """lab.MetricWriter: one point per setting, perplexity at its measured sparsity (permille),
    on the curve of its method, seed and structure."""
    workdir, out, _ = reference
    scalars = tensorboard_scalars(workdir / "tensorboard")
    points = sum(len(v) for v in scalars.values())
    assert points == len(out["evals"])
    for e in out["evals"].values():
        if e["method"] == "dense":
            assert scalars["eval/dense/perplexity"] == [(0, pytest.approx(e["perplexity"]))]
            continue
        structure = "unstructured" if ":" not in e["pattern"] else e["pattern"]
        seed = "" if e["seed"] is None else f"/seed{e['seed']}"
        tag = f"eval/{e['method']}{seed}/perplexity_vs_sparsity_permille_{structure}"
        tag = lab.MetricWriter.safe_tag(tag)  # "2:4": TensorBoard's tag characters
        assert (round(1000 * e["sparsity"]), pytest.approx(e["perplexity"])) in scalars[tag]


def test_dense_perplexity_equals_a_direct_computation(reference):
    _, out, _ = reference
    cfg = lwp.PRESETS["tiny"]
    model = models.LlamaLM(models.llm_config("tiny"), rngs=nnx.Rngs(0))
    _, held_out, _ = lwp.token_streams(cfg)
    n = len(held_out) // cfg.seq_len
    windows = held_out[: n * cfg.seq_len].reshape(n, cfg.seq_len)
    logits = np.asarray(model(windows).logits, np.float64)[:, :-1]  # one eager call
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, windows[:, 1:, None], -1).ravel()
    assert len(nll) == n * (cfg.seq_len - 1)
    np.testing.assert_allclose(out["evals"]["dense"]["perplexity"], np.exp(np.mean(nll)), 1e-5)


def test_resume_skips_finished_settings(reference, tmp_path, monkeypatch):
    workdir, out, _ = reference

    def boom(*a, **k):
        raise AssertionError("a finished setting was pruned again")

    monkeypatch.setattr(models, "calibrated_prune", boom)
    monkeypatch.setattr(models, "ecoflap_prune", boom)
    again = lwp.main([*ARGS, "--workdir", str(workdir)])
    assert again["evals"] == out["evals"]
    # drop one finished setting from a copy of the run: only that one is pruned again
    (tmp_path / "progress.json").write_text((workdir / "progress.json").read_text())
    progress = json.loads((tmp_path / "progress.json").read_text())
    del progress["evals"]["wanda/2:4/seed1"]
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    calls = []
    monkeypatch.setattr(models, "calibrated_prune", lambda *a, **k: calls.append(k) or boom())
    with pytest.raises(AssertionError, match="pruned again"):
        lwp.main([*ARGS, "--workdir", str(tmp_path)])
    assert [(c["method"], c.get("n_m")) for c in calls] == [("wanda", (2, 4))]
    # a different config in the same workdir is refused
    with pytest.raises(ValueError, match="different config"):
        lwp.main([*ARGS, "--n_calib", "3", "--workdir", str(workdir)])


def _evals(**ppl):
    """Hand-made results: ``method_pattern=[ppl per seed]`` (pattern "50" = "0.5", "24" =
    "2:4")."""
    evals = {"dense": {"method": "dense", "pattern": None, "seed": None, "perplexity": 10.0}}
    for key, values in ppl.items():
        method, pattern = key.split("_")
        pattern = {"50": "0.5", "24": "2:4", "60": "0.6", "70": "0.7"}[pattern]
        for s, v in enumerate(values):
            evals[f"{method}/{pattern}/seed{s}"] = {
                "method": method, "pattern": pattern, "seed": s, "perplexity": v,
            }  # fmt: skip
    return {"evals": evals}


def test_claims_follow_the_rule():
    r = _evals(
        magnitude_50=[100.0],
        wanda_50=[20.0, 21.0, 22.0],  # all below magnitude: holds
        sparsegpt_50=[150.0, 120.0],  # all above: does not hold
        wanda_24=[30.0, 32.0],
        sparsegpt_24=[31.0, 29.0],  # overlapping: within noise
    )
    verdicts = [c.verdict for c in lwp.claims(r)]
    assert verdicts == [lab.HOLDS, lab.FAILS, lab.NOISE, lab.NA, lab.NA]
    r = _evals(magnitude_50=[100.0], wanda_50=[20.0], sparsegpt_24=[5.0])  # no SparseGPT 50%
    assert [c.verdict for c in lwp.claims(r)] == [lab.HOLDS, lab.NA, lab.NA, lab.NA, lab.NA]
    r = _evals(wanda_60=[40.0, 41.0], ecoflap_60=[30.0, 39.0], wanda_70=[80.0], ecoflap_70=[90.0])
    assert [c.verdict for c in lwp.claims(r)][3:] == [lab.HOLDS, lab.FAILS]
    assert lwp.beats([1.0, 2.0], [2.0]) == lab.NOISE  # a tie is not a win
    assert lwp.beats([float("nan")], [2.0]) == lab.NA


def test_text_helpers():
    stream = np.arange(100, dtype=np.int32)
    w = lwp.calibration_windows(stream, 5, 10, seed=3)
    assert w.shape == (5, 10) and np.all(np.diff(w, axis=1) == 1)
    assert np.array_equal(w, lwp.calibration_windows(stream, 5, 10, seed=3))
    assert not np.array_equal(w, lwp.calibration_windows(stream, 5, 10, seed=4))
    assert lwp.eval_windows(stream, 30).tolist() == stream[:90].reshape(3, 30).tolist()
    assert lwp.eval_windows(stream, 10, limit=4)[:, 0].tolist() == [0, 30, 60, 90]  # spread
    assert lwp.eval_windows(stream, 30, limit=5).shape == (3, 30)
    files = [f"usr_{i:02d}.txt" for i in range(9)]
    calib, held_out = lwp.split_files(files, 4)
    assert held_out == ["usr_03.txt", "usr_07.txt"] and not set(calib) & set(held_out)
    assert lwp.parse_pattern("2:4") == {"n_m": (2, 4)} and lwp.parse_pattern("0.5") == {
        "sparsity": 0.5
    }


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(model="gpt2"), "model must be one of"),
        (dict(methods=("wanda", "obs")), "methods must be"),
        (dict(methods=()), "methods must be"),
        (dict(patterns=("4:2",)), "patterns"),
        (dict(patterns=("1.5",)), "patterns"),
        (dict(patterns=()), "patterns must not be empty"),
        (dict(seeds=()), "seeds must be"),
        (dict(seeds=(0, 0)), "seeds must be distinct"),
        (dict(seq_len=1), "seq_len must be"),
        (dict(n_calib=0), "n_calib must be"),
        (dict(percdamp=-1.0), "percdamp"),
        (dict(seq_len=4096), "seq_len: the calibration stream has 2048 tokens"),
    ],
)
def test_bad_config_raises(change, match, tmp_path):
    cfg = dataclasses.replace(lwp.PRESETS["tiny"], **change)
    with pytest.raises(ValueError, match=match):
        lwp.run(cfg, tmp_path)


def test_missing_corpus_raises_before_loading(tmp_path):
    (tmp_path / "usr_01.txt").write_text("only one file")
    with pytest.raises(ValueError, match="at least two usr_"):
        lwp.run(dataclasses.replace(lwp.PRESETS["cpu"], corpus=str(tmp_path)), tmp_path / "w")
    with pytest.raises(ValueError, match="found 0"):
        lwp.corpus_files(str(tmp_path / "nowhere"))
