"""Shared test configuration: hypothesis profiles and small fixtures.

Profiles (choose with ``HYPOTHESIS_PROFILE=dev pytest ...``):

- ``ci`` (default): derandomized, no deadline (the first call of a shape compiles), ~30 examples.
- ``dev``: random seeds and more examples, for hunting bugs locally.
"""

from __future__ import annotations

import logging
import os

import jax
import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=30,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=300,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class CompileCounter:
    """Counts XLA compilations logged by ``jax.log_compiles`` while active."""

    def __init__(self, caplog: pytest.LogCaptureFixture):
        self._caplog = caplog

    def __enter__(self) -> CompileCounter:
        self._caplog.clear()
        self._ctx = jax.log_compiles(True)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self._caplog.records if "Compiling" in r.getMessage()]

    @property
    def count(self) -> int:
        return len(self.messages)


@pytest.fixture
def compile_counter(caplog: pytest.LogCaptureFixture):
    """Factory of :class:`CompileCounter` context managers capturing jax's compile log."""
    caplog.set_level(logging.WARNING, logger="jax")
    return lambda: CompileCounter(caplog)
