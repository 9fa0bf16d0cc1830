"""Tasks: family-aware pre-processing, run and post-processing around pooled sessions.

Public API for code outside the tasks (``edged.quantization``, tools): the requests and
results (``edged.tasks.base``) and the model-side steps in ``edged.tasks.preprocess``,
re-exported here. Everything else in this package is internal to the tasks.
"""

from edged.tasks.preprocess import (
    inpaint_window,
    segmentation_feed,
    segmentation_map,
    superres_window,
)

__all__ = ["inpaint_window", "segmentation_feed", "segmentation_map", "superres_window"]
