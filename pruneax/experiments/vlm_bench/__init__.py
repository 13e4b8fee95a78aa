"""A benchmark harness for real VLMs: readers and official scorers of the benchmarks the visual
token pruning papers report, and ``run_benchmark`` (also ``python -m
pruneax.experiments.vlm_bench``): a transformers VLM checkpoint (LLaVA-1.5, LLaVA-NeXT,
PaliGemma) evaluated under several visual-token pruning methods and budgets, batched greedy
decoding, resumable, with results JSON / CSV and plots."""

from pruneax.experiments.vlm_bench import _all  # noqa: F401
from pruneax.experiments.vlm_bench._items import BENCHMARKS, Benchmark, Item, register
from pruneax.experiments.vlm_bench._run import run_benchmark
from pruneax.experiments.vlm_bench._run_methods import method_names

__all__ = ["BENCHMARKS", "Benchmark", "Item", "method_names", "register", "run_benchmark"]
