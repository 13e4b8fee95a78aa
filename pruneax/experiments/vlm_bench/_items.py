"""The harness's shared vocabulary: one benchmark question (``Item``) and one benchmark
(``Benchmark``: a reader of its official files and a scorer of predictions).

Every benchmark module registers one ``Benchmark`` in ``BENCHMARKS``; the runner only ever sees
``Item`` s and hands back ``{item.id: generated text}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Item:
    """One question of a benchmark, ready for a VLM.

    Attributes:
      id: unique within the benchmark run (the resume key and the predictions' key).
      image: a path to an image file, or the encoded image bytes (MMBench's TSV carries base64
        images; the reader decodes them to bytes).
      question: the text that follows the image in the user turn, with the benchmark's
        official instruction appended (for example LLaVA's "Answer the question using a single
        word or phrase."). The runner wraps it in the model family's chat template.
      answer: the ground truth in the form the benchmark's scorer needs (a string, a list of
        ten human answers, an option letter...).
      meta: everything else the scorer needs (split, category, subtask, circular group,
        option texts...), JSON-serialisable.
      max_new_tokens: the generation budget the benchmark's official setting uses.
    """

    id: str
    image: str | bytes
    question: str
    answer: Any
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_new_tokens: int = 16


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark: ``read(data_dir, split=None, limit=None) -> list[Item]`` reads its official
    files from a local folder; ``score(items, predictions) -> dict`` scores generated texts
    (``predictions[item.id]``) with the official normalisation and metrics and returns a
    JSON-serialisable dict whose ``"main"`` entry is the headline number the papers quote."""

    name: str
    read: Callable[..., list[Item]]
    score: Callable[[list[Item], Mapping[str, str]], dict[str, Any]]
    description: str = ""


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to ``BENCHMARKS`` under its name (a duplicate name is an error)."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"register: benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark
