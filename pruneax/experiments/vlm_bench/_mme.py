"""MME (Fu et al., 2023): 14 yes/no subtasks, scored as acc + acc+ per subtask.

Followed: MME's official ``eval_tool/calculation.py`` (also shipped in LLaVA's MME folder and
run by ``scripts/v1_5/eval/mme.sh``). An answer is lower-cased; it is "yes"/"no" if it is exactly
that, else "yes" if its first 4 characters contain "yes", else "no" if they contain "no", else
"other" (always wrong). Per subtask: ``acc`` = percent of questions right, ``acc+`` = percent of
images whose two questions are both right, score = ``acc + acc+`` (max 200). Perception = sum
over existence, count, position, color, posters, celebrity, scene, landmark, artwork, OCR (max
2000); cognition = sum over commonsense_reasoning, numerical_calculation, text_translation,
code_reasoning (max 800).

``main``: perception + cognition (the "MME" column of the token-pruning tables, e.g. 1862 for
LLaVA-1.5-7B in SparseVLM / VisionZip; LLaVA-1.5's own paper quotes perception alone, 1510.7;
both are in the result). Prompt: the released question, which already ends with "Please answer
yes or no." (LLaVA-1.5's question file keeps it). Deviations: pairs are grouped by image rather
than by consecutive lines (the same thing for the released files); answers are stripped of
surrounding whitespace first. Budget: ``max_new_tokens=16`` (LLaVA uses 128; only 4 characters
are read).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

from pruneax.experiments.vlm_bench import _io
from pruneax.experiments.vlm_bench._items import Benchmark, Item, register

NAME = "mme"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene")
PERCEPTION += ("landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation")
COGNITION += ("code_reasoning",)
SUBTASKS = PERCEPTION + COGNITION
SPLITS = ("perception", "cognition", *SUBTASKS)
MAX_NEW_TOKENS = 16
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def parse_yes_no(text: str) -> str:
    """MME's answer parsing: ``"yes"``, ``"no"`` or ``"other"``."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def _pairs(folder: pathlib.Path, subtask: str):
    """``[(image path, [(question, answer), ...])]`` of one subtask folder, sorted by name."""
    qa_dir, img_dir = folder / "questions_answers_YN", folder / "images"
    if not qa_dir.is_dir():  # the flat layout: image and .txt side by side
        qa_dir = img_dir = folder
    out = []
    for txt in sorted(qa_dir.glob("*.txt")):
        image = next(
            (img_dir / (txt.stem + e) for e in _IMAGE_EXT if (img_dir / (txt.stem + e)).is_file()),
            None,
        )
        if image is None:
            raise ValueError(f"{NAME}: no image for {str(txt)!r} in {str(img_dir)!r}")
        qa = []
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                raise ValueError(
                    f"{NAME}: malformed line {n} of {str(txt)!r}: expected 'question<TAB>Yes|No'"
                )
            qa.append((parts[0].strip(), parts[1].strip().lower()))
        if len(qa) != 2:
            raise ValueError(f"{NAME}: {str(txt)!r} must hold 2 questions, found {len(qa)}")
        out.append((image, qa))
    return out


def _pairs_from_results(txt: pathlib.Path, folder: pathlib.Path):
    """The same pairs from LLaVA's ``eval_tool/Your_Results/<subtask>.txt`` (lines
    ``image<TAB>question<TAB>Yes|No``, an image's two questions on consecutive lines); the
    images are looked up in ``folder/images/`` or ``folder/``."""
    out: list = []
    for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3 or parts[2].strip().lower() not in ("yes", "no"):
            raise ValueError(
                f"{NAME}: malformed line {n} of {str(txt)!r}: expected 'image<TAB>question<TAB>"
                "Yes|No'"
            )
        name = parts[0].strip()
        if not out or out[-1][0].name != name:
            image = folder / "images" / name
            out.append((image if image.is_file() else folder / name, []))
        out[-1][1].append((parts[1].strip(), parts[2].strip().lower()))
    for image, qa in out:
        if len(qa) != 2:
            raise ValueError(f"{NAME}: {image.name} in {str(txt)!r} must have 2 questions")
        if not image.is_file():
            raise ValueError(f"{NAME}: image {image.name!r} of {str(txt)!r} not found")
    return out


def read(data_dir, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read MME's official release.

    Expected layout (``MME_Benchmark_release_version``; ``data_dir`` may be that folder or hold
    it)::

        <subtask>/images/<name>.jpg + <subtask>/questions_answers_YN/<name>.txt
            (artwork, celebrity, landmark, posters, scene)
        <subtask>/<name>.png|jpg + <subtask>/<name>.txt     (the other 9 subtasks)
        each .txt: two lines "question<TAB>Yes|No" for the image of the same name

    A subtask folder with images but no question files is read from LLaVA's
    ``eval_tool/Your_Results/<subtask>.txt`` (under ``data_dir``) instead.

    Args:
      data_dir: the folder above.
      split: a subtask name, ``"perception"``, ``"cognition"``, or ``None`` for all 14.
      limit: keep the first ``limit`` images (two questions each) of each subtask.

    Returns:
      Two ``Item`` s per image, ids ``"<subtask>/<image file>/<0|1>"``, answer ``"yes"``/``"no"``.

    Raises:
      ValueError: missing folder or subtask, unknown split, malformed question file.
    """
    root = base = _io.data_root(data_dir, NAME)
    if (root / "MME_Benchmark_release_version").is_dir():
        root = root / "MME_Benchmark_release_version"
    limit = _io.check_limit(limit, NAME)
    (sp,) = _io.check_split(split, SPLITS, NAME) if split else [None]
    tasks = {None: SUBTASKS, "perception": PERCEPTION, "cognition": COGNITION}.get(sp, (sp,))
    items = []
    for task in tasks:
        folder = _io.first_existing(root, [task], f"subtask folder {task!r}", NAME)
        pairs = _pairs(folder, task)
        if not pairs:  # no question files: LLaVA's eval_tool/Your_Results/<subtask>.txt
            results = [f"eval_tool/Your_Results/{task}.txt", f"Your_Results/{task}.txt"]
            txt = _io.first_existing(base, results, f"question files for {task!r}", NAME)
            pairs = _pairs_from_results(txt, folder)
        for image, qa in pairs[:limit]:
            for k, (question, answer) in enumerate(qa):
                items.append(
                    Item(
                        id=f"{task}/{image.name}/{k}",
                        image=str(image),
                        question=question,
                        answer=answer,
                        meta={"subtask": task, "image": image.name},
                        max_new_tokens=MAX_NEW_TOKENS,
                    )
                )
    return items


def score(items: Sequence[Item], predictions: Mapping[str, str]) -> dict:
    """MME scores: per subtask acc, acc+ and acc + acc+; perception, cognition, their sum.

    Raises:
      ValueError: if a prediction is missing, or an image does not have exactly 2 questions.
    """
    texts = _io.predictions_for(items, predictions, NAME)
    per_image: dict[str, dict[str, list[bool]]] = {}
    for it, text in zip(items, texts, strict=True):
        task = it.meta["subtask"]
        per_image.setdefault(task, {}).setdefault(it.meta["image"], []).append(
            parse_yes_no(text) == it.answer
        )
    subtasks = {}
    for task, images in per_image.items():
        if any(len(v) != 2 for v in images.values()):
            raise ValueError(f"{NAME}: every image of {task!r} needs its 2 questions in items")
        acc = _io.percent(sum(map(sum, images.values())), 2 * len(images))
        acc_plus = _io.percent(sum(all(v) for v in images.values()), len(images))
        subtasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    perception = sum(subtasks[t]["score"] for t in PERCEPTION if t in subtasks)
    cognition = sum(subtasks[t]["score"] for t in COGNITION if t in subtasks)
    return {
        "main": perception + cognition,
        "metric": "MME perception + cognition score",
        "perception": perception,
        "cognition": cognition,
        "subtasks": {t: subtasks[t] for t in SUBTASKS if t in subtasks},
    }


register(
    Benchmark(
        name=NAME,
        read=read,
        score=score,
        description="MME; main = perception + cognition (sum over subtasks of acc + acc+)",
    )
)
