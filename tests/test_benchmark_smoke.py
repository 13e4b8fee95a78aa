"""Smoke test of the selection benchmark: ``python -m benchmarks.selection --quick``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import selection


def test_quick_benchmark_writes_a_row_per_selector(tmp_path):
    out = tmp_path / "selection.md"
    assert selection.main(["--quick", "--out", str(out)]) == 0

    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    apart = [selection.FLOWCUT, selection.VISIONDROP, selection.FOCAL]
    assert {r["selector"] for r in rows} == {*selection.SELECTORS, *apart}
    for name in [*selection.SELECTORS, *apart]:
        mine = [r for r in rows if r["selector"] == name]
        assert sorted(r["batch"] for r in mine) == [1, 2], name
        for r in mine:
            assert r["per_image_s"] > 0 and r["batch_time_s"] > 0, r
            assert all(t > 0 for t in r["times_s"]), r
            assert r["limit_s"] > 0 and r["achieved_over_limit"] > 0, r
            assert r["achieved_over_limit"] == pytest.approx(r["per_image_s"] / r["limit_s"])
            if name != selection.FLOWCUT:  # FlowCut has no NumPy reference
                assert r["numpy"]["per_image_s"] > 0, r
    # FlowCut: the vision-encoder selection on recorded CLS rows + values of tiny-vision
    flow = [r for r in rows if r["selector"] == selection.FLOWCUT]
    assert {r["shape"] for r in flow} == {"tiny-vision"} and "numpy" not in flow[0]
    assert (flow[0]["layers"], flow[0]["heads"], flow[0]["k"]) == (4, 2, 8)
    assert flow[0]["phases"][0]["name"].startswith("scores")
    text = out.read_text()
    assert "## tiny-vision: FlowCut in the vision encoder" in text and "| flowcut |" in text
    # VisionDrop: topk + contextual_merge on tiny-visiondrop, checked against np_visionzip
    vd = [r for r in rows if r["selector"] == selection.VISIONDROP]
    assert {r["shape"] for r in vd} == {"tiny-visiondrop"}
    assert (vd[0]["k"], vd[0]["patches"], vd[0]["contextual"], vd[0]["dh"]) == (8, 5, 2, 8)
    assert [ph["name"] for ph in vd[0]["phases"]] == [
        "rank + top-k",
        "cosine similarity matmul",
        "one-hot assignment matmul",
    ]
    assert vd[0]["numpy"]["source"] == "tests/oracles.py:np_visionzip"
    assert vd[0]["numpy"]["tokens_match"] and vd[0]["numpy"]["tokens_max_abs_diff"] < 1e-5
    assert "## tiny-visiondrop: VisionDrop / VisionZip vision stage" in text
    assert "| visiondrop |" in text and "contextual tokens max |JAX - NumPy|" in text
    assert any(k.startswith("VisionZip assignment") for k in result["limits"]["matmul_gflops"])
    # FoPru (rank) on tiny-fopru's patch attention, checked against the published function
    fo = [r for r in rows if r["selector"] == selection.FOCAL]
    assert {r["shape"] for r in fo} == {"tiny-fopru"} and (fo[0]["heads"], fo[0]["k"]) == (2, 8)
    assert fo[0]["phases"][0]["bytes"] == 2 * 64 * 64 * 4  # the attention, read once
    assert fo[0]["numpy"]["source"] == "tests/oracles.py:np_focal_select"
    assert "## tiny-fopru: FoPru (rank) in the vision encoder" in text and "| fopru |" in text
    for level in ("L2", "L3", "DRAM"):
        assert result["limits"]["bandwidth"][level]["best"] > 0
    assert all(v["best"] > 0 for v in result["limits"]["matmul_gflops"].values())
    # The NumPy picks of the deterministic selectors match pruneax's on the first example.
    for r in rows:
        if r["selector"] not in ("random", selection.FLOWCUT) and r["batch"] == 1:
            assert r["numpy"]["agree"] == 1.0, r["selector"]
    assert "| kcenter * |" in out.read_text()


def test_flowcut_cell_selects_what_flowcut_select_selects():
    """The benchmark's FlowCut cell runs ``flowcut_select`` per example on its inputs."""
    import pruneax.tokens as T

    v = selection.QUICK_VISION_SHAPES["tiny-vision"]
    rows, values = selection.flowcut_inputs(v, 2, seed=3)
    assert rows.shape == (2, v.layers, v.heads, v.n + 1)
    assert values.shape == (2, v.layers, v.heads, v.n + 1, v.dh)
    timing = selection.Timing(target_s=0.0, min_reps=1, max_reps=1)
    cell, picks = selection.flowcut_cell(v, 2, timing, seed=3)
    assert picks.shape == (2, v.k) and cell["per_image_s"] > 0
    for b in range(2):
        want = T.flowcut_select(rows[b], values[b], v.k)[0]
        np.testing.assert_array_equal(picks[b], np.asarray(want))
    with pytest.raises(ValueError, match="unknown selectors"):
        selection.run(selection.Config(quick=True, selectors=["flowcutt"]))


def test_visiondrop_cell_runs_the_vision_stage():
    """The benchmark's VisionDrop cell runs ``topk`` + ``contextual_merge`` per example, and
    ``np_visionzip`` (the published forward) gives the same output on example 0."""
    import pruneax.tokens as T

    v = selection.QUICK_VISIONDROP_SHAPES["tiny-visiondrop"]
    scores, x, metric = selection.visiondrop_inputs(v, 2, seed=3)
    assert (scores.shape, x.shape, metric.shape) == ((2, v.n), (2, v.n, v.d), (2, v.n, v.dh))
    np.testing.assert_allclose(np.asarray(scores).sum(axis=1), 1.0, rtol=1e-5)
    timing = selection.Timing(target_s=0.0, min_reps=1, max_reps=1)
    cell, (tokens, dom), example = selection.visiondrop_cell(v, 2, timing, seed=3)
    assert tokens.shape == (2, v.contextual, v.d) and dom.shape == (2, v.patches)
    assert cell["per_image_s"] > 0 and not cell["nn_in_hlo"]
    for b in range(2):
        want_dom = T.topk(scores[b], v.patches)
        want, _ = T.contextual_merge(x[b], metric[b], want_dom, v.contextual)
        np.testing.assert_array_equal(dom[b], np.asarray(want_dom))
        np.testing.assert_allclose(tokens[b], np.asarray(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(example["x"], np.asarray(x[0]))
    nrow = selection.visiondrop_numpy(v, (tokens, dom), example, selection.load_oracles(), timing)
    assert nrow["agree"] == 1.0 and nrow["tokens_match"], nrow
    # The limit: the phases' FLOPs as documented (R = 59 remaining, c = 2)
    sim, assign = selection._cost_visiondrop(v)[1:]
    assert sim.flops == 2.0 * 57 * 2 * 8 + 3.0 * 59 * 8 and sim.matmul == "sim"
    assert assign.flops == 2.0 * 2 * 57 * 32 and assign.matmul == "assign"
    with pytest.raises(ValueError, match="unknown shapes"):
        selection.run(selection.Config(quick=True, shapes=["tiny-visiondrp"]))


def test_numpy_references_match_pruneax():
    """The benchmark's NumPy references (tests/oracles.py) pick what pruneax picks."""
    shape = selection.QUICK_SHAPES["tiny"]
    data = selection.make_inputs(shape, 1, seed=1)
    example = {name: v[0] for name, v in data.items()}
    oracles = selection.load_oracles()
    for sel in selection.SELECTORS.values():
        if sel.name == "random":
            continue
        args = [data[name][0] for name in sel.inputs]
        expected = np.asarray(sel.make(shape)(*args))
        got = np.asarray(sel.np_call(shape, example, getattr(oracles, sel.oracle)))
        np.testing.assert_array_equal(got, expected, err_msg=sel.name)


def test_weights_benchmark_quick(tmp_path):
    from benchmarks import weights as wb

    out = wb.main(["--quick", "--out", str(tmp_path / "weights.md")])
    assert (tmp_path / "weights.md").read_text().count("|") > 10
    (step,) = out["steps"]
    assert step["pruned_stay_zero"] and step["dense_ms_per_step"] > 0 < step["ratio"]
    assert abs(out["masks"]["sparsity_got"] - 0.8) < 1e-6 and out["masks"]["seconds_median"] > 0


def test_quick_physical_pruning_benchmark(tmp_path):
    from benchmarks import physical_pruning as pp

    out = tmp_path / "pp.md"
    assert pp.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["model"], r["fraction"]) for r in rows] == [("conv2", f) for f in pp.FRACTIONS]
    for r in rows:
        # conv2 has 64 + 64 filters; round(fraction * 64) removed from each layer
        assert r["filters_removed"] == 2 * round(r["fraction"] * 64) and r["filters"] == 128
        assert r["widths"] == [64 - round(r["fraction"] * 64)] * 2
        assert r["params_removed"] < r["params_masked"] and r["ideal_speedup"] > 1
        assert r["max_abs_logit_diff"] < 1e-4  # removed = masked
        assert r["masked_median_s"] > 0 < r["removed_median_s"] and r["speedup"] > 0
    assert out.read_text().count("| conv2 |") == 3


def test_quick_vit_speedup_benchmark(tmp_path):
    from benchmarks import vit_speedup

    out = tmp_path / "vit.md"
    assert vit_speedup.main(["--quick", "--out", str(out), "--methods", "topk", "tome"]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["topk", "tome"]
    for r in rows:
        assert r["ideal_speedup"] > 1 and r["speedup"] > 0 and r["oracle_speedup"] > 0
        assert all(t > 0 for ts in r["times_s"].values() for t in ts)
    assert "selection" in rows[0]["median_s"] and "selection" not in rows[1]["median_s"]


def test_quick_scan_benchmark(tmp_path):
    from benchmarks import scan

    out = tmp_path / "scan.md"
    assert scan.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {"sequential", "associative"} <= set(rows)
    for row in rows.values():
        for what in ("fwd", "fwd+bwd"):
            assert row[what]["median_s"] > 0, row


# both loops take ~50-70 s on XLA:CPU; tests/test_lottery_ticket.py checks that they agree
# (slow selection); test_weights_benchmark_quick runs the benchmark in the default selection
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["scan", "python"])
def test_weights_step_case_with_batchnorm(loop):
    """The masked-step case runs a BatchNorm model (ResNet) in both step loops."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from benchmarks import weights as wb
    from pruneax import models

    model = models.CifarResNet("resnet20", width=4, rngs=nnx.Rngs(0))
    model.train()
    x = jnp.ones((4, 8, 8, 3)) * jnp.arange(4.0)[:, None, None, None]
    y = jnp.arange(4, dtype=jnp.int32)
    row = wb._step_case("rn", model, x, y, optax.sgd(0.1, momentum=0.9), 2, 1, loop=loop)
    assert row["pruned_stay_zero"] and row["dense_ms_per_step"] > 0 < row["masked_ms_per_step"]


def test_tiny_gpu_benchmark_runs_on_cpu(tmp_path):
    from benchmarks import gpu

    out = tmp_path / "gpu.md"
    assert gpu.main(["--tiny", "--repeats", "2", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == [
        "dense",
        "dense, explicit LLM attention",
        "fastervlm k=4",
        "divprune k=4",
        "fastv k=4",
    ]
    assert rows["dense"]["speedup"] == 1.0 and rows["dense"]["select_ms"] is None
    # selection ms is a difference of two medians: its sign is timing noise at this size
    assert math.isfinite(rows["fastervlm k=4"]["select_ms"])
    assert rows["fastv k=4"]["select_ms"] is None
    assert all(r["prefill_ms"] > 0 and r["compile_s"] > 0 for r in rows.values())


@pytest.mark.slow  # five subprocesses, one a two-process jax.distributed run
def test_sharded_loading_benchmark_smoke(tmp_path):
    from benchmarks import sharded_loading

    out = tmp_path / "sl.md"
    assert sharded_loading.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    modes = [(r["mode"], r["process"]) for r in result["rows"]]
    assert modes == [("one", 0), ("naive", 0), ("mesh", 0), ("dist", 0), ("dist", 1)]
    dist = [r for r in result["rows"] if r["mode"] == "dist"]
    assert all(r["checked"] > 0 for r in dist)  # each process checked its own shards
    whole = next(r for r in result["rows"] if r["mode"] == "mesh")["local_param_bytes"]
    assert all(r["local_param_bytes"] * 2 == whole for r in dist)


def test_quick_graph_benchmark(tmp_path):
    from benchmarks import graph as gb

    out = tmp_path / "graph.md"
    assert gb.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"].split(" ")[0] for r in result["analysis"]] == ["LlamaLM", "ViT", "CIFAR"]
    for r in result["analysis"]:
        assert r["trace_s"] > 0 and r["equations"] > 100 and 0 < r["prunable_exact"] <= r["groups"]
    for r in result["runner"]:
        assert r["max_abs_diff_runner"] < 1e-5  # nothing removed: the original function
        assert r["flops_ratio_half"] > 2 and r["speedup_half"] > 0 < r["speedup_minus1"]


def test_checkpoint_benchmark_quick(tmp_path):
    from benchmarks import checkpoints as cb

    (row,) = cb.main(["--quick", "--out", str(tmp_path / "checkpoints.md")])
    assert row["state_MB"] > 0 and row["async to disk"] >= row["async"] > 0
    assert "| state MB |" in (tmp_path / "checkpoints.md").read_text()


def test_focal_cell_selects_what_focal_select_selects():
    """The benchmark's FoPru cell runs ``focal_select`` per example on attention whose [CLS] row
    and column are dropped (rows no longer sum to 1, so the variance rule has work to do)."""
    import pruneax.tokens as T
    from tests.oracles import np_focal_select

    v = selection.QUICK_FOCAL_SHAPES["tiny-fopru"]
    attn = selection.focal_inputs(v, 2, seed=5)
    assert attn.shape == (2, v.heads, v.n, v.n)
    assert not np.allclose(np.asarray(attn).sum(-1), 1.0)
    timing = selection.Timing(target_s=0.0, min_reps=1, max_reps=1)
    cell, picks, example = selection.focal_cell(v, 2, timing, seed=5)
    assert picks.shape == (2, v.k) and cell["per_image_s"] > 0
    np.testing.assert_array_equal(example["attn"], np.asarray(attn[0]))
    for b in range(2):
        np.testing.assert_array_equal(picks[b], np.asarray(T.focal_select(attn[b], v.k)))
        np.testing.assert_array_equal(picks[b], np_focal_select(np.asarray(attn[b]), v.k))
