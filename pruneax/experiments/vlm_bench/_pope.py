"""POPE (Li et al., 2023): object-hallucination yes/no questions on COCO val2014.

Followed: LLaVA's ``llava/eval/eval_pope.py`` (answer extraction and metrics) and
``scripts/v1_5/eval/pope.sh`` (question prompt, one question file per split). The yes/no rule:
keep the text before the first period, delete commas, split on single spaces; the answer is
"no" when a word equals ``No``, ``not`` or ``no``, and "yes" otherwise (so an empty or off-topic
answer counts as yes, as in the original). Per split: accuracy, precision, recall and F1 of the
"yes" class, and the ratio of "yes" answers, all in percent.

Headline (``main``): the mean F1 over the splits read, in percent - the POPE number the
LLaVA-1.5 paper and the token-pruning papers (FastV, SparseVLM, VisionZip tables) quote.
Deviations: precision/recall/F1 of an empty denominator are 0 (the original divides by zero).
Budget: ``max_new_tokens=16`` (LLaVA uses 128; only the first sentence is read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pruneax.experiments.vlm_bench import _io
from pruneax.experiments.vlm_bench._items import Benchmark, Item, register

NAME = "pope"
SPLITS = ("adversarial", "popular", "random")
MAX_NEW_TOKENS = 16
_IMAGE_DIRS = ("val2014", "images", "coco/val2014", "COCO/val2014")


def yes_no(text: str) -> str:
    """LLaVA's POPE extraction: ``"no"`` if the first sentence says no/not, else ``"yes"``."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def read(data_dir, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read POPE's question files.

    Expected layout (the files of the POPE repository's ``output/coco/`` folder and COCO's
    val2014 images)::

        data_dir/coco_pope_adversarial.json   # JSON lines: question_id, image, text, label
        data_dir/coco_pope_popular.json       # (the files may also sit in data_dir/coco/ or
        data_dir/coco_pope_random.json        #  data_dir/output/coco/)
        data_dir/val2014/COCO_val2014_000000310196.jpg ...   (or images/, coco/val2014/)

    Args:
      data_dir: the folder above.
      split: ``"adversarial"``, ``"popular"``, ``"random"`` or ``None`` for all three.
      limit: keep the first ``limit`` questions of each split.

    Returns:
      One ``Item`` per question, id ``"<split>/<question_id>"``, answer ``"yes"``/``"no"``.

    Raises:
      ValueError: missing folder or file, unknown split, malformed row.
    """
    root = _io.data_root(data_dir, NAME)
    limit = _io.check_limit(limit, NAME)
    splits = _io.check_split(split, SPLITS, NAME)
    images = _io.first_existing(root, _IMAGE_DIRS, "COCO val2014 image folder", NAME)
    items = []
    for sp in splits:
        fname = f"coco_pope_{sp}.json"
        path = _io.first_existing(
            root, [fname, f"coco/{fname}", f"output/coco/{fname}"], fname, NAME
        )
        rows = _io.load_jsonl(path, NAME)
        for n, row in enumerate(rows[:limit] if limit else rows, 1):
            where = f"{n} of {path.name}"
            label = str(_io.field(row, "label", where, NAME)).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(
                    f"{NAME}: malformed row {where}: label must be yes/no, got {label!r}"
                )
            question = str(_io.field(row, "text", where, NAME)).strip()
            items.append(
                Item(
                    id=f"{sp}/{_io.field(row, 'question_id', where, NAME)}",
                    image=str(images / str(_io.field(row, "image", where, NAME))),
                    question=f"{question}\n{_io.SHORT_ANSWER}",
                    answer=label,
                    meta={"split": sp},
                    max_new_tokens=MAX_NEW_TOKENS,
                )
            )
    return items


def _metrics(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (of "yes") and yes-ratio, in percent, plus the counts."""
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, labels, strict=True))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, labels, strict=True))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, labels, strict=True))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, labels, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": _io.percent(tp + tn, len(preds)),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": _io.percent(tp + fp, len(preds)),
        "n": len(preds),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def score(items: Sequence[Item], predictions: Mapping[str, str]) -> dict:
    """Score POPE predictions: per split and mean accuracy / F1; ``main`` = mean F1 (percent).

    Raises:
      ValueError: if a prediction is missing.
    """
    texts = _io.predictions_for(items, predictions, NAME)
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for item, text in zip(items, texts, strict=True):
        preds, labels = by_split.setdefault(item.meta["split"], ([], []))
        preds.append(yes_no(text))
        labels.append(item.answer)
    per_split = {sp: _metrics(*by_split[sp]) for sp in sorted(by_split)}
    mean_f1 = _io.mean(m["f1"] for m in per_split.values())
    return {
        "main": mean_f1,
        "metric": "mean F1 over splits (%)",
        "f1": mean_f1,
        "accuracy": _io.mean(m["accuracy"] for m in per_split.values()),
        "splits": per_split,
    }


register(
    Benchmark(
        name=NAME,
        read=read,
        score=score,
        description="POPE object hallucination (yes/no); main = mean F1 over splits (%)",
    )
)
