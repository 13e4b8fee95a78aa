"""One description of the machine a number was measured on (every benchmark and experiment)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("pruneax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def cpu_model() -> str:
    """The CPU's model name (``lscpu``), else ``platform.processor()``, else ``"unknown"``.

    Returns:
      A string.

    Example:
      >>> from pruneax.lab import cpu_model
      >>> isinstance(cpu_model(), str)
      True
    """
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def cache_bytes(level: int, default: int) -> int:
    """Size of the level-``level`` data (or unified) cache of CPU 0, from Linux sysfs.

    Args:
      level: 1, 2 or 3.
      default: returned when sysfs does not say.

    Returns:
      Bytes.

    Example:
      >>> from pruneax.lab import cache_bytes
      >>> cache_bytes(2, 1 << 20) > 0
      True
    """
    for index in range(8):
        base = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}")
        try:
            if int((base / "level").read_text()) != level:
                continue
            if (base / "type").read_text().strip() == "Instruction":
                continue
            size = (base / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        return int(size.rstrip("KMG")) * mult
    return default


def versions() -> dict[str, str]:
    """Installed versions of Python and of ``PACKAGES`` (``"-"`` when one is absent).

    Returns:
      ``{name: version}``.

    Example:
      >>> from pruneax.lab import versions
      >>> sorted(versions())[:2]
      ['flax', 'jax']
    """
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    return out


def _blas() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "num_threads", "version")
    return [{k: v for k, v in d.items() if k in keep} for d in threadpool_info()]


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """The machine and software a measurement ran on, as one JSON-ready dict.

    Keys: ``platform``, ``processor`` (CPU model), ``cpu_count``, ``l2_bytes_per_core``,
    ``l3_bytes``, ``backend``, ``devices``, ``process_count``, ``xla_flags``, ``loadavg`` (1, 5,
    15 min; how busy the machine was), ``numpy_blas`` (threadpoolctl, when installed), and the
    versions of ``versions()`` (``python``, ``jax``, ``flax``, ...).

    Returns:
      The dict.

    Example:
      >>> from pruneax.lab import machine
      >>> m = machine()
      >>> m["backend"] in ("cpu", "gpu", "tpu") and m["cpu_count"] >= 1
      True
    """
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "l2_bytes_per_core": cache_bytes(2, 1 << 20),
        "l3_bytes": cache_bytes(3, 32 << 20),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg": _loadavg(),
        "numpy_blas": _blas(),
        **versions(),
    }


def describe(m: dict[str, Any]) -> str:
    """One line for a report: CPU, cores, backend, devices, JAX version.

    Args:
      m: a ``machine()`` dict (as written, or read back from JSON).

    Returns:
      The line.

    Example:
      >>> from pruneax.lab import describe, machine
      >>> "cores" in describe(machine())
      True
    """
    devices = m.get("devices") or []
    dev = devices[0] if len(devices) == 1 else f"{len(devices)} devices"
    return (
        f"{m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, backend "
        f"{m.get('backend', '?')} ({dev}), jax {m.get('jax', '?')}, {m.get('platform', '?')}"
    )
