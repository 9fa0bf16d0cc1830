"""Helpers the tests (and benchmarks) share: tiny real models, fake board trees, local servers.

Nothing here is a mock of edged itself: these build real inputs (ONNX files made with
``onnx.helper``, sysfs/proc trees on disk, HTTP servers on loopback, ZeroMQ endpoints in a
temp dir) for the real code to consume. ``onnx`` comes from the ``dev`` extra.

Modules: ``paths`` (../shared), ``models`` (tiny ONNX/TFLite builders), ``boards`` (fake
sysfs/proc/dev trees), ``servers`` (local HTTP file server, wheels, npm tarballs), ``zmq``
(temporary endpoints, PNG bombs), ``segmentation`` and ``sr_inpaint`` (generated models with
the real IO of SAM, YOLOv8-seg, SR and inpainting families), ``generation`` (tiny SD dirs).
Everything public is re-exported here: ``from edged.testing import make_board``.
"""

from __future__ import annotations

from edged.testing.boards import BOARD_KINDS, make_board, make_cgroup_tree
from edged.testing.disk import small_tmpfs
from edged.testing.generation import (
    TINY_WORDS,
    make_tiny_lora,
    make_tiny_sd_dir,
    make_tiny_text_encoder,
    make_tiny_unet,
    make_tiny_vae_decoder,
    name_like_exporter,
    write_safetensors,
    write_tiny_clip_tokenizer,
)
from edged.testing.models import (
    make_conv_model,
    make_matmul_model,
    make_scale_model,
    make_scale_tflite,
    save_model,
)
from edged.testing.paths import SHARED_DIR, shared_images_dir, shared_models_dir
from edged.testing.segmentation import (
    SAM_GRID,
    CountingSession,
    counting_engine,
    make_sam_decoder,
    make_sam_encoder,
    make_yolo_seg_model,
    write_manifest,
)
from edged.testing.servers import (
    FileServer,
    RequestRecord,
    Route,
    build_npm_tarball,
    build_wheel,
    serve_npm,
    serve_pypi,
)
from edged.testing.sr_inpaint import (
    INPAINT_SIZE,
    inpaint_pattern,
    make_conv_sr_model,
    make_inpaint_model,
    make_upscale_model,
    set5_pairs,
    set5_score,
    y_psnr,
)
from edged.testing.zmq import ScaleModelHandler, png_bomb, png_chunk, zmq_settings

__all__ = [
    "BOARD_KINDS",
    "INPAINT_SIZE",
    "SAM_GRID",
    "SHARED_DIR",
    "TINY_WORDS",
    "CountingSession",
    "FileServer",
    "RequestRecord",
    "Route",
    "ScaleModelHandler",
    "build_npm_tarball",
    "build_wheel",
    "counting_engine",
    "inpaint_pattern",
    "make_board",
    "make_cgroup_tree",
    "make_conv_model",
    "make_conv_sr_model",
    "make_inpaint_model",
    "make_matmul_model",
    "make_sam_decoder",
    "make_sam_encoder",
    "make_scale_model",
    "make_scale_tflite",
    "make_tiny_lora",
    "make_tiny_sd_dir",
    "make_tiny_text_encoder",
    "make_tiny_unet",
    "make_tiny_vae_decoder",
    "make_upscale_model",
    "make_yolo_seg_model",
    "name_like_exporter",
    "png_bomb",
    "png_chunk",
    "save_model",
    "serve_npm",
    "serve_pypi",
    "set5_pairs",
    "set5_score",
    "shared_images_dir",
    "shared_models_dir",
    "small_tmpfs",
    "write_manifest",
    "write_safetensors",
    "write_tiny_clip_tokenizer",
    "y_psnr",
    "zmq_settings",
]
