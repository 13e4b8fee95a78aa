"""Smoke run of the ViT token-pruning experiment; kill-and-resume gives identical results."""

from __future__ import annotations

import dataclasses
import pathlib
import signal

import pytest

from pruneax import models
from pruneax.experiments import vit_token_pruning as vtp
from pruneax.models.vit import vit_flops
from tests._resume import kill_after_first_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--preset", "tiny"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vtp_reference")
    out = vtp.main([*ARGS, "--workdir", str(workdir)])
    return workdir, out


def test_outputs_and_structure(reference):
    workdir, out = reference
    for name in ("results.json", "results.md", "accuracy.png", "speedup.png", "kept_patches.png"):
        assert (workdir / name).stat().st_size > 0, name
    cfg = vtp.PRESETS["tiny"]
    evals = out["evals"]
    assert evals["dense@L0:1.0"]["accuracy"] > 0.5  # it learned the digits (chance 0.1)
    for m in cfg.methods:
        for r in cfg.keep_ratios:
            e = evals[f"{m}@L{cfg.prune_layers[0]}:{r}"]
            assert "accuracy" in e or "skipped" in e, e
            if "accuracy" in e:
                assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 < e["flops_ratio"] < 1.0
                t = out["throughput"][f"{m}@L{cfg.prune_layers[0]}:{r}"]
                assert t["images_per_s"] > 0 and t["ideal_speedup"] > 1.0
    assert len(out["finetune"]) == cfg.finetune_top
    table = (workdir / "results.md").read_text()
    assert "Training-free accuracy" in table and "Fine-tuned" in table


def test_flops_and_token_counts():
    c = models.vit_config("mnist/4")  # 49 patches + CLS, 6 blocks
    plan = vtp.make_plan("topk", 3, 0.5, c)
    assert vtp.block_tokens(plan, c) == [[50, 50]] * 3 + [[26, 26]] * 3
    # EViT fuses inside block 2, after its attention: block 2's MLP already runs on 26 + 1
    evit = vtp.block_tokens(vtp.make_plan("evit", 3, 0.5, c), c)
    assert evit[2:] == [[50, 27], [27, 27], [27, 27], [27, 27]]
    d, m = c.hidden_size, c.mlp_dim
    per_block = lambda t: 2 * (4 * t * d * d + 2 * t * t * d + 2 * t * d * m)
    dense = vit_flops(c)
    outside = dense - 6 * per_block(50)  # patch embedding + head: the same for every plan
    assert vit_flops(c, plan) == outside + 3 * per_block(50) + 3 * per_block(26)
    tome = vtp.make_plan("tome", 3, 0.3, c)  # 49 -> 25 -> 15, merged inside blocks 2 and 3
    assert vtp.block_tokens(tome, c) == [[50, 50], [50, 50], [50, 26], [26, 16], [16, 16], [16, 16]]
    attn_mlp = lambda ta, tm: 2 * (4 * ta * d * d + 2 * ta * ta * d) + 4 * tm * d * m
    assert vit_flops(c, tome) == outside + sum(attn_mlp(a, b) for a, b in vtp.block_tokens(tome, c))
    with pytest.raises(ValueError):  # 49 -> 5 needs four merging blocks; only three follow
        vtp.make_plan("tome", 3, 0.1, c)


# slow (~100 s on a 2-core CPU): the default selection keeps the resume tests of
# lottery_ticket, instability and vlm_token_pruning
@pytest.mark.slow
def test_killed_run_resumes_with_identical_results(reference, tmp_path):
    _, want = reference
    workdir = tmp_path / "killed"
    returncode = kill_after_first_checkpoint(
        "pruneax.experiments.vit_token_pruning", ARGS, workdir, workdir / "checkpoints" / "train"
    )
    assert returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()

    got = vtp.main([*ARGS, "--workdir", str(workdir)])
    assert got["train_losses"] == want["train_losses"]
    assert got["evals"] == want["evals"]  # same accuracies: same trained weights
    assert got["finetune"] == want["finetune"]


def test_resume_refuses_a_different_config(reference):
    workdir, _ = reference
    other = dataclasses.replace(vtp.PRESETS["tiny"], keep_ratios=(0.7,))
    with pytest.raises(ValueError, match="different config"):
        vtp.run(other, workdir)


def test_unknown_method_is_refused(tmp_path):
    bad = dataclasses.replace(vtp.PRESETS["tiny"], methods=("topk", "magic"))
    with pytest.raises(ValueError, match="magic"):
        vtp.run(bad, tmp_path)
