"""How many of a model's weight bytes one run actually reads (for the memory plan).

onnxruntime maps external-data weights from the file (edged loads generation components
without weight pre-packing), so resident memory grows by the pages a run touches, not by the
file size. Every weight of a MatMul or Conv is read; an embedding table (an initializer
only ever gathered from) is read a row per token. OpenCLIP ViT-H's token table is 202 MB of
its 384 MB int4 file, and a prompt reads 77 of its 49408 rows.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = ["read_bytes"]

GATHERED_ROWS = 2 * 77
"""Rows a text encoder gathers per request at most: prompt and negative prompt, 77 tokens."""
_PAGE = 4096


def read_bytes(path: Path) -> int:
    """The graph file plus the weight bytes one run reads (see the module doc)."""
    stat = path.stat()
    return _read_bytes(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_bytes(path: str, size: int, mtime_ns: int) -> int:
    from edged.tasks.generation.staged import weights_bytes

    total = weights_bytes(Path(path))
    if total == size:
        # Weights inline: nothing below could be skipped, and parsing the protobuf would
        # hold the whole file twice (the 198 MB SD VAE: a 491 MB spike in a 0.3 GB run).
        return total
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx comes with onnxruntime's tools
        return total
    graph = onnx.load(path, load_external_data=False).graph
    skipped = 0
    for init in _gathered_only(graph):
        nbytes = _external_length(init)
        dims = list(init.dims)
        if nbytes <= 0 or len(dims) != 2 or dims[0] <= GATHERED_ROWS:
            continue
        row = nbytes // dims[0]
        # Each gathered row touches its own page(s) in the mapped file.
        touched = GATHERED_ROWS * max(_PAGE, -(-row // _PAGE) * _PAGE)
        skipped += max(0, nbytes - touched)
    return total - skipped


def _gathered_only(graph: Any) -> list[Any]:
    """External initializers read only as the table input of Gather nodes."""
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, slot))
    return [
        init
        for init in graph.initializer
        if init.data_location == 1 and uses.get(init.name) == {("Gather", 0)}
    ]


def _external_length(init: Any) -> int:
    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    return 0
