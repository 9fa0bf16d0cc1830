"""int8 for models onnxruntime cannot quantize: OpenVINO IR made by NNCF.

The shared segmentation models are TFLite files only, and edged has no TensorFlow converter,
so ``edged.quantization.vision``'s onnxruntime QDQ path cannot reach them. OpenVINO reads TFLite
(and ONNX) directly, and NNCF's post-training quantization turns that model into an int8
OpenVINO model (FakeQuantize on weights and activations, statistics from the calibration
feeds, fast bias correction). The result is saved as an IR *directory* (``model.xml`` +
``model.bin``): one catalogue file of format ``openvino`` whose sha256 covers both halves
(``edged.models.catalog.dir_sha256``), loaded by the ``openvino`` runtime only.

No layer-exclusion search here (NNCF decides the quantized ops); the accuracy gate judges the
result exactly as for ONNX variants, against the fp32 file run on OpenVINO too.

Needs ``nncf``: ``pip install 'edged[quantize]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edged.config import Settings
from edged.errors import BackendUnavailable, BadRequest, ModelLoadError, ModelNotFound
from edged.log import get_logger
from edged.models.catalog import Catalog, dir_sha256
from edged.models.schema import ModelEntry, ModelFile
from edged.quantization.accuracy_gate import Thresholds, thresholds_from
from edged.quantization.calibration import CalibrationSet, load_images, model_feeds, supports
from edged.quantization.onnx_quantizer import quiet_quantizer
from edged.quantization.variants import (
    VisionQuantResult,
    evaluate_gate,
    refusal,
    register_variant,
    search_path_note,
)
from edged.runtime import FORMAT_OF_RUNTIME
from edged.runtime.base import Array, Session
from edged.runtime.openvino import IR_XML

log = get_logger("quantize")
SOURCE_FORMATS = tuple(f for f in FORMAT_OF_RUNTIME["openvino"] if f != "openvino")
"""fp32 files NNCF can start from: whatever OpenVINO reads, except an IR (already converted)."""


def _modules() -> tuple[Any, Any]:
    """``(openvino, nncf)``, imported on first use with the install command on failure."""
    try:
        import nncf
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(
            f"--format openvino needs openvino and nncf: pip install 'edged[quantize]' ({exc})"
        ) from exc
    return openvino, nncf


def fp32_source(entry: ModelEntry, catalog: Catalog) -> Path:
    """The installed fp32 file OpenVINO reads (ONNX preferred, else TFLite)."""
    for fmt in SOURCE_FORMATS:
        for file in entry.files:
            if file.format == fmt and file.precision == "fp32":
                where = catalog.locate(file)
                if where is not None:
                    return where
    have = ", ".join(f"{f.path} ({f.format}/{f.precision})" for f in entry.files) or "no files"
    raise ModelNotFound(
        f"{entry.name} has no installed fp32 {' or '.join(SOURCE_FORMATS)} file for OpenVINO "
        f"to quantize (has {have}); {entry.obtain_hint()}"
    )


def variant_dir_name(src: Path) -> str:
    return f"{src.stem}_ov-int8"


def quantize_openvino(src: Path, out_dir: Path, feeds: Sequence[dict[str, Array]]) -> Path:
    """NNCF int8 of ``src`` calibrated on ``feeds`` (the model's own preprocessing), saved as
    the IR directory ``out_dir``; returns it."""
    ov, nncf = _modules()
    model = ov.Core().read_model(str(src))
    # Feeds are {input name: tensor}; a compiled OpenVINO model takes that dict as it is.
    with quiet_quantizer("nncf"):
        quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), subset_size=len(feeds))
    out_dir.mkdir(parents=True, exist_ok=True)
    # fp16 compression of the remaining float weights would change fp32-path outputs too.
    ov.save_model(quantized, str(out_dir / IR_XML), compress_to_fp16=False)
    return out_dir


def ov_session(path: Path, precision: str) -> Session:
    """``path`` on OpenVINO's CPU plugin as the loader would open it for ``precision``."""
    from edged.runtime import config_for, open_session

    return open_session(config_for("openvino:cpu", precision=precision), path, warmup=False)


def quantize_catalog_openvino(
    settings: Settings,
    name: str,
    calibration: Path | None,
    *,
    thresholds: Thresholds | None = None,
    keep_failed: bool = False,
    out_dir: Path | None = None,
) -> VisionQuantResult:
    """``edged models quantize NAME --format openvino --calibration DIR``: NNCF int8 IR of
    NAME's fp32 file, gated on the held-out split against fp32 on OpenVINO, registered as an
    ``openvino`` int8 file of NAME. Raises ``GateFailed`` with the numbers when refused."""
    from edged.models.fetch import pick_model_dir

    if calibration is None:
        raise BadRequest("--format openvino calibrates on real images: add --calibration DIR")
    catalog = Catalog.from_settings(settings)
    entry = catalog.get(name)
    if not supports(entry):
        raise BadRequest(f"model {name} (family {entry.family}) has no calibration preprocessing")
    src = fp32_source(entry, catalog)
    calib = CalibrationSet.from_dir(calibration)
    target = out_dir or pick_model_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    dst = target / variant_dir_name(src)
    result = VisionQuantResult(name, src, dst, "nncf-int8", None, calibration=calib.describe())
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=target) as tmp:
        out = Path(tmp) / dst.name
        _quantize_and_gate(entry, result, out, calib, thresholds or thresholds_from(settings))
        assert result.gate is not None
        if not result.gate.passed and not keep_failed:
            result.dst = None
            raise refusal(name, "openvino int8", result.gate)
        if dst.exists():
            shutil.rmtree(dst)  # a variant of an older run; the new one replaces it whole
        os.replace(out, dst)
    new = ModelFile(
        format="openvino",
        precision="int8",
        path=dst.name,
        sha256=dir_sha256(dst),
        scheme=f"NNCF int8 (OpenVINO IR), calibrated on {calib.directory.name} "
        f"({calib.digest[:12]})",
        gate=result.gate.as_dict(),
    )
    result.manifest = register_variant(settings, catalog, entry, new)
    log.info("variant_registered", model=name, path=str(dst), gate=new.gate)
    result.note = search_path_note(settings, dst)
    return result


def _quantize_and_gate(
    entry: ModelEntry,
    result: VisionQuantResult,
    out: Path,
    calib: CalibrationSet,
    thresholds: Thresholds,
) -> None:
    fp32 = ov_session(result.src, "fp32")
    try:
        holes = calib.holes(calib.calibration) if entry.task == "inpainting" else None
        feeds = model_feeds(entry, fp32, load_images(calib.calibration), holes=holes)
        try:
            quantize_openvino(result.src, out, feeds)
        except (BackendUnavailable, BadRequest):
            raise
        except Exception as exc:  # NNCF/OpenVINO errors: name the model, keep the cause
            raise ModelLoadError(f"NNCF cannot quantize {entry.name}: {exc}") from exc
        quant = ov_session(out, "int8")
        try:
            result.gate = evaluate_gate(entry, fp32, quant, calib, thresholds)
        finally:
            quant.close()
    finally:
        fp32.close()


__all__ = [
    "IR_XML",
    "fp32_source",
    "ov_session",
    "quantize_catalog_openvino",
    "quantize_openvino",
    "variant_dir_name",
]
