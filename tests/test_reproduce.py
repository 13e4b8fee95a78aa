"""pruneax.experiments.reproduce: the verdict rule, the claim readers, a resumable run + report."""

import json

import pytest

from pruneax import lab
from pruneax.experiments import lottery_ticket, vit_token_pruning
from pruneax.experiments import reproduce as R


def test_compare_needs_two_standard_errors():
    # p = 0.9, n = 1000: 2 SE of a difference = 2 sqrt(2 * 0.09 / 1000) = 0.0268
    assert lab.compare(0.92, 0.88, 1000)[0] == lab.HOLDS
    assert lab.compare(0.90, 0.89, 1000)[0] == lab.NOISE
    assert lab.compare(0.88, 0.92, 1000)[0] == lab.FAILS
    # "a matches b": holds unless a is worse by more than 2 SE
    assert lab.compare(0.89, 0.90, 1000, more=False)[0] == lab.HOLDS
    assert lab.compare(0.85, 0.90, 1000, more=False)[0] == lab.FAILS
    assert lab.compare(float("nan"), 0.9, 1000)[0] == lab.NA
    assert "2 SE = 2.68" in lab.compare(0.92, 0.88, 1000)[1]


def _vit(topk, random, divprune, n=5000):
    row = lambda m, acc, r: {"method": m, "layer": 2, "ratio": r, "accuracy": acc}
    evals = {
        "dense@L0:1.0": row("dense", 0.97, 1.0),
        **{f"{m}@L2:0.5": row(m, a, 0.5) for m, a in (("topk", topk), ("random", random))},
        **{f"{m}@L2:0.1": row(m, a, 0.1) for m, a in (("topk", topk), ("divprune", divprune))},
    }
    cfg = {"dataset": "mnist", "eval_size": n, "variant": "mnist/4"}
    return {"config": cfg, "evals": evals, "throughput": {}, "finetune": {}}


def _by_claim(r):
    """Claims keyed by their text without the model / layer label."""
    return {c.claim.split(" (")[0]: c for c in vit_token_pruning.claims(r)}


def test_vit_claims_follow_the_numbers():
    claims = _by_claim(_vit(0.95, 0.90, 0.955))
    top = claims["Attention top-k beats random selection, keep 0.5"]
    assert top.verdict == lab.HOLDS and "keep 0.5 before block 2" in top.measured
    assert "(before block 2; pruneax mnist/4 trained here, mnist)" in top.claim
    div = claims["Diversity beats attention top-k at aggressive budgets"]
    assert div.verdict == lab.NOISE and "keep 0.1" in div.measured
    claims = _by_claim(_vit(0.90, 0.95, 0.80))
    assert claims["Attention top-k beats random selection, keep 0.5"].verdict == lab.FAILS
    assert claims["Diversity beats attention top-k at aggressive budgets"].verdict == lab.FAILS
    # a method that was not run is reported as not measured, not silently dropped
    assert claims["Coverage beats attention top-k at aggressive budgets"].verdict == lab.NA


def _two_layers():
    """top-k beats random before block 1 and loses before block 2 (n = 10,000: 2 SE ~ 0.6 pt)."""
    acc = {
        ("topk", 1, 0.5): 0.95, ("random", 1, 0.5): 0.90,
        ("topk", 2, 0.5): 0.88, ("random", 2, 0.5): 0.93,
        ("topk", 1, 0.1): 0.80, ("random", 1, 0.1): 0.70,
        ("topk", 2, 0.1): 0.60, ("random", 2, 0.1): 0.60,
        ("tome", 1, 0.1): 0.90,
    }  # fmt: skip
    flops = {0.5: 0.6, 0.1: 0.2}
    evals = {"dense@L0:1.0": {"method": "dense", "layer": 0, "ratio": 1.0, "accuracy": 0.97}}
    for (m, layer, q), a in acc.items():
        f = 0.4 if m == "tome" else flops[q]
        e = {"method": m, "layer": layer, "ratio": q, "accuracy": a, "flops_ratio": f}
        evals[f"{m}@L{layer}:{q}"] = e
    cfg = {
        "dataset": "mnist", "eval_size": 10_000, "methods": ["random", "topk", "tome"],
        "model_name": "someone's ViT",
    }  # fmt: skip
    return {"config": cfg, "evals": evals, "throughput": {}, "finetune": {}}


def test_vit_claims_are_per_layer_and_per_model():
    claims = vit_token_pruning.claims(_two_layers())
    assert all("someone's ViT" in c.claim for c in claims)
    verdicts = {c.claim: c.verdict for c in claims}
    moderate = "Attention top-k beats random selection, keep 0.5"
    assert verdicts[f"{moderate} (before block 1; someone's ViT)"] == lab.HOLDS
    assert verdicts[f"{moderate} (before block 2; someone's ViT)"] == lab.FAILS
    extreme = "Attention top-k beats random selection, keep 0.1"
    assert verdicts[f"{extreme} (before block 2; someone's ViT)"] == lab.NOISE  # equal
    every = next(c for c in claims if "at every pruning layer and keep ratio" in c.claim)
    assert every.verdict == lab.FAILS
    assert every.measured == (
        "holds at L1:0.5, L1:0.1; does not hold at L2:0.5; within noise at L2:0.1"
    )
    # ToMe at 40% FLOPs vs top-k interpolated between 20% (0.80) and 60% (0.95): 0.875
    tome = [c for c in claims if c.claim.startswith("ToMe merging beats topk")]
    assert [c.verdict for c in tome] == [lab.HOLDS, lab.NA]  # no ToMe before block 2
    assert "90.00 vs 87.50" in tome[0].measured
    # EViT / DivPrune / coverage were not run: one "not measured" line each, not per layer
    na = [c for c in claims if c.measured.startswith("not run")]
    assert len(na) == 3 and all(c.verdict == lab.NA for c in na)


def test_reproduce_adds_the_pretrained_vit_when_its_checkpoint_is_there(tmp_path):
    vit = [e for e in R.EXPERIMENTS if e.name == "vit_token_pruning"]
    assert [j.key for j in R.jobs(vit, "cpu", str(tmp_path))] == ["vit_token_pruning"]
    ckpt = tmp_path.joinpath(*vit_token_pruning.PRETRAINED_RELATIVE)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    keys = [(j.key, j.preset) for j in R.jobs(vit, "cpu", str(tmp_path))]
    assert keys == [
        ("vit_token_pruning", "cpu"),
        ("vit_token_pruning_pretrained_mnist", "pretrained_mnist"),
    ]
    assert [j.key for j in R.jobs(vit, "tiny", str(tmp_path))] == ["vit_token_pruning"]


def test_lottery_claims_compare_the_sparsest_round():
    res = [
        {"kind": "imp", "round": 0, "remaining": 100.0, "final_test_acc": 0.98},
        {"kind": "imp", "round": 5, "remaining": 32.8, "final_test_acc": 0.985},
        {"kind": "reinit", "round": 5, "remaining": 32.8, "final_test_acc": 0.95},
        {"kind": "random_prune", "round": 5, "remaining": 32.8, "final_test_acc": 0.984},
    ]
    r = {"config": {"dataset": "mnist", "seeds": [0]}, "results": res}
    verdicts = [c.verdict for c in lottery_ticket.claims(r)]
    assert verdicts == [lab.HOLDS, lab.HOLDS, lab.NOISE]
    assert "32.8% of weights remaining, round 5" in lottery_ticket.claims(r)[0].measured


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="preset must be one of"):
        R.run("huge", tmp_path)
    with pytest.raises(ValueError, match="only must name experiments"):
        R.run("tiny", tmp_path, only=("nope",))


def test_run_writes_the_report_and_resumes(tmp_path, capsys):
    report = R.run("tiny", tmp_path, only=("token_demo",))
    text = (tmp_path / "report.md").read_text()
    assert "## Claims" in text and "token_demo/token_demo.png" in text
    assert "Preset `tiny`" in text and "python -m pruneax.experiments.token_demo" in text
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["experiments"]["token_demo"]["status"] == "done"
    assert saved["verdicts"] == report["verdicts"] and sum(report["verdicts"].values()) == 3
    capsys.readouterr()
    R.run("tiny", tmp_path, only=("token_demo",))  # finished: not run again
    assert "finished earlier, not rerun" in capsys.readouterr().out


def test_a_failing_experiment_is_reported_and_the_exit_code_says_so(tmp_path, monkeypatch):
    from pruneax.experiments import token_demo

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(token_demo, "run", broken)
    with pytest.raises(SystemExit) as exit_info:
        R.main(["--workdir", str(tmp_path), "--only", "token_demo"])
    assert exit_info.value.code == 1
    assert "RuntimeError: boom" in (tmp_path / "report.md").read_text()
