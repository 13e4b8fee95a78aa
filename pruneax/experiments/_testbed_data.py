"""Images, questions and prompts of the VLM testbed (``vlm_testbed``): pure NumPy.

An image is a ``grid x grid`` canvas of digit-sized cells, most of them blank background; a few
cells (``digits`` = (lo, hi) of them, distinct digit classes, distinct cells) hold a digit image
of the split. With the default 3 x 3 canvas of 28 x 28 MNIST cells and 7 x 7 patches, the
vision tower sees 144 patches of which 55-78 % are blank: the spatial redundancy real images
have and the from-scratch 2 x 2 mosaics of ``vlm_token_pruning`` lacked.

Questions are natural-language English in the user turn of the LLM's chat format; answers are
short strings generated greedily and scored by exact match after ``normalize``:

- ``exists``: "Is there a 7 in the image? Answer yes or no." -> "yes" / "no" (balanced);
- ``count``: "How many digits are in the image? Answer with a number." -> "2".."4";
- ``locate``: "Which digit is at the top left? Answer with a digit, or none if that place is
  empty." -> "3" / "none" (half occupied cells, half blank ones);
- ``where``: "Where is the 7? Answer with its position." -> "top left" (a present digit).

``caption`` (training only, LLaVA's stage-1 data kind): "3 at top left, 7 at bottom right."
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

FAMILIES = ("exists", "count", "locate", "where")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
EMPTY = 10  # cell label of a blank cell


def position_name(cell: int, grid: int) -> str:
    """The words of a cell: ``"top left"`` ... ``"bottom right"`` (grid 3); ``"row r col c"``
    on other grids."""
    r, c = divmod(int(cell), grid)
    if grid == 3:
        return f"{ROWS[r]} {COLS[c]}"
    return f"row {r + 1} column {c + 1}"


def normalize(text: str) -> str:
    """Lower case, surrounding spaces and a final period / trailing punctuation removed, inner
    whitespace collapsed (the answer the scorer compares)."""
    t = " ".join(str(text).strip().lower().split())
    return t.rstrip(".!,;:").strip()


def canvases(
    rng: np.random.Generator, labels: np.ndarray, n: int, grid: int, digits: tuple[int, int]
) -> np.ndarray:
    """``[n, grid * grid]`` int: the index into the split of each cell's digit image, -1 blank.

    Each canvas holds between ``digits[0]`` and ``digits[1]`` digits of distinct classes in
    distinct cells, chosen uniformly.
    """
    by_class = [np.flatnonzero(labels == d) for d in range(10)]
    out = np.full((n, grid * grid), -1, np.int64)
    counts = rng.integers(digits[0], digits[1] + 1, n)
    for i in range(n):
        k = int(counts[i])
        cells = rng.choice(grid * grid, k, replace=False)
        classes = rng.choice(10, k, replace=False)
        for cell, d in zip(cells, classes, strict=True):
            out[i, cell] = by_class[d][rng.integers(len(by_class[d]))]
    return out


def cell_labels(cells: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[n, grid * grid]`` digit of every cell, ``EMPTY`` (10) for blank ones."""
    return np.where(cells >= 0, labels[np.maximum(cells, 0)], EMPTY).astype(np.int32)


def render(cells: np.ndarray, x: np.ndarray, grid: int, background: float) -> np.ndarray:
    """``[n, grid * h, grid * w, C]`` images: each cell's digit image, or ``background``."""
    n = len(cells)
    h, w, c = x.shape[1:]
    tiles = np.where(
        (cells >= 0)[..., None, None, None], x[np.maximum(cells, 0)], np.float32(background)
    )  # [n, g*g, h, w, c]
    tiles = tiles.reshape(n, grid, grid, h, w, c).transpose(0, 1, 3, 2, 4, 5)
    return tiles.reshape(n, grid * h, grid * w, c).astype(np.float32)


def question(rng: np.random.Generator, lab: np.ndarray, grid: int, family: str) -> tuple[str, str]:
    """``(question text, answer text)`` of one family about a canvas with cell digits ``lab``."""
    present = [int(d) for d in lab if d != EMPTY]
    if family == "exists":
        if rng.random() < 0.5:
            d, ans = int(rng.choice(present)), "yes"
        else:
            d, ans = int(rng.choice(np.setdiff1d(np.arange(10), present))), "no"
        return f"Is there a {d} in the image? Answer yes or no.", ans
    if family == "count":
        return "How many digits are in the image? Answer with a number.", str(len(present))
    if family == "locate":
        full = np.flatnonzero(lab != EMPTY)
        blank = np.flatnonzero(lab == EMPTY)
        pool = full if rng.random() < 0.5 or len(blank) == 0 else blank
        cell = int(rng.choice(pool))
        ans = "none" if lab[cell] == EMPTY else str(int(lab[cell]))
        q = (
            f"Which digit is at the {position_name(cell, grid)}? Answer with a digit, or none "
            "if that place is empty."
        )
        return q, ans
    if family == "where":
        cell = int(rng.choice(np.flatnonzero(lab != EMPTY)))
        return (
            f"Where is the {int(lab[cell])}? Answer with its position.",
            position_name(cell, grid),
        )
    raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")


def caption(lab: np.ndarray, grid: int) -> tuple[str, str]:
    """The stage-1 captioning pair: a fixed instruction and the digits in raster order."""
    parts = [f"{int(d)} at {position_name(i, grid)}" for i, d in enumerate(lab) if d != EMPTY]
    return "Describe the image.", ", ".join(parts) + "."


def sample_split(
    seed: tuple[int, ...], tag: str, labels: np.ndarray, n: int, grid: int,
    digits: tuple[int, int], families: tuple[str, ...], caption_fraction: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """``n`` examples: canvases, cell labels, question / answer texts and family names.

    Deterministic in ``(seed, tag)``; families are cycled in order (so every family has
    ``n / len(families)`` examples), and with ``caption_fraction`` > 0 that share of the
    examples (chosen at random) is the captioning pair instead.
    """
    rng = np.random.default_rng((*seed, zlib.crc32(tag.encode())))
    cells = canvases(rng, labels, n, grid, digits)
    lab = cell_labels(cells, labels)
    qs, ans, fam = [], [], []
    is_cap = rng.random(n) < caption_fraction
    for i in range(n):
        f = "caption" if is_cap[i] else families[i % len(families)]
        q, a = caption(lab[i], grid) if is_cap[i] else question(rng, lab[i], grid, f)
        qs.append(q)
        ans.append(a)
        fam.append(f)
    return {"cells": cells, "labels": lab, "question": qs, "answer": ans, "family": fam}


class ByteTokenizer:
    """A byte-level tokenizer for the ``tiny`` preset's random LLM (256 byte ids + PAD, BOS,
    EOS), with the same interface as ``ChatPrompts`` needs from a transformers tokenizer."""

    pad_token_id, bos_token_id, eos_token_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Byte ids of ``text`` (UTF-8)."""
        del add_special_tokens
        return list(text.encode("utf-8"))

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of the byte ids (special ids dropped)."""
        del skip_special_tokens
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


class ChatPrompts:
    """Token ids of the testbed's prompts: ``prefix`` (before the image), the question turn
    (after it) and the answer (+ end of turn).

    SmolLM2-Instruct's chat format (``<|im_start|>user\\n`` [image] ``\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n`` {answer} ``<|im_end|>``) without the template's default system
    message (25 tokens saved per example); the byte tokenizer gets a short ASCII equivalent.
    """

    def __init__(self, tokenizer: Any, chatml: bool):
        self.tok = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        if chatml:
            self._pre, self._q = "<|im_start|>user\n", "\n{q}<|im_end|>\n<|im_start|>assistant\n"
        else:
            self._pre, self._q = "U:", "\n{q}\nA:"
        self.prefix = self.encode(self._pre)
        if chatml and not self.prefix:
            raise ValueError("ChatPrompts: the tokenizer encodes the chat prefix to no tokens")

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tok.encode(text, add_special_tokens=False)]

    def question(self, q: str) -> list[int]:
        return self.encode(self._q.format(q=q))

    def answer(self, a: str) -> list[int]:
        return [*self.encode(a), self.eos]

    def decode(self, ids: Any) -> str:
        """The generated text up to the first end of turn."""
        ids = [int(i) for i in ids]
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tok.decode(ids, skip_special_tokens=True)


def train_arrays(prompts: ChatPrompts, questions: list[str], answers: list[str], length: int):
    """Teacher-forcing arrays: ``qa [n, length]`` (question turn + answer + EOS, right-padded)
    and ``target [n, length]`` (1 where the token is an answer token to predict)."""
    n = len(questions)
    qa = np.full((n, length), prompts.pad, np.int32)
    target = np.zeros((n, length), np.float32)
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        qi, ai = prompts.question(q), prompts.answer(a)
        if len(qi) + len(ai) > length:
            raise ValueError(
                f"train_arrays: question + answer of {len(qi) + len(ai)} tokens exceed "
                f"qa_length {length}: {q!r} -> {a!r}"
            )
        qa[i, : len(qi) + len(ai)] = qi + ai
        target[i, len(qi) : len(qi) + len(ai)] = 1.0
    return qa, target


def eval_arrays(prompts: ChatPrompts, questions: list[str], length: int):
    """Generation arrays: question turns LEFT-padded inside ``[n, length]`` (every row ends
    with its last prompt token) and their validity mask."""
    n = len(questions)
    q = np.full((n, length), prompts.pad, np.int32)
    valid = np.zeros((n, length), bool)
    for i, text in enumerate(questions):
        ids = prompts.question(text)
        if len(ids) > length:
            raise ValueError(f"eval_arrays: {len(ids)} question tokens exceed {length}: {text!r}")
        q[i, length - len(ids) :] = ids
        valid[i, length - len(ids) :] = True
    return q, valid
