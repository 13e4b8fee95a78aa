"""TextVQA (Singh et al., 2019) validation set: VQA accuracy with the official normalisation.

Followed: LLaVA's ``llava/eval/eval_textvqa.py`` + ``m4c_evaluator.py``
(``TextVQAAccuracyEvaluator``, transcribed in ``_vqa_norm``): a prediction scores the mean over
the 10 leave-one-out subsets of ``min(1, #humans who gave it / 3)``, after the EvalAI answer
normalisation of both sides. Prompts: split ``"val"`` is the question + "Answer the question
using a single word or phrase." (lmms-eval's ``textvqa_val`` default); split ``"val_ocr"`` is
LLaVA-1.5's ``llava_textvqa_val_v051_ocr.jsonl`` prompt, which inserts
``"Reference OCR token: t1, t2, ..."`` (the Rosetta OCR tokens; no line for an image without
tokens) between the question and the instruction - the setting of the LLaVA-1.5 paper (58.2
for 7B) and of the token-pruning papers that reuse LLaVA's scripts.

Deviations: none in the metric. Budget: ``max_new_tokens=16`` (LLaVA uses 128).
``main``: VQA accuracy in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pruneax.experiments.vlm_bench import _io
from pruneax.experiments.vlm_bench._items import Benchmark, Item, register
from pruneax.experiments.vlm_bench._vqa_norm import vqa_accuracy

NAME = "textvqa"
SPLITS = ("val", "val_ocr")
MAX_NEW_TOKENS = 16
QUESTIONS = "TextVQA_0.5.1_val.json"
OCR = "TextVQA_Rosetta_OCR_v0.2_val.json"


def _ocr_tokens(root, rows) -> dict:
    """``{image_id: tokens}``: from the question rows if they carry ``ocr_tokens``, else from
    the Rosetta OCR file."""
    if all(isinstance(r, dict) and "ocr_tokens" in r for r in rows):
        return {r.get("image_id"): r["ocr_tokens"] for r in rows}
    path = _io.first_existing(root, [OCR], f"{OCR} (needed by split 'val_ocr')", NAME)
    data = _io.load_json(path, NAME)
    data = data.get("data") if isinstance(data, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"{NAME}: {str(path)!r} must hold {{'data': [...]}}")
    return {
        _io.field(r, "image_id", f"{n} of {OCR}", NAME): _io.field(r, "ocr_tokens", f"{n}", NAME)
        for n, r in enumerate(data, 1)
    }


def read(data_dir, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read the TextVQA 0.5.1 validation questions.

    Expected layout (TextVQA's official release)::

        data_dir/TextVQA_0.5.1_val.json   # {"data": [{question_id, image_id, question,
                                           #            answers: [10 strings], ...}]}
        data_dir/train_images/<image_id>.jpg   # val images live in train_images/
        data_dir/TextVQA_Rosetta_OCR_v0.2_val.json   # only for split "val_ocr"

    Args:
      data_dir: the folder above.
      split: ``"val"`` (default for ``None``) or ``"val_ocr"`` (LLaVA-1.5's OCR-token prompt).
      limit: keep the first ``limit`` questions.

    Returns:
      One ``Item`` per question, id = question id, answer = the 10 human answers.

    Raises:
      ValueError: missing folder or file, unknown split, malformed row (not 10 answers...).
    """
    root = _io.data_root(data_dir, NAME)
    limit = _io.check_limit(limit, NAME)
    (sp,) = _io.check_split(split or "val", SPLITS, NAME)
    path = _io.first_existing(root, [QUESTIONS], QUESTIONS, NAME)
    images = _io.first_existing(root, ["train_images"], "train_images/ folder", NAME)
    data = _io.load_json(path, NAME)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{NAME}: {str(path)!r} must hold {{'data': [questions]}}")
    rows = rows[:limit]
    ocr = _ocr_tokens(root, rows) if sp == "val_ocr" else {}
    items = []
    for n, row in enumerate(rows, 1):
        where = f"{n} of {path.name}"
        answers = _io.field(row, "answers", where, NAME)
        if not (isinstance(answers, list) and len(answers) == 10):
            raise ValueError(f"{NAME}: malformed row {where}: expected 10 answers")
        image_id = _io.field(row, "image_id", where, NAME)
        question = str(_io.field(row, "question", where, NAME))
        if sp == "val_ocr":
            if image_id not in ocr:
                raise ValueError(f"{NAME}: no OCR tokens for image {image_id!r} ({where})")
            tokens = [str(t) for t in ocr[image_id]]
            if tokens:  # LLaVA's file has no OCR line for an image without tokens
                question += "\nReference OCR token: " + ", ".join(tokens)
        items.append(
            Item(
                id=str(_io.field(row, "question_id", where, NAME)),
                image=str(images / f"{image_id}.jpg"),
                question=f"{question}\n{_io.SHORT_ANSWER}",
                answer=[str(a) for a in answers],
                meta={"split": sp},
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
    return items


def score(items: Sequence[Item], predictions: Mapping[str, str]) -> dict:
    """VQA accuracy (percent): the mean over questions of the soft score of the prediction.

    Raises:
      ValueError: if a prediction is missing.
    """
    texts = _io.predictions_for(items, predictions, NAME)
    acc = 100 * _io.mean(vqa_accuracy(t, it.answer) for it, t in zip(items, texts, strict=True))
    return {"main": acc, "metric": "VQA accuracy (%)", "accuracy": acc, "n": len(items)}


register(
    Benchmark(
        name=NAME,
        read=read,
        score=score,
        description="TextVQA val; main = VQA accuracy with the official normalisation (%)",
    )
)
