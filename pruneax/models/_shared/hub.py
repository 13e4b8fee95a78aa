"""Checkpoint locations: a local ``save_pretrained`` directory, or a Hugging Face hub id.

Every ``load_*`` function accepts either. A hub id (``"org/name"``, optionally
``"org/name@revision"``) is resolved with ``huggingface_hub.snapshot_download`` (config,
safetensors and tokenizer files only), which reads the local cache first and honours
``HF_HUB_OFFLINE=1``; without ``huggingface_hub`` installed, or when the files can be neither
found in the cache nor downloaded, the error names the id and why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def is_hub_id(path: Any) -> bool:
    """Whether ``path`` reads as a hub id ``org/name[@revision]`` rather than a file path.

    Example:
      >>> is_hub_id("llava-hf/llava-1.5-7b-hf"), is_hub_id("/tmp/model"), is_hub_id("./a/b")
      (True, False, False)
    """
    return isinstance(path, str) and not path.startswith(".") and bool(_HUB_ID.match(path))


def checkpoint_dir(path: str | os.PathLike, loader: str) -> Path:
    """The local directory of a checkpoint given as a directory or as a hub id.

    Args:
      path: a ``save_pretrained`` directory, or a hub id ``org/name[@revision]`` (used only
        when no such local directory exists).
      loader: the public function's name, which starts every message.

    Returns:
      The directory.

    Raises:
      FileNotFoundError: if ``path`` is not a directory and not a hub id.
      ValueError: for a hub id that cannot be resolved: ``huggingface_hub`` is not installed,
        or the repository is neither in the local cache nor downloadable (offline, unknown id,
        gated); the message names the id.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> checkpoint_dir(d, "load_llm") == __import__("pathlib").Path(d)
      True
    """
    root = Path(path)
    if root.is_dir():
        return root
    if not is_hub_id(path):
        raise FileNotFoundError(f"{loader}: {str(root)!r} is not a directory")
    repo_id, _, revision = str(path).partition("@")
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError(
            f"{loader}: {path!r} is not a local directory, and loading it as a Hugging Face hub "
            "id needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    try:
        local = huggingface_hub.snapshot_download(
            repo_id, revision=revision or None, allow_patterns=_PATTERNS
        )
    except Exception as e:  # offline, unknown, gated, network: all reported the same way
        raise ValueError(
            f"{loader}: hub id {repo_id!r}{f' (revision {revision!r})' if revision else ''} "
            f"could not be resolved from the local cache or downloaded ({type(e).__name__}: "
            f"{str(e)[:300]}); pass a local save_pretrained directory, or check the id, your "
            "connection and HF_HUB_OFFLINE"
        ) from None
    return Path(local)
