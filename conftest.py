"""Configuration shared by the tests (tests/) and the doctests (pruneax/).

XLA:CPU maps every compiled executable into memory; one pytest worker runs ~1,000 test modules
and doctests, and without releasing them it can reach the kernel's limit on memory maps
(vm.max_map_count, 65530 here) and crash in the compiler (seen once: a segfault in
``backend_compile_and_load`` after ~2,000 tests). So the compilation caches are cleared after
every module.
"""

from __future__ import annotations

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
    yield
    jax.clear_caches()
