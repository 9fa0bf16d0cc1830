"""Workstation-side conversion of published checkpoints into board-ready model dirs.

``edged models convert`` (edged/cli/models_convert.py) drives it: ``source`` resolves a Hub
repo or local diffusers dir, ``diffusers_export`` exports the components to ONNX, ``plan``
quantizes, splits and writes the dir, ``manifest`` lists and verifies every file's sha256,
``progress`` reports stages with an ETA, ``vision`` answers for the torch-only inpainting and
SAM models, ``parity`` checks an export against diffusers' own pipeline. torch, diffusers and
transformers (the ``convert`` extra) are imported only inside the functions that need them.
"""

__all__: list[str] = []
