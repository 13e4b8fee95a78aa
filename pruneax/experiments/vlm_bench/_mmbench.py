"""MMBench (Liu et al., 2023) with circular evaluation, from its TSV.

Followed: LLaVA's ``llava/eval/model_vqa_mmbench.py`` (prompt: hint + newline + question, one
``"A. option"`` line per option up to the first empty one, then "Answer with the option's letter
from the given choices directly."; with ``--all-rounds`` one copy per option, the options rotated
left by one each round under fixed letters A, B, ...), and VLMEvalKit's MMBench evaluation
(``vlmeval/dataset/utils/multiple_choice.py``: circular copies of one question share
``index % 1e6``; a question counts only if every copy is answered right; rule-based answer
matching in ``_choice``). TSVs that already hold the circular copies (rows with index >= 1e6,
the legacy ``mmbench_dev_20230712.tsv`` style) are read as they are; otherwise the copies are
made as LLaVA's ``--all-rounds`` makes them.

``main``: circular accuracy in percent (the number the MMBench leaderboard and the token-pruning
tables quote); also per-copy ("vanilla") accuracy and both per category and l2-category.
Deviations: no ChatGPT answer matching (an unmatched answer is wrong); a TSV without an
``answer`` column (the hidden test split) can be read but not scored. Budget:
``max_new_tokens=16`` (LLaVA uses 1024; the prompt asks for one letter).
"""

from __future__ import annotations

import base64
import binascii
import csv
import pathlib
import sys
from collections.abc import Mapping, Sequence

from pruneax.experiments.vlm_bench import _io
from pruneax.experiments.vlm_bench._choice import infer_choice
from pruneax.experiments.vlm_bench._items import Benchmark, Item, register

NAME = "mmbench"
MAX_NEW_TOKENS = 16
LETTERS = "ABCDEFGHI"
CIRCULAR_OFFSET = 1_000_000
_FILES = {
    "dev": ("MMBench_DEV_EN.tsv", "mmbench_dev_20230712.tsv", "mmbench_dev_en_20231003.tsv"),
    "dev_cn": ("MMBench_DEV_CN.tsv", "mmbench_dev_cn_20231003.tsv"),
    "test": ("MMBench_TEST_EN.tsv", "mmbench_test_en_20231003.tsv"),
    "test_cn": ("MMBench_TEST_CN.tsv", "mmbench_test_cn_20231003.tsv"),
    "dev_v11": ("MMBench_DEV_EN_V11.tsv",),
}
SPLITS = tuple(_FILES)
_CN_INSTRUCTION = "请直接回答选项字母。"


def _missing(value) -> bool:
    """LLaVA's ``is_none``: empty, ``nan`` or ``none`` (pandas reads empty cells as NaN)."""
    return value is None or str(value).strip().lower() in ("", "nan", "none")


def _rows(path: pathlib.Path) -> list[dict]:
    """The TSV's rows as dicts (base64 images exceed csv's default field size)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    needed = {"index", "question", "A", "B", "image"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{NAME}: {str(path)!r} must be a TSV with columns {sorted(needed)}")
    return rows


def _prompt(row: dict, options: Sequence[str], cn: bool) -> str:
    """LLaVA's MMBench prompt for one ordering of the options."""
    text = row["question"]
    if not _missing(row.get("hint")):
        text = f"{row['hint']}\n{text}"
    text += "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{text}\n{_CN_INSTRUCTION if cn else _io.LETTER_ANSWER}"


def _image(row: dict, images: dict[str, str], decoded: dict[str, bytes], where: str) -> bytes:
    """Decode the row's base64 image (VLMEvalKit stores a copy's image as the index it shares);
    ``decoded`` caches the bytes so the circular copies of one image share them."""
    data = row["image"] or ""
    if len(data) <= 64 and data in images:
        data = images[data]
    if data not in decoded:
        try:
            decoded[data] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"{NAME}: malformed row {where}: image is not base64") from err
    return decoded[data]


def read(data_dir, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read an MMBench TSV and expand it into circular copies.

    Expected layout: ``data_dir`` holds the official TSV (columns ``index, question, hint, A, B,
    C, D, answer, category, l2-category, image`` (base64), ...): ``MMBench_DEV_EN.tsv`` or
    ``mmbench_dev_20230712.tsv`` for ``"dev"`` (the default for ``None``), likewise
    ``"dev_cn"``, ``"test"``, ``"test_cn"``, ``"dev_v11"`` (see ``_FILES``); ``data_dir`` may also
    be the TSV file itself.

    Args:
      data_dir: the folder above, or a TSV path.
      split: one of ``SPLITS``.
      limit: keep the first ``limit`` questions (with all their circular copies).

    Returns:
      One ``Item`` per circular copy, answer = its correct letter (``None`` without an answer
      column); ``meta["group"]`` ties the copies of one question.

    Raises:
      ValueError: missing file, unknown split, malformed row.
    """
    limit = _io.check_limit(limit, NAME)
    (sp,) = _io.check_split(split or "dev", SPLITS, NAME)
    path = pathlib.Path(data_dir)
    if not path.is_file():
        path = _io.first_existing(_io.data_root(data_dir, NAME), _FILES[sp], f"{sp} TSV", NAME)
    rows = _rows(path)
    try:
        indices = [int(float(r["index"])) for r in rows]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{NAME}: {str(path)!r} has a non-integer index") from err
    images = {r["index"]: r["image"] for r in rows if len(r["image"] or "") > 64}
    given = any(i >= CIRCULAR_OFFSET for i in indices)
    items, groups, decoded = [], [], {}
    for row, index in zip(rows, indices, strict=True):
        where = f"index {index} of {path.name}"
        group = str(index % CIRCULAR_OFFSET)
        if group not in groups:
            if limit and len(groups) >= limit:
                continue
            groups.append(group)
        options = []
        for letter in LETTERS:
            if _missing(row.get(letter)):
                break
            options.append(row[letter])
        answer = None if _missing(row.get("answer")) else row["answer"].strip()
        if len(options) < 2 or (answer is not None and answer not in LETTERS[: len(options)]):
            raise ValueError(f"{NAME}: malformed row {where}: options / answer letter")
        image = _image(row, images, decoded, where)
        rounds = 1 if given else len(options)
        for r in range(rounds):
            shown = options[r:] + options[:r]
            truth = None if answer is None else LETTERS[(LETTERS.index(answer) - r) % len(options)]
            items.append(
                Item(
                    id=str(index) if rounds == 1 else f"{index}/r{r}",
                    image=image,
                    question=_prompt(row, shown, sp.endswith("cn")),
                    answer=truth,
                    meta={
                        "group": group,
                        "choices": dict(zip(LETTERS, shown, strict=False)),
                        "category": row.get("category"),
                        "l2_category": row.get("l2-category") or row.get("l2_category"),
                    },
                    max_new_tokens=MAX_NEW_TOKENS,
                )
            )
    return items


def _by(keys, hits) -> dict[str, float]:
    """Percent of ``hits`` per key."""
    table: dict[str, list[bool]] = {}
    for k, ok in zip(keys, hits, strict=True):
        table.setdefault(str(k), []).append(ok)
    return {k: _io.percent(sum(v), len(v)) for k, v in sorted(table.items())}


def score(items: Sequence[Item], predictions: Mapping[str, str]) -> dict:
    """Circular accuracy (``main``) and per-copy accuracy, overall and per (l2-)category.

    Raises:
      ValueError: if a prediction is missing or an item has no ground truth.
    """
    texts = _io.predictions_for(items, predictions, NAME)
    if any(it.answer is None for it in items):
        raise ValueError(
            f"{NAME}: items without an answer (the hidden test split) cannot be scored"
        )
    hits = [
        infer_choice(t, it.meta["choices"]) == it.answer for it, t in zip(items, texts, strict=True)
    ]
    group_ok: dict[str, bool] = {}
    first: dict[str, Item] = {}
    for it, ok in zip(items, hits, strict=True):
        group_ok[it.meta["group"]] = group_ok.get(it.meta["group"], True) and ok
        first.setdefault(it.meta["group"], it)
    heads = [first[g] for g in group_ok]
    circular = _io.percent(sum(group_ok.values()), len(group_ok))
    return {
        "main": circular,
        "metric": "circular accuracy (%)",
        "circular": circular,
        "vanilla": _io.percent(sum(hits), len(hits)),
        "n_questions": len(group_ok),
        "n_copies": len(items),
        "circular_category": _by([h.meta["category"] for h in heads], group_ok.values()),
        "circular_l2_category": _by([h.meta["l2_category"] for h in heads], group_ok.values()),
        "vanilla_category": _by([it.meta["category"] for it in items], hits),
    }


register(
    Benchmark(
        name=NAME,
        read=read,
        score=score,
        description="MMBench (TSV, circular evaluation); main = circular accuracy (%)",
    )
)
