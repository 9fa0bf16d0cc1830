"""Lazy imports of heavy optional modules, with the install hint in the error.

OpenCV costs ~100 ms and tens of MB to import; modules that only sometimes need it (stream
sources, wire payload coding, the demo) call ``cv2()`` where they use it, so importing them
stays cheap.
"""

from __future__ import annotations

from typing import Any

from edged.errors import BackendUnavailable

__all__ = ["cv2"]

CV2_HINT = "pip install opencv-python-headless (or the board's python3-opencv)"


def cv2() -> Any:
    """The ``cv2`` module, imported on first call; ``BackendUnavailable`` naming the package
    when OpenCV is not installed."""
    try:
        import cv2 as module
    except ImportError as exc:
        raise BackendUnavailable(f"OpenCV is not installed: {CV2_HINT}") from exc
    return module
