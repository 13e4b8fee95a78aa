"""Import every benchmark module so that ``BENCHMARKS`` holds all of them."""

from pruneax.experiments.vlm_bench import (  # noqa: F401
    _gqa,
    _mmbench,
    _mme,
    _pope,
    _scienceqa,
    _textvqa,
)
