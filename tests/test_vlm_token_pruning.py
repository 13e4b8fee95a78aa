"""Smoke run of the VLM token-pruning experiment (MNIST-grid VQA); kill-and-resume gives identical
results; the mosaic / question generator is checked against an independent transcription."""

from __future__ import annotations

import dataclasses
import json
import signal

import numpy as np
import pytest

from pruneax import lab
from pruneax.experiments import vlm_token_pruning as vtp
from pruneax.models.llama import FastVSpec
from tests._resume import kill_after_first_checkpoint
from tests._tensorboard import scalars as tensorboard_scalars

ARGS = ["--preset", "tiny"]


@pytest.fixture(scope="module")
def reference(notebook_run):
    """The tiny run of colabs/06_vlm_token_pruning.ipynb, executed in a fresh kernel from the wheel
    of this tree (tests/_notebooks.py): its folder and its results.json."""
    workdir = notebook_run("06_vlm_token_pruning") / "06_vlm_token_pruning"
    return workdir, json.loads((workdir / "results.json").read_text())


def test_outputs_and_structure(reference):
    workdir, out = reference
    for name in (
        "results.json",
        "results.md",
        "accuracy.png",
        "accuracy_flops.png",
        "latency.png",
        "kept_tokens.png",
    ):
        assert (workdir / name).stat().st_size > 0, name
    cfg = vtp.PRESETS["tiny"]
    losses = out["train_losses"]
    assert len(losses) == cfg.iterations // cfg.log_every and losses[-1][1] < losses[0][1]
    evals, lat = out["evals"], out["latency"]
    r = cfg.keep_ratios[0]
    names = ["dense", *(f"{m}@{r}" for m in cfg.methods), f"fastv@{r}"]
    names += [f"{m}/pos@{r}" for m in cfg.position_ablation]
    names += [f"{m}+fastv@{r}" for m in cfg.combos]
    names += [f"visiondrop+llm@{r}"]  # VisionDrop's vision stage at 2r, LLM stages down to r
    names += [f"transprune@{r}"]  # in-LLM, one stage at FastV's layer
    assert set(names) <= set(evals) and set(evals) == set(lat)
    n = 16  # 2x2 mosaic of 8x8 digits, patch 4
    k = round(r * n)
    dense = evals["dense"]
    assert dense["flops_ratio"] == 1.0 and dense["cell_hit_rate"] == 1.0
    assert dense["visual_tokens_last_layer"] == n
    for name in names[1:]:
        e = evals[name]
        assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 < e["flops_ratio"] < 1.0, name
        assert e["visual_tokens_last_layer"] == k, name  # equal budgets for every method
        for f in vtp.FAMILIES:
            assert 0.0 <= e[f"acc_{f}"] <= 1.0
        assert lat[name]["prefill_s"] > 0 and lat[name]["decode_token_s"] > 0
    # uniform at 4 of 16 tokens = the stride-2 grid: one token per cell of the 2x2 mosaic
    assert evals[f"uniform@{r}"]["cell_hit_rate"] == 1.0
    # original positions: same tokens, same FLOPs, the LLM sees other RoPE positions
    pos = evals[f"uniform/pos@{r}"]
    assert (
        pos["cell_hit_rate"] == 1.0 and pos["flops_ratio"] == evals[f"uniform@{r}"]["flops_ratio"]
    )
    # FlowCut prunes inside the vision encoder: k tokens reach the LLM as for every pre-LLM
    # method, and only they are projected (FLOPs: fastervlm's less 2 (N - k)(Dv D + D D))
    assert "flowcut" in cfg.methods and "flowcut" in vtp.pre_methods()
    flow, top = evals[f"flowcut@{r}"], evals[f"fastervlm@{r}"]
    vc = vtp.vlm_config(cfg, (8, 8))
    d, dv = vc.llm.hidden_size, vc.vision.hidden_size
    saved = (
        2.0 * (n - k) * (dv * d + d * d) / vtp.vlm_prefill_flops(vc, prefix_len=1, question_len=3)
    )
    assert flow["flops_ratio"] == pytest.approx(top["flops_ratio"] - saved)
    assert flow["accuracy"] * cfg.eval_size == pytest.approx(
        round(flow["accuracy"] * cfg.eval_size)
    )
    # FastV keeps the full sequence in its first layers: more FLOPs than pre-LLM at equal k
    assert evals[f"fastv@{r}"]["flops_ratio"] > evals[f"uniform@{r}"]["flops_ratio"]
    table = (workdir / "results.md").read_text()
    assert "Accuracy, locate" in table and "Cell hit rate" in table and "decode ms/token" in table


def test_tensorboard_curves_equal_the_results(reference):
    """lab.MetricWriter: the training loss curve and one accuracy-vs-FLOPs curve per method in
    <workdir>/tensorboard hold the numbers of results.json."""
    workdir, out = reference
    scalars = tensorboard_scalars(workdir / "tensorboard")
    got, want = scalars["train/loss"], out["train_losses"]
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    for e in out["evals"].values():
        tag = lab.MetricWriter.safe_tag(f"eval/{e['method']}/accuracy_vs_flops_permille")  # "+"
        assert (round(1000 * e["flops_ratio"]), pytest.approx(e["accuracy"])) in scalars[tag]


def test_generator_answers_are_correct_by_construction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    images = rng.normal(size=(500, 5, 4, 1)).astype(np.float32)
    for grid in (2, 3):
        v = vtp.Vocab(grid)
        ex = vtp.sample(np.random.default_rng(grid), labels, 600, grid)
        families = {f: 0 for f in vtp.FAMILIES}
        yes = 0
        for cells, q, a, f in zip(ex["cells"], ex["question"], ex["answer"], ex["family"],
                                  strict=True):  # fmt: skip
            digits = [int(labels[c]) for c in cells]
            words = [v.names[t] for t in q]
            family = vtp.FAMILIES[f]
            families[family] += 1
            if family == "locate":
                assert words[0] == "WHICH" and words[2] == "?"
                assert v.names[a] == f"DIG_{digits[int(words[1][5:])]}"
            elif family == "count":
                assert words[0] == "COUNT" and words[2] == "?"
                d = int(words[1][4:])
                assert v.names[a] == f"NUM_{sum(x == d for x in digits)}"
            else:
                assert words[0] == "EXISTS" and words[2] == "?"
                d = int(words[1][4:])
                assert v.names[a] == ("YES" if d in digits else "NO")
                yes += v.names[a] == "YES"
        assert min(families.values()) > 150
        assert 0.35 < yes / families["exists"] < 0.65  # balanced
        # the mosaic: cell (r, c) of the image is the cell's digit image
        m = vtp.mosaic(images[ex["cells"][:3]], grid)
        assert m.shape == (3, 5 * grid, 4 * grid, 1)
        for b in range(3):
            for r in range(grid):
                for c in range(grid):
                    want = images[ex["cells"][b, r * grid + c]]
                    np.testing.assert_array_equal(m[b, 5 * r : 5 * r + 5, 4 * c : 4 * c + 4], want)


def test_settings_have_equal_budgets():
    cfg = vtp.PRESETS["cpu"]
    vcfg = vtp.vlm_config(cfg, (28, 28))
    n = vcfg.num_visual
    assert n == 16 and vcfg.vision.grid == (4, 4)  # patch 14 on the 56x56 mosaic
    s = {x.name: x for x in vtp.settings(cfg, vcfg)}
    for r in cfg.keep_ratios:
        k = round(r * n)
        assert s[f"divprune@{r}"].select.num_kept(n) == k
        fastv = s[f"fastv@{r}"].prune
        assert isinstance(fastv, FastVSpec) and (fastv.start, fastv.stop) == (1, 1 + n)
        assert fastv.num_keep == k and fastv.layer == cfg.fastv_layer
        if 2 * r < 1:
            combo = s[f"divprune+fastv@{r}"]
            assert combo.prune.num_keep == k and combo.prune.stop == 1 + round(2 * r * n)
            vd = s.get(f"visiondrop+llm@{r}")
            if round(2 * r * n) > k:  # the LLM stages have tokens to drop
                assert vd.prune.num_kept[-1] == k and vd.prune.stop == 1 + round(2 * r * n)
                assert vd.select.num_kept(n) == round(2 * r * n)
        tp = s[f"transprune@{r}"].prune  # one TransPrune stage at FastV's layer
        assert tp.num_kept == (k,) and tp.layers == (cfg.fastv_layer,)
        assert tp.accumulate == (cfg.fastv_layer - 1,) and (tp.start, tp.stop) == (1, 1 + n)
        if k > 1:  # FEATHER: one stage at FastV's layer
            feather = s[f"feather@{r}"].prune
            assert feather.num_keep[-1] == k and feather.layers == (cfg.fastv_layer,)
    assert not s["coverage_vision@0.5"].select.coverage_text
    # the gpu preset: 3x3 mosaics, patch 7 -> 12 x 12 = 144 visual tokens
    gpu = vtp.PRESETS["gpu"]
    gcfg = vtp.vlm_config(gpu, (28, 28))
    assert gcfg.num_visual == 144 and len(vtp.settings(gpu, gcfg)) > 40
    assert s["coverage@0.5"].select.coverage_text


def test_cell_pool_and_kept_stats():
    fv = np.arange(2 * 16 * 3, dtype=np.float32).reshape(2, 16, 3)  # 4x4 patches, 2x2 cells
    pooled = np.asarray(vtp.cell_pool(fv, (4, 4), 2))
    for b in range(2):
        for cell, patches in enumerate([(0, 1, 4, 5), (2, 3, 6, 7), (8, 9, 12, 13),
                                        (10, 11, 14, 15)]):  # fmt: skip
            np.testing.assert_allclose(pooled[b, cell], fv[b, list(patches)].mean(0))
    v = vtp.Vocab(2)
    ev = {
        "family": np.array([0, 0, 1]),
        "question": np.array([[v["WHICH"], v["CELL_2"], v["?"]],
                              [v["WHICH"], v["CELL_1"], v["?"]],
                              [v["COUNT"], v["DIG_3"], v["?"]]]),
    }  # fmt: skip
    # row 1: cell (1, 0) hit; row 2: miss; -2 = dropped in the LLM, -1 = a CLS token (counts)
    kept = np.array([[8, vtp.DROPPED, -1], [0, 15, vtp.DROPPED], [2, 3, vtp.DROPPED]])
    stats = vtp.kept_stats(kept, ev, (4, 4), 2)
    assert stats["cell_hit_rate"] == 0.5
    np.testing.assert_allclose(stats["kept_row_mean"], np.mean([2, 0, 3, 0, 0]) / 3)
    assert stats["visual_tokens_last_layer"] == 6 / 3


@pytest.mark.slow  # ~45 s on 2 cores; the default tests run the same tiny pipeline once
def test_killed_run_resumes_with_identical_results(reference, tmp_path):
    _, want = reference
    workdir = tmp_path / "killed"
    returncode = kill_after_first_checkpoint(
        "pruneax.experiments.vlm_token_pruning", ARGS, workdir, workdir / "checkpoints" / "train"
    )
    assert returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()

    vtp.main([*ARGS, "--workdir", str(workdir)])
    got = json.loads((workdir / "results.json").read_text())  # as the reference: its JSON
    assert got["train_losses"] == want["train_losses"]
    assert got["evals"] == want["evals"]  # same accuracies: same trained weights


def test_resume_refuses_a_different_config(reference):
    workdir, _ = reference
    other = dataclasses.replace(vtp.PRESETS["tiny"], keep_ratios=(0.5,))
    with pytest.raises(ValueError, match="different config"):
        vtp.run(other, workdir)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(methods=("fastervlm", "magic")), "magic"),
        (dict(llm_methods=("fastv", "nope")), "nope"),
        (dict(keep_ratios=(0.0,)), "keep_ratios"),
        (dict(ckpt_every=15), "multiple of log_every"),
        (dict(position_ablation=("bogus",)), "position_ablation"),
    ],
)
def test_bad_configs_are_refused(tmp_path, kw, match):
    bad = dataclasses.replace(vtp.PRESETS["tiny"], **kw)
    with pytest.raises(ValueError, match=match):
        vtp.run(bad, tmp_path)
