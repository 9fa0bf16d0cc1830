"""SDXL-class conditioning: two CLIP text encoders, a pooled embedding and ``time_ids``.

A model dir with ``text_encoder_2/`` (and ``tokenizer_2/``) is SDXL-class (SDXL, SDXL-Turbo):
the UNet is conditioned on the penultimate hidden states of both encoders, concatenated
(768 + 1280 = 2048 wide), plus ``text_embeds`` (the second encoder's projected pooled output,
1280) and ``time_ids`` (original size, crop top-left, target size: 6 numbers per image).

**Packed conditioning.** Everything else in the pipeline (the embedding cache, classifier-free
guidance, the ``text_encode`` request that a remote edged answers) moves one
``[batch, tokens, width]`` array per prompt. SDXL's pooled vector travels in that same array as
one extra row after the 77 token rows, zero-padded to the width: ``pack`` builds it, ``unpack``
splits it again right before the UNet. One array, so a remote encoder, the cache and CFG need
no SDXL case of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import ModelLoadError
from edged.runtime.base import Session

F32 = npt.NDArray[np.float32]
POOLED_DEFAULT = 1280
"""``text_embeds`` width when the UNet's input does not say (SDXL's OpenCLIP bigG projection)."""
_HIDDEN = re.compile(r"^hidden_states\.(\d+)$")


def is_sdxl(root: Path) -> bool:
    return (root / "text_encoder_2" / "model.onnx").is_file()


def penultimate(outputs: Mapping[str, Any]) -> F32:
    """The second-to-last hidden state (what SDXL conditions on), from an export with
    ``output_hidden_states`` (``hidden_states.0`` .. ``hidden_states.N``)."""
    layers = {int(m.group(1)): v for k, v in outputs.items() if (m := _HIDDEN.match(k))}
    if len(layers) < 2:
        raise ModelLoadError(
            "SDXL text encoders must be exported with their hidden states "
            "(outputs hidden_states.0 .. hidden_states.N; optimum-cli does this for SDXL)"
        )
    return np.asarray(layers[max(layers) - 1], dtype=np.float32)


def pooled(outputs: Mapping[str, Any]) -> F32:
    """The second encoder's projected pooled embedding ``text_embeds`` [1, P]."""
    if "text_embeds" not in outputs:
        raise ModelLoadError(
            "text_encoder_2 has no text_embeds output (an SDXL CLIPTextModelWithProjection)"
        )
    return np.asarray(outputs["text_embeds"], dtype=np.float32).reshape(1, -1)


def pack(hidden: F32, pooled_embeds: F32) -> F32:
    """[1, 77, W] token rows + [1, P] pooled -> [1, 78, W] (see module doc); P <= W."""
    width, size = hidden.shape[-1], pooled_embeds.shape[-1]
    if size > width:
        raise ModelLoadError(f"pooled embedding ({size}) wider than the hidden states ({width})")
    row = np.zeros((1, 1, width), np.float32)
    row[0, 0, :size] = pooled_embeds[0]
    return np.concatenate([hidden.astype(np.float32), row], axis=1)


def pooled_width(unet: Session) -> int:
    spec = next((s for s in unet.inputs if s.name == "text_embeds"), None)
    dim = spec.shape[-1] if spec is not None and spec.shape else None
    return dim if isinstance(dim, int) else POOLED_DEFAULT


def unpack(packed: F32, width: int) -> tuple[F32, F32]:
    """[B, 78, W] -> (encoder_hidden_states [B, 77, W], text_embeds [B, width])."""
    return packed[:, :-1], np.ascontiguousarray(packed[:, -1, :width])


def time_ids(height: int, width: int, batch: int) -> F32:
    """(original h, w, crop top, crop left, target h, w): no crop, generated at full size."""
    row = np.array([height, width, 0, 0, height, width], np.float32)
    return np.repeat(row[None], batch, axis=0)


def unet_feeds(unet: Session, conditioning: F32, height: int, width: int) -> dict[str, F32]:
    """The SDXL-only UNet inputs plus ``encoder_hidden_states`` from packed conditioning."""
    hidden, text_embeds = unpack(conditioning, pooled_width(unet))
    return {
        "encoder_hidden_states": hidden,
        "text_embeds": text_embeds,
        "time_ids": time_ids(height, width, conditioning.shape[0]),
    }
