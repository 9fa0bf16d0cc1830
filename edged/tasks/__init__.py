"""Tasks: family-aware pre-processing, run and post-processing around pooled sessions.

Public API for code outside the tasks (``edged.quantization``, tools): the requests and
results (``edged.tasks.base``) and the model-side steps in ``edged.tasks.preprocess``,
re-exported here. Everything else in this package is internal to the tasks.

The re-exports resolve on first use (module ``__getattr__``) so that importing a light
submodule (``edged.tasks.params``, which the config checks stream params with) does not
pull numpy in through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edged.tasks.preprocess import (
        inpaint_window,
        segmentation_feed,
        segmentation_map,
        superres_window,
    )

__all__ = ["inpaint_window", "segmentation_feed", "segmentation_map", "superres_window"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edged.tasks import preprocess

        return getattr(preprocess, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
