"""Prompts and inputs of the benchmark runner: the checkpoint's own transformers processor
tokenises the whole prompt (image placeholder expanded) and preprocesses the image; the ids are
split at the run of image tokens into ``prefix_ids`` / ``question_ids``.

Conversation formats, read from transformers' processors and model cards:
LLaVA-1.5 ``"USER: <image>\\n{q} ASSISTANT:"`` (``LlavaProcessor`` expands ``<image>``);
LLaVA-NeXT the processor's chat template when it has one, else the same vicuna format
(``LlavaNextProcessor``); PaliGemma ``"<image>{q}"``, which ``PaliGemmaProcessor`` turns into
``<image> x N, <bos>, q, "\\n"``.

References: transformers ``models/llava/processing_llava.py``, ``models/llava_next/
processing_llava_next.py``, ``models/paligemma/processing_paligemma.py``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import numpy as np

LLAVA_FORMAT = "USER: <image>\n{question} ASSISTANT:"


def require_transformers() -> Any:
    """``transformers`` (imported lazily), or an ImportError saying what to install."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pruneax.experiments.vlm_bench needs the optional packages transformers and pillow "
            "(the checkpoint's own processor tokenises and preprocesses): pip install "
            "transformers pillow"
        ) from e
    return transformers


def load_processor(checkpoint: str | os.PathLike) -> Any:
    """The checkpoint's ``AutoProcessor`` with the PIL (slow) image processor."""
    transformers = require_transformers()
    return transformers.AutoProcessor.from_pretrained(str(checkpoint), backend="pil")


def family_of(model: Any) -> str:
    """``"llava_next"``, ``"paligemma"`` (prefix-LM) or ``"llava"``."""
    from pruneax.models.vlm import LlavaNext

    if isinstance(model, LlavaNext):
        return "llava_next"
    return "paligemma" if model.config.prefix_lm else "llava"


def prompt_text(family: str, processor: Any, question: str) -> str:
    """The whole prompt of ``question`` in the family's conversation format."""
    if family == "paligemma":
        return "<image>" + question
    template = getattr(processor, "chat_template", None)
    if family == "llava_next" and template:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return LLAVA_FORMAT.format(question=question)


def load_image(src: str | bytes) -> Any:
    """A PIL RGB image from a path or encoded bytes."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover
        raise ImportError("pruneax.experiments.vlm_bench needs pillow: pip install pillow") from e
    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
        return im.convert("RGB")


@dataclasses.dataclass
class Encoded:
    """One item's model inputs: text ids around the image, NHWC pixels, anyres size."""

    prefix: np.ndarray  # [P] int32
    question: np.ndarray  # [Q] int32
    pixels: np.ndarray  # [H, W, C] or [tiles, S, S, C] float32
    image_size: tuple[int, int] | None  # LLaVA-NeXT: (height, width)
    num_image_tokens: int


def image_token_id(processor: Any) -> int:
    """The id of the processor's image placeholder token."""
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tok = processor.tokenizer
        tid = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    return int(tid)


def encode(processor: Any, family: str, question: str, image: str | bytes) -> Encoded:
    """Tokenises the whole prompt with the processor and splits it at the image-token run.

    Raises:
      ValueError: if the tokenised prompt has no single contiguous run of image tokens.
    """
    text = prompt_text(family, processor, question)
    out = processor(text=text, images=load_image(image), return_tensors="np")
    ids = np.asarray(out["input_ids"])[0].astype(np.int32)
    where = np.flatnonzero(ids == image_token_id(processor))
    if where.size == 0 or where[-1] - where[0] + 1 != where.size:
        raise ValueError(
            f"vlm_bench: the processor's prompt must hold one contiguous run of image tokens; "
            f"got {where.size} image tokens in {ids.tolist()}"
        )
    pixels = np.asarray(out["pixel_values"], np.float32)[0]
    pixels = np.moveaxis(pixels, -3, -1)  # channels last (NHWC / tiles NHWC)
    size = None
    if family == "llava_next":
        size = tuple(int(v) for v in np.asarray(out["image_sizes"])[0])
    return Encoded(ids[: where[0]], ids[where[-1] + 1 :], pixels, size, int(where.size))


def decode(tokenizer: Any, tokens: np.ndarray, eos: int | None) -> str:
    """Text of generated ``tokens`` up to the first EOS, special tokens skipped."""
    row = [int(t) for t in tokens]
    if eos is not None and eos in row:
        row = row[: row.index(eos)]
    return tokenizer.decode(row, skip_special_tokens=True).strip()
