"""TensorBoard event files read back without TensorFlow (for the experiments' curve tests)."""

from __future__ import annotations

import pathlib
import struct

import pytest


def scalars(folder: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} read from TensorBoard event files (TFRecord framing: 8-byte
    length, 4-byte CRC, the Event proto, 4-byte CRC)."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
