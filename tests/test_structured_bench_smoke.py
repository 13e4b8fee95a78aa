"""Smoke test of the structured-pruning benchmark: ``python benchmarks/structured.py --smoke``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import structured


def test_smoke_structured_benchmark(tmp_path):
    out = tmp_path / "structured.md"
    assert structured.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["model"], r["budget"]) for r in rows] == [
        (m, b) for m in ("ViT mnist/4", "Llama") for b in ("dense", "0.75", "0.5")
    ]
    for r in rows:
        assert r["median_s"] > 0 and r["speedup"] > 0 and all(t > 0 for t in r["times_s"])
        if r["budget"] != "dense":
            assert r["params_ratio"] <= float(r["budget"]) and r["ideal_speedup"] > 1
    assert out.read_text().count("| Llama |") == 3
