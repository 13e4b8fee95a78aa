"""Smoke run of the Vision Mamba (ToP-ViM) token-pruning experiment; kill-and-resume is exact."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from pruneax import models
from pruneax.experiments import ssm_token_pruning as stp
from tests._resume import kill_after_first_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--preset", "tiny"]


@pytest.fixture(scope="module")
def reference(notebook_run):
    """The tiny run of colabs/04_ssm_alignment.ipynb, executed in a fresh kernel from the wheel
    of this tree (tests/_notebooks.py): its folder and its results.json."""
    workdir = notebook_run("04_ssm_alignment") / "04_ssm_alignment"
    return workdir, json.loads((workdir / "results.json").read_text())


def test_outputs_and_structure(reference):
    workdir, out = reference
    for name in (
        "results.json",
        "results.md",
        "accuracy_flops.png",
        "metric_ablation.png",
        "finetune.png",
    ):
        assert (workdir / name).stat().st_size > 0, name
    cfg = stp.PRESETS["tiny"]
    evals = out["evals"]
    assert evals["dense"]["accuracy"] > 0.5  # it learned the digits (chance 0.1)
    assert evals["dense"]["flops_ratio"] == 1.0
    depth = dict(cfg.vim)["depth"]
    assert out["schedules"]["main"]["layers"] == list(stp.topvim_layers(depth)) == [1, 2, 3]
    names = ["topvim"] + [f"L1:{r}" for r in cfg.keep_ratios]
    for m in cfg.modes:
        for s in names:
            e = evals[f"{m}@{s}"]
            assert 0.0 <= e["accuracy"] <= 1.0, e
            if m == "aligned_exact":  # the reference runs every projection over all positions
                assert e["flops_ratio"] == 1.0
                assert out["fidelity"][f"{m}@{s}"]["logit_diff_exact"] == 0.0
            else:
                assert 0.0 < e["flops_ratio"] < 1.0, e
            assert len(e["block_tokens"]) == depth
    # main schedule: 16 patches -> 13 -> 11 -> 9 (ceil(0.8 n)), class token on top
    assert evals["naive@topvim"]["block_tokens"] == [17, 14, 12, 10]
    best = out["ablation_mode"]
    assert best in ("aligned_gap/own", "aligned_gap/prev")  # aligned and saving FLOPs
    assert sorted(out["metric_ablation"]) == sorted(cfg.metrics)
    for name in out["metric_ablation"].values():
        assert 0.0 <= evals[name]["accuracy"] <= 1.0
    assert [f["mode"] for f in out["finetune"].values()] == ["naive", best]
    assert set(out["throughput"]) == {"dense"} | {f"{m}@topvim" for m in cfg.modes}
    assert all(t["images_per_s"] > 0 for t in out["throughput"].values())
    table = (workdir / "results.md").read_text()
    for heading in ("Training-free accuracy", "Importance metric", "Fine-tuned", "throughput"):
        assert heading in table, heading


def test_full_keep_equals_dense():
    """A stage keeping every token changes nothing in any mode (untrained tiny model)."""
    c = models.vim_config("mnist/4", **dict(stp.PRESETS["tiny"].vim))
    model = models.Vim(c, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    dense = np.asarray(model(x).logits)
    everything = stp.Schedule("all", (1, 2), 1.0)
    for m in stp.DEFAULT_MODES:
        got = model(x, plan=stp.make_plan(m, everything)).logits
        np.testing.assert_allclose(np.asarray(got), dense, atol=1e-5, err_msg=m)


def test_schedules_and_names():
    assert stp.topvim_layers(24) == (5, 10, 15)  # ToP-ViM's released schedule
    assert stp.topvim_layers(12) == (3, 6, 9)
    assert stp.topvim_layers(8) == (2, 4, 6)
    assert stp.topvim_layers(4) == (1, 2, 3)
    assert stp.topvim_layers(2) == (1,)
    c = models.vim_config("mnist/4")
    cfg = dataclasses.replace(stp.PRESETS["cpu"], keep_ratios=(0.7, 0.3))
    main, singles = stp.schedules(cfg, c)
    assert main.layers == (2, 4, 6) and main.keep == 0.8
    assert [(s.layers, s.keep) for s in singles] == [((2,), 0.7), ((2,), 0.3)]
    plan = stp.make_plan("aligned_gap/prev", main, "l1")
    assert [(s.layer, s.mode, s.gap_rule, s.metric) for s in plan.stages] == [
        (i, "aligned_gap", "prev", "l1") for i in (2, 4, 6)
    ]
    assert plan.token_counts(c.num_patches) == (40, 32, 26)
    assert stp.eval_name("aligned_gap/own", main) == "aligned_gap/own@topvim"
    assert stp.eval_name("naive", singles[0], "random") == "naive@L2:0.7#random"
    with pytest.raises(ValueError, match="magic"):
        stp.make_plan("magic", main)


# slow (~150 s on a 2-core CPU): the default selection keeps the resume tests of
# lottery_ticket, instability and vlm_token_pruning
@pytest.mark.slow
def test_killed_run_resumes_with_identical_results(reference, tmp_path):
    _, want = reference
    workdir = tmp_path / "killed"
    returncode = kill_after_first_checkpoint(
        "pruneax.experiments.ssm_token_pruning", ARGS, workdir, workdir / "checkpoints" / "train"
    )
    assert returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()

    stp.main([*ARGS, "--workdir", str(workdir)])
    got = json.loads((workdir / "results.json").read_text())  # as the reference: its JSON
    assert got["train_losses"] == want["train_losses"]
    assert got["evals"] == want["evals"]  # same accuracies: same trained weights
    assert got["finetune"] == want["finetune"]
    assert got["fidelity"] == want["fidelity"]


def test_resume_refuses_a_different_config(reference):
    workdir, _ = reference
    other = dataclasses.replace(stp.PRESETS["tiny"], keep_ratios=(0.7,))
    with pytest.raises(ValueError, match="different config"):
        stp.run(other, workdir)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(modes=("naive", "magic")), "magic"),
        (dict(modes=()), "modes"),
        (dict(metrics=("clipped", "entropy")), "entropy"),
        (dict(keep_ratios=(0.5, 1.5)), "keep_ratios"),
        (dict(schedule_keep=0.0), "schedule_keep"),
        (dict(ckpt_every=30), "multiple of log_every"),
        (dict(throughput_batch=64), "eval_batch"),
        (dict(schedule_layers=(2, 9)), "layer 9"),  # the tiny model has 4 blocks
        (dict(single_layer=0), "layer"),
    ],
)
def test_bad_config_is_refused_before_training(tmp_path, change, match):
    bad = dataclasses.replace(stp.PRESETS["tiny"], **change)
    with pytest.raises(ValueError, match=match):
        stp.run(bad, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()
