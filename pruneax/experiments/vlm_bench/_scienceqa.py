"""ScienceQA-IMG (Lu et al., 2022): the test questions that come with an image.

Followed: LLaVA-1.5's ``llava/eval/eval_science_qa.py`` (letter extraction, accuracy over the
test split) and ``model_vqa_science.py`` with ``--single-pred-prompt`` (the instruction "Answer
with the option's letter from the given choices directly." after the options). The prompt is
``"Context: <hint>\\n"`` (only when the hint is not empty) + question + one ``"A. choice"`` line
per choice + the instruction, the layout of LLaVA-1.5's ``llava_test_CQM-A.json`` as lmms-eval's
``scienceqa_img`` rebuilds it. Letter extraction: the stripped answer if it is a letter A-E; else
its first letter when it starts with ``"X. "``; else the one match of ``The answer is ([A-Z]).``;
otherwise (or for a letter beyond the choices) the question is wrong - LLaVA-1.5's ``-1``; the
first LLaVA release drew a random choice instead, which we do not.

``main``: accuracy in percent over the image questions; per subject too. Deviations: none in the
metric. Budget: ``max_new_tokens=16`` (LLaVA uses 1024; the prompt asks for one letter).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from pruneax.experiments.vlm_bench import _io
from pruneax.experiments.vlm_bench._items import Benchmark, Item, register

NAME = "scienceqa"
SPLITS = ("test", "val", "minival", "train", "trainval", "minitrain")
OPTIONS = "ABCDE"
MAX_NEW_TOKENS = 16
_THE_ANSWER = re.compile(r"The answer is ([A-Z]).")


def extract_letter(text: str) -> str | None:
    """LLaVA-1.5's ScienceQA letter extraction; ``None`` when it fails."""
    text = text.strip()
    if text in tuple(OPTIONS):
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER.findall(text)
    return found[0] if len(found) == 1 else None


def prompt(question: str, choices: Sequence[str], hint: str) -> str:
    """The LLaVA-1.5 ScienceQA prompt (context, question, lettered choices, instruction)."""
    context = f"Context: {hint}\n" if hint.strip() else ""
    lines = "\n".join(f"{OPTIONS[i]}. {c}" for i, c in enumerate(choices))
    return f"{context}{question}\n{lines}\n{_io.LETTER_ANSWER}"


def read(data_dir, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read ScienceQA and keep the questions with an image (ScienceQA-IMG).

    Expected layout (ScienceQA's ``data/scienceqa`` release, as LLaVA uses it)::

        data_dir/problems.json     # {pid: {question, choices, answer (int), hint, image, subject}}
        data_dir/pid_splits.json   # {"test": [pid, ...], "val": [...], ...}
        data_dir/test/<pid>/image.png   (or data_dir/images/test/<pid>/image.png)

    Args:
      data_dir: the folder above.
      split: ``"test"`` (the default for ``None``; ScienceQA-IMG is its 2017 image questions) or
        another key of ``pid_splits.json``.
      limit: keep the first ``limit`` image questions.

    Returns:
      One ``Item`` per image question, id = pid, answer = the correct letter.

    Raises:
      ValueError: missing folder or file, unknown split, malformed problem.
    """
    root = _io.data_root(data_dir, NAME)
    limit = _io.check_limit(limit, NAME)
    (sp,) = _io.check_split(split or "test", SPLITS, NAME)
    problems = _io.load_json(
        _io.first_existing(root, ["problems.json"], "problems.json", NAME), NAME
    )
    splits = _io.load_json(
        _io.first_existing(root, ["pid_splits.json"], "pid_splits.json", NAME), NAME
    )
    if not isinstance(problems, dict) or not isinstance(splits, dict) or sp not in splits:
        raise ValueError(
            f"{NAME}: problems.json must map pid -> problem and pid_splits.json "
            f"must list split {sp!r}"
        )
    images = _io.first_existing(root, [sp, f"images/{sp}"], f"image folder {sp}/", NAME)
    items = []
    for pid in splits[sp]:
        prob = problems.get(str(pid))
        where = f"{pid!r} of problems.json"
        if prob is None:
            raise ValueError(f"{NAME}: pid_splits.json lists {pid!r}, absent from problems.json")
        if not _io.field(prob, "image", where, NAME):
            continue
        choices = [str(c) for c in _io.field(prob, "choices", where, NAME)]
        answer = _io.field(prob, "answer", where, NAME)
        if not (
            1 <= len(choices) <= len(OPTIONS)
            and isinstance(answer, int)
            and 0 <= answer < len(choices)
        ):
            raise ValueError(f"{NAME}: malformed problem {where}: choices / answer index")
        text = prompt(
            str(_io.field(prob, "question", where, NAME)), choices, str(prob.get("hint") or "")
        )
        items.append(
            Item(
                id=str(pid),
                image=str(images / str(pid) / str(prob["image"])),
                question=text,
                answer=string.ascii_uppercase[answer],
                meta={"subject": prob.get("subject"), "n_choices": len(choices)},
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
        if limit and len(items) >= limit:
            break
    return items


def score(items: Sequence[Item], predictions: Mapping[str, str]) -> dict:
    """Accuracy (percent) over the items, per subject too, and how many answers had no letter.

    Raises:
      ValueError: if a prediction is missing.
    """
    texts = _io.predictions_for(items, predictions, NAME)
    letters = [extract_letter(t) for t in texts]
    right = [
        letter is not None and letter in OPTIONS[: it.meta["n_choices"]] and letter == it.answer
        for it, letter in zip(items, letters, strict=True)
    ]
    subjects: dict[str, list[bool]] = {}
    for it, ok in zip(items, right, strict=True):
        subjects.setdefault(str(it.meta.get("subject")), []).append(ok)
    acc = _io.percent(sum(right), len(right))
    return {
        "main": acc,
        "metric": "ScienceQA-IMG accuracy (%)",
        "accuracy": acc,
        "n": len(right),
        "failed_extractions": sum(x is None for x in letters),
        "subjects": {k: _io.percent(sum(v), len(v)) for k, v in sorted(subjects.items())},
    }


register(
    Benchmark(
        name=NAME,
        read=read,
        score=score,
        description="ScienceQA-IMG test; main = accuracy (%)",
    )
)
