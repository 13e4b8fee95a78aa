"""GQA (Hudson & Manning, 2019), testdev-balanced: exact-match accuracy.

Followed: LLaVA's ``scripts/convert_gqa_for_eval.py`` (a prediction is ``text.rstrip('.')
.lower()``) and GQA's official ``eval.py`` (a question is right iff the prediction equals the
gold ``answer`` string; accuracy over the balanced questions, also split into "open" (structural
type ``query``) and "binary" (all others) and per structural type). The prompt is LLaVA-1.5's
(``llava_gqa_testdev_balanced.jsonl``): the question + "Answer the question using a single word
or phrase."

Deviations: the prediction is also stripped of surrounding whitespace (LLaVA's generation
scripts strip their outputs before writing them); the consistency, validity, plausibility,
grounding and distribution metrics of ``eval.py`` need the scene graphs and choices files and
are not computed. Budget: ``max_new_tokens=16`` (LLaVA uses 128). ``main``: accuracy in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pruneax.experiments.vlm_bench import _io
from pruneax.experiments.vlm_bench._items import Benchmark, Item, register

NAME = "gqa"
SPLITS = ("testdev", "val")
_FILES = {"testdev": "testdev_balanced_questions.json", "val": "val_balanced_questions.json"}
MAX_NEW_TOKENS = 16


def clean(text: str) -> str:
    """LLaVA's GQA prediction cleaning: strip, drop trailing periods, lower-case."""
    return text.strip().rstrip(".").lower()


def read(data_dir, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read GQA's balanced questions.

    Expected layout (GQA's ``questions1.2.zip`` and ``images.zip``)::

        data_dir/testdev_balanced_questions.json  # {question id: {imageId, question, answer,
        data_dir/val_balanced_questions.json      #   types: {structural, semantic}, ...}}
        data_dir/images/<imageId>.jpg             # (the json files may also sit in questions/)

    Args:
      data_dir: the folder above.
      split: ``"testdev"`` (testdev-balanced, the split the papers report; the default for
        ``None``) or ``"val"`` (val-balanced).
      limit: keep the first ``limit`` questions.

    Returns:
      One ``Item`` per question, id = GQA question id, answer = the gold answer string.

    Raises:
      ValueError: missing folder or file, unknown split, malformed row.
    """
    root = _io.data_root(data_dir, NAME)
    limit = _io.check_limit(limit, NAME)
    (sp,) = _io.check_split(split or "testdev", SPLITS, NAME)
    fname = _FILES[sp]
    path = _io.first_existing(root, [fname, f"questions/{fname}"], fname, NAME)
    images = _io.first_existing(root, ["images"], "images/ folder", NAME)
    table = _io.load_json(path, NAME)
    if not isinstance(table, dict):
        raise ValueError(f"{NAME}: {str(path)!r} must hold a JSON object {{question id: question}}")
    items = []
    for qid, row in list(table.items())[:limit]:
        where = f"{qid!r} of {path.name}"
        types = row.get("types") if isinstance(row, dict) else None
        items.append(
            Item(
                id=str(qid),
                image=str(images / f"{_io.field(row, 'imageId', where, NAME)}.jpg"),
                question=f"{_io.field(row, 'question', where, NAME)}\n{_io.SHORT_ANSWER}",
                answer=str(_io.field(row, "answer", where, NAME)),
                meta={
                    "split": sp,
                    "structural": (types or {}).get("structural"),
                    "semantic": (types or {}).get("semantic"),
                },
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
    return items


def score(items: Sequence[Item], predictions: Mapping[str, str]) -> dict:
    """Exact-match accuracy (percent) overall, open/binary and per structural/semantic type.

    Raises:
      ValueError: if a prediction is missing.
    """
    texts = _io.predictions_for(items, predictions, NAME)
    right = [clean(t) == it.answer for it, t in zip(items, texts, strict=True)]
    groups: dict[str, dict[str, list[bool]]] = {"structural": {}, "semantic": {}, "answer_type": {}}
    for it, ok in zip(items, right, strict=True):
        structural = it.meta.get("structural")
        if structural:
            groups["structural"].setdefault(structural, []).append(ok)
            kind = "open" if structural == "query" else "binary"
            groups["answer_type"].setdefault(kind, []).append(ok)
        if it.meta.get("semantic"):
            groups["semantic"].setdefault(it.meta["semantic"], []).append(ok)
    acc = _io.percent(sum(right), len(right))
    out = {"main": acc, "metric": "exact-match accuracy (%)", "accuracy": acc, "n": len(right)}
    for name, table in groups.items():
        out[name] = {k: _io.percent(sum(v), len(v)) for k, v in sorted(table.items())}
    return out


register(
    Benchmark(
        name=NAME,
        read=read,
        score=score,
        description="GQA testdev-balanced; main = exact-match accuracy (%)",
    )
)
