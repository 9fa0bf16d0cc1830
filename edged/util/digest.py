"""File digests: the one streamed sha256 the catalogue, the loader and the runtime caches use.

A module of its own (stdlib only) so ``edged models`` can hash without importing the runtime
package.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256"]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (model files can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
