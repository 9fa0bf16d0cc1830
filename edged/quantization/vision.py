"""Quantize a catalogue vision model with real calibration images, gate it, register it.

``quantize_catalog_model`` is what ``edged models quantize NAME --calibration DIR`` runs:

1. resolve NAME's fp32 ONNX file through the catalogue;
2. calibration feeds = the calibration split of DIR through the model's own task
   preprocessing (``edged.quantization.calibration``);
3. static QDQ: uint8 activations, per-channel int8 weights, compute ops (Conv, ConvTranspose,
   MatMul, Gemm) quantized -- then *layer exclusion*: each candidate layer is kept fp32 in
   turn, the fidelity (PSNR of the variant's output against fp32's on the calibration feeds)
   is measured, and the exclusions that help most are kept greedily while they still gain
   ``MIN_GAIN_DB``;
4. the accuracy gate (``edged.quantization.accuracy_gate``, limits from ``[quantization]``) on the held-out split;
5. a passing variant is written next to the model files (first writable model dir) and added
   to NAME's catalogue entry as a user manifest (sha256, scheme, calibration hash, gate);
   a failing one is deleted and refused with the numbers (``--keep-failed`` keeps it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import Settings
from edged.errors import BadRequest, ModelLoadError, ModelNotFound
from edged.log import get_logger
from edged.models.catalog import Catalog
from edged.models.schema import ModelEntry, ModelFile, Precision
from edged.quantization.accuracy_gate import Thresholds, psnr, thresholds_from
from edged.quantization.calibration import (
    DEFAULT_CROP,
    CalibrationReader,
    CalibrationSet,
    load_images,
    model_feeds,
    supports,
)
from edged.quantization.variants import (
    GateFailed,
    VisionQuantResult,
    evaluate_gate,
    record_gate,
    refusal,
    register_variant,
    search_path_note,
)
from edged.runtime import config_for, open_session
from edged.runtime.base import Array, Session
from edged.util.digest import file_sha256

log = get_logger("quantize")

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
FUSED_ACTIVATIONS = ("Relu", "Clip")
"""Quantized with their conv so the int8 range starts at 0: without them the conv output's
negative half (which Relu drops) wastes the range -- ESPCN x2 lost 2.4 dB instead of 0.3."""
PERCENTILE = 99.99
MIN_GAIN_DB = 0.05
MAX_TRIALS = 8
MAX_FP32_SHARE = 0.25
"""Layers kept fp32 may hold at most this share of the compute weights (a proxy for MACs of
stride-1 convs): a variant that is mostly fp32 would not be worth loading."""
BIG_MODEL = 1_000_000
"""Above this many bytes: no layer-exclusion search, smaller calibration crops, and the
gate on centre crops rather than whole images (each trial re-calibrates the model)."""
PRECISION_OF: dict[str, Precision] = {
    "qdq-int8": "int8",
    "dynamic-int8": "int8",
    "int4-weights": "int4",
}


def fp32_onnx(entry: ModelEntry, catalog: Catalog) -> tuple[ModelFile, Path]:
    """The installed fp32 ONNX file of ``entry``."""
    for file in entry.files:
        if file.format == "onnx" and file.precision == "fp32":
            where = catalog.locate(file)
            if where is not None:
                return file, where
    have = ", ".join(f"{f.path} ({f.format}/{f.precision})" for f in entry.files) or "no files"
    raise ModelNotFound(
        f"{entry.name} has no installed fp32 ONNX file to quantize (has {have}); "
        f"{entry.obtain_hint()}, or pass an .onnx path; models OpenVINO reads "
        "(TFLite) quantize with --format openvino"
    )


def _session(path: Path) -> Session:
    return open_session(config_for("onnx:cpu"), path, warmup=False)


def _outputs(session: Session, feeds: Sequence[dict[str, Array]]) -> list[Array]:
    name = session.outputs[0].name
    return [np.asarray(session.run(f)[name], dtype=np.float32) for f in feeds]


def fidelity_db(reference: Sequence[Array], path: Path, feeds: Sequence[dict[str, Array]]) -> float:
    """Mean PSNR (peak 1.0) of ``path``'s first output against ``reference`` outputs."""
    session = _session(path)
    try:
        outs = _outputs(session, feeds)
    finally:
        session.close()
    peak = max(float(np.abs(r).max()) for r in reference) or 1.0
    return float(np.mean([psnr(o, r, peak) for o, r in zip(outs, reference, strict=True)]))


def quantize_qdq(
    src: Path, dst: Path, feeds: Sequence[dict[str, Array]], exclude: Sequence[str] = ()
) -> None:
    """Static QDQ, per-channel int8 weights, uint8 activations, compute ops only."""
    from edged.quantization.onnx_quantizer import _quant_modules, quiet_quantizer, writable_source

    q = _quant_modules()
    with (
        tempfile.TemporaryDirectory(prefix="edged-calib-") as tmp,
        quiet_quantizer(),
        writable_source(src) as readable,
    ):
        q.quantize_static(
            readable,
            dst,
            CalibrationReader(feeds),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=[*COMPUTE_OPS, *FUSED_ACTIVATIONS],
            nodes_to_exclude=list(exclude),
            # Percentile clips the rare extreme activations MinMax would spend the range on.
            calibrate_method=q.CalibrationMethod.Percentile,
            calibration_cache_path=Path(tmp) / "calib",
            extra_options={"CalibPercentile": PERCENTILE},
        )


def compute_nodes(path: Path) -> dict[str, int]:
    """Compute layer name -> weight element count (its cost proxy)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    return {
        n.name: sizes.get(n.input[1], 0) if len(n.input) > 1 else 0
        for n in graph.node
        if n.op_type in COMPUTE_OPS and n.name
    }


def candidate_nodes(path: Path) -> list[str]:
    """Compute layers worth trying fp32: all of them on small graphs, else both ends."""
    names = list(compute_nodes(path))
    if len(names) <= MAX_TRIALS:
        return names
    half = MAX_TRIALS // 2
    return names[:half] + names[-half:]


def choose_exclusions(
    src: Path, feeds: Sequence[dict[str, Array]], work: Path
) -> tuple[list[str], float, list[dict[str, Any]]]:
    """Greedy layer exclusion by measured fidelity; returns (excluded, fidelity, report)."""
    fp32 = _session(src)
    try:
        reference = _outputs(fp32, feeds)
    finally:
        fp32.close()

    def trial(exclude: Sequence[str]) -> float:
        out = work / f"trial{len(list(work.iterdir()))}.onnx"
        quantize_qdq(src, out, feeds, exclude)
        return fidelity_db(reference, out, feeds)

    base = trial([])
    report: list[dict[str, Any]] = [{"excluded": [], "fidelity_db": round(base, 2)}]
    gains = []
    costs = compute_nodes(src)
    budget = MAX_FP32_SHARE * sum(costs.values())
    for node in candidate_nodes(src):
        score = trial([node])
        report.append({"excluded": [node], "fidelity_db": round(score, 2)})
        gains.append((score - base, node))
    excluded: list[str] = []
    best = base
    for gain, node in sorted(gains, reverse=True):
        if gain < MIN_GAIN_DB:
            break
        if costs[node] + sum(costs[n] for n in excluded) > budget:
            continue
        score = trial([*excluded, node])
        if score - best < MIN_GAIN_DB:
            continue
        excluded.append(node)
        best = score
        report.append({"excluded": list(excluded), "fidelity_db": round(score, 2)})
    return excluded, best, report


def variant_name(src: Path, scheme: str) -> str:
    return f"{src.stem}_{scheme}.onnx"


def calibrated_qdq(
    entry: ModelEntry, src: Path, out: Path, calib: CalibrationSet, work: Path
) -> tuple[list[str], float | None]:
    """Static QDQ of ``src`` to ``out`` on ``calib``'s calibration split; the layer-exclusion
    search runs on models up to ``BIG_MODEL`` bytes (bigger ones: one quantization, smaller
    crops). Returns (excluded layers, fidelity dB or None)."""
    big = src.stat().st_size > BIG_MODEL
    fp32 = _session(src)
    try:
        images = load_images(calib.calibration)
        holes = calib.holes(calib.calibration) if entry.task == "inpainting" else None
        crop = 48 if big else DEFAULT_CROP
        feeds = model_feeds(entry, fp32, images, crop=crop, holes=holes)
    finally:
        fp32.close()
    if big:
        quantize_qdq(src, out, feeds)
        return [], None
    excluded, fidelity, report = choose_exclusions(src, feeds, work)
    log.info("layer_exclusion", model=entry.name, excluded=excluded, trials=report)
    quantize_qdq(src, out, feeds, excluded)
    return excluded, fidelity


def quantize_catalog_model(
    settings: Settings,
    name: str,
    scheme: str,
    calibration: Path | None,
    *,
    thresholds: Thresholds | None = None,
    keep_failed: bool = False,
    out_dir: Path | None = None,
) -> VisionQuantResult:
    """See the module doc. Raises ``GateFailed`` (with the numbers) when the gate fails.

    ``thresholds`` default to ``settings``' ``[quantization]`` limits."""
    from edged.models.fetch import pick_model_dir
    from edged.quantization.onnx_quantizer import SCHEMES

    if scheme not in SCHEMES:
        raise BadRequest(f"unknown scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    catalog = Catalog.from_settings(settings)
    entry = catalog.get(name)
    _, src = fp32_onnx(entry, catalog)
    calib = CalibrationSet.from_dir(calibration) if calibration is not None else None
    if calib is not None and not supports(entry):
        raise BadRequest(
            f"--calibration: model {name} (family {entry.family}) has no image "
            "preprocessing for calibration; quantize it without --calibration"
        )
    crop = 96 if src.stat().st_size > BIG_MODEL else None
    dst = _destination(out_dir or pick_model_dir(settings), src, scheme)
    target_dir = dst.parent
    result = VisionQuantResult(name, src, dst, scheme, None)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=target_dir) as tmp:
        out = Path(tmp) / dst.name
        _produce(entry, result, out, calib)
        if calib is not None:
            result.calibration = calib.describe()
            fp32, quant = _session(src), _session(out)
            try:
                limits = thresholds or thresholds_from(settings)
                result.gate = evaluate_gate(entry, fp32, quant, calib, limits, crop=crop)
            finally:
                fp32.close()
                quant.close()
        if result.gate is not None and not result.gate.passed and not keep_failed:
            result.dst = None
            raise refusal(name, scheme, result.gate)
        os.replace(out, dst)
    new = ModelFile(
        format="onnx",
        precision=PRECISION_OF[scheme],
        path=dst.name,
        sha256=file_sha256(dst),
        size=dst.stat().st_size,
        scheme=_scheme_text(scheme, calib, result.excluded),
        gate=result.gate.as_dict() if result.gate else None,
    )
    result.manifest = register_variant(settings, catalog, entry, new)
    log.info("variant_registered", model=name, path=str(dst), gate=new.gate)
    result.note = search_path_note(settings, dst)
    return result


def _destination(out: Path, src: Path, scheme: str) -> Path:
    """``--out`` names a file (``*.onnx``) or a directory; either is created as needed."""
    target = out if out.suffix != ".onnx" else out.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadRequest(f"--out {out}: cannot create {target} ({exc.strerror})") from exc
    return out if out.suffix == ".onnx" else target / variant_name(src, scheme)


def _produce(
    entry: ModelEntry, result: VisionQuantResult, out: Path, calib: CalibrationSet | None
) -> None:
    """Quantize ``result.src`` to ``out``: calibrated QDQ with layer exclusion, or the plain
    ``edged.quantization.onnx_quantizer`` schemes."""
    from edged.quantization.onnx_quantizer import quantize_file

    try:
        if result.scheme == "qdq-int8" and calib is not None:
            work = out.parent / "trials"
            work.mkdir()
            result.excluded, result.fidelity_db = calibrated_qdq(
                entry, result.src, out, calib, work
            )
        else:
            quantize_file(result.src, out, result.scheme)
    except (BadRequest, ModelNotFound):
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot quantize {entry.name} with {result.scheme}: {exc}") from exc


def _scheme_text(scheme: str, calib: CalibrationSet | None, excluded: list[str]) -> str:
    if calib is None:
        return scheme if scheme != "qdq-int8" else f"{scheme} (random calibration feeds)"
    text = f"{scheme} per-channel, calibrated on {calib.directory.name} ({calib.digest[:12]})"
    return text + (f", fp32 layers: {', '.join(excluded)}" if excluded else "")


__all__ = [
    "GateFailed",
    "VisionQuantResult",
    "evaluate_gate",
    "quantize_catalog_model",
    "record_gate",
    "register_variant",
]
