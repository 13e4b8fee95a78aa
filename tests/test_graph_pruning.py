"""experiments.graph_pruning: a minimal run end to end, its outputs, resume, claims, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pruneax import graph as G
from pruneax.experiments import graph_pruning as gp

CFG = dataclasses.replace(
    gp.PRESETS["tiny"],
    iterations=30,
    finetune_iterations=6,
    amounts=(0.5,),
    methods=("global_l2", "masksparsity"),
    sparsity_iterations=8,
    weight_sparsities=(0.9,),
    eval_size=120,
    eval_batch=60,
    calib_batches=1,
    throughput_repeats=2,
    ckpt_every=20,
    log_every=20,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gp")
    return workdir, gp.run(CFG, workdir)


def test_outputs_budgets_and_claims(result):
    workdir, r = result[0], json.loads(json.dumps(result[1]))  # a copy: rows are popped
    assert {p.name for p in workdir.iterdir()} >= {
        "results.json",
        "results.csv",
        "graph_pruning.png",
    }
    assert json.loads((workdir / "results.json").read_text())["jobs"].keys() == r["jobs"].keys()
    assert len((workdir / "results.csv").read_text().strip().splitlines()) == 1 + 4
    dense = r["dense"]
    assert dense["prunable"] == 12 and dense["inexact"] == 0  # ResNet-20: 3 residual + 9 inner
    for method in ("iss_p", "iht"):  # unstructured: ceil(0.9 n) of every kernel is zero
        row = r["jobs"].pop(f"{method}@w0.9")
        assert 0.9 <= row["weight_sparsity"] < 0.91 and row["params"] < dense["params"]
        assert 0.0 <= row["accuracy"] <= 1.0 and row["flops_ratio"] == 1.0
    for name, row in r["jobs"].items():
        assert row["flops"] <= 0.5 * dense["flops"] + 1, name  # the budget is met
        assert row["params"] < dense["params"]
        assert 0.0 <= row["accuracy_before_ft"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["speedup"] > 0
    ms = r["jobs"]["masksparsity@0.5"]
    assert ms["gamma_after"] < ms["gamma_before"]  # the regularised scales shrank
    assert ms["channels_kept"] == r["jobs"]["global_l2@0.5"]["channels_kept"]  # same selection
    claims = gp.claims(result[1])  # SPA (no uniform_l1: not measured), MaskSparsity x 2,
    assert len(claims) == 5 and "50% of the FLOPs removed" in claims[0].claim  # ISS-P, speed
    assert "iterative soft shrinkage" in claims[3].claim and claims[3].verdict != "not measured"
    assert claims[0].verdict == "not measured"


def test_a_finished_run_is_not_run_again(result, monkeypatch):
    workdir, r = result

    def boom(*a, **k):
        raise AssertionError("a finished job was pruned again")

    monkeypatch.setattr(G, "prune", boom)
    again = gp.run(CFG, workdir)
    assert again["jobs"] == r["jobs"] and again["dense"] == r["dense"]


def test_bad_config_is_refused(tmp_path):
    bad = (
        ("dataset", "imagenet"),
        ("methods", ("obspa",)),
        ("amounts", (1.0,)),
        ("weight_sparsities", (0.0,)),
        ("unstructured", ("snip",)),
        ("soft_fraction", 1.5),
    )
    for field, value in bad:
        with pytest.raises(ValueError, match=field):
            gp.run(dataclasses.replace(CFG, **{field: value}), tmp_path / field)
