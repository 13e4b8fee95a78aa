"""What a person watches during a long run: a progress bar and TensorBoard curves.

``progress`` wraps a loop in a tqdm bar when stderr is a terminal (and this is JAX process 0);
otherwise it is the plain iterable, so logs and CI output stay clean. ``MetricWriter`` writes
TensorBoard event files (tensorboardX) under ``<workdir>/tensorboard`` from process 0 only; a
missing tensorboardX, or another process, gives a writer that records nothing.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import jax


def _show_bars() -> bool:
    if os.environ.get("PRUNEAX_PROGRESS", "") == "0":
        return False
    return jax.process_index() == 0 and sys.stderr.isatty()


def progress(iterable: Iterable[Any], *, total: int | None = None, desc: str = "") -> Iterator[Any]:
    """``iterable`` with a progress bar on a terminal (tqdm); unchanged otherwise.

    ``PRUNEAX_PROGRESS=0`` turns the bars off everywhere.

    Args:
      iterable: the loop.
      total: its length, when ``len`` cannot tell.
      desc: the bar's label.

    Example:
      >>> from pruneax.lab import progress
      >>> sum(progress(range(4), desc="demo"))  # no terminal here: no bar
      6
    """
    if not _show_bars():
        return iter(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iter(iterable)
    return iter(tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True))


class MetricWriter:
    """TensorBoard scalars under ``<workdir>/tensorboard`` (tensorboardX), process 0 only.

    Args:
      workdir: the run's folder.

    Example:
      >>> import tempfile, pathlib
      >>> from pruneax.lab import MetricWriter
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> with MetricWriter(d) as w:
      ...     w.scalar("train/loss", 0.5, step=10)
      >>> [f.name.split(".")[0] for f in (d / "tensorboard").iterdir()]  # one event file
      ['events']
    """

    def __init__(self, workdir: str | os.PathLike):
        self._writer = None
        if jax.process_index() != 0:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return
        self._writer = SummaryWriter(logdir=os.path.join(os.fspath(workdir), "tensorboard"))

    @property
    def active(self) -> bool:
        """Whether event files are being written (process 0 with tensorboardX installed)."""
        return self._writer is not None

    @staticmethod
    def safe_tag(tag: str) -> str:
        """``tag`` as ``scalar`` stores it: characters TensorBoard does not allow in a tag
        (``@``, ``+``, ``:``, spaces, ...) become ``_``.

        Example:
          >>> from pruneax.lab import MetricWriter
          >>> MetricWriter.safe_tag("eval/maxsum+todre/ppl_2:4")
          'eval/maxsum_todre/ppl_2_4'
        """
        return re.sub(r"[^\w/.-]", "_", tag)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Records ``value`` under ``safe_tag(tag)`` (e.g. ``"train/loss"``) at ``step``."""
        if self._writer is not None:
            self._writer.add_scalar(self.safe_tag(tag), float(value), int(step))

    def flush(self) -> None:
        """Writes what is buffered to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
