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
    cfg = {"dataset": "mnist", "eval_size": n}
    return {"config": cfg, "evals": evals, "throughput": {}, "finetune": {}}


def test_vit_claims_follow_the_numbers():
    claims = {c.claim: c for c in vit_token_pruning.claims(_vit(0.95, 0.90, 0.955))}
    assert claims["Attention top-k beats random selection"].verdict == lab.HOLDS
    div = claims["Diversity beats attention top-k at aggressive budgets"]
    assert div.verdict == lab.NOISE and "keep 0.1" in div.measured
    claims = {c.claim: c for c in vit_token_pruning.claims(_vit(0.90, 0.95, 0.80))}
    assert claims["Attention top-k beats random selection"].verdict == lab.FAILS
    assert claims["Diversity beats attention top-k at aggressive budgets"].verdict == lab.FAILS
    # a method that was not run is reported as not measured, not silently dropped
    assert claims["Coverage beats attention top-k at aggressive budgets"].verdict == lab.NA


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
