"""Compilation: a persistent cache shared by runs, and a clock of the time spent compiling.

Each token-pruning plan is a separate XLA program (its shapes differ), and on a 2-core CPU
compiling one takes 2-22 s, which dominates short experiments. ``compilation_cache()`` turns on
JAX's persistent compilation cache, so a rerun (or a resumed run, or the next experiment that
builds the same program) loads the compiled executable instead of compiling it again.
``CompileClock`` sums the compile events JAX reports (``jax.monitoring``: tracing, lowering,
backend compilation), so experiments and benchmarks report compile time beside run time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jax

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_active: list[CompileClock] = []
_lock = threading.Lock()
_registered = False


def default_cache_dir() -> Path:
    """``$PRUNEAX_COMPILATION_CACHE``, else ``~/.cache/pruneax/jax-<jax version>`` (executables
    of one JAX version are not loaded by another).

    Example:
      >>> import os
      >>> from pruneax.lab import default_cache_dir
      >>> default_cache_dir().name.startswith("jax-") or "PRUNEAX_COMPILATION_CACHE" in os.environ
      True
    """
    env = os.environ.get("PRUNEAX_COMPILATION_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pruneax" / f"jax-{jax.__version__}"


def compilation_cache(path: str | os.PathLike | None = None, *, min_seconds: float = 0.5) -> Path:
    """Turns on JAX's persistent compilation cache in ``path`` (created if needed).

    Programs whose compilation took at least ``min_seconds`` are written there and loaded by
    later processes that compile the same program (same JAX version, backend and flags). Call
    it before the first compilation; calling it again with another path switches the cache.

    Args:
      path: the cache folder; None means ``default_cache_dir()``.
      min_seconds: compile time below which a program is not cached (>= 0).

    Returns:
      The cache folder.

    Raises:
      ValueError: for a negative ``min_seconds``.

    Example:
      >>> import tempfile
      >>> from pruneax import lab
      >>> folder = lab.compilation_cache(tempfile.mkdtemp())
      >>> folder.is_dir()
      True
    """
    if not isinstance(min_seconds, (int, float)) or min_seconds < 0:
        raise ValueError(f"compilation_cache: min_seconds must be >= 0; got {min_seconds!r}")
    folder = Path(default_cache_dir() if path is None else path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _listener(event: str, duration: float, **_: object) -> None:
    if event in _COMPILE_EVENTS:
        with _lock:
            for clock in _active:
                clock.seconds += duration
                clock.events += event == _COMPILE_EVENTS[-1]


class CompileClock:
    """Seconds JAX spent compiling (tracing, lowering, XLA) while the clock was running.

    Attributes:
      seconds: the summed compile time.
      events: how many programs went through the backend compiler (a program loaded from the
        persistent cache still counts; its backend time is then the load time).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax.lab import CompileClock
      >>> x = jnp.ones(3)
      >>> with CompileClock() as clock:
      ...     _ = jax.jit(lambda x: x * 2 + 1)(x)
      >>> clock.seconds > 0, clock.events
      (True, 1)
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.events = 0

    def __enter__(self) -> CompileClock:
        global _registered
        with _lock:
            if not _registered:
                jax.monitoring.register_event_duration_secs_listener(_listener)
                _registered = True
            _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _active.remove(self)
