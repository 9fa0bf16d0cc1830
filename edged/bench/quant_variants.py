"""The int8 variants ``edged bench quantization`` compares with fp32, per model.

The entry's own int8 files (e.g. the shared ``*_int8.tflite``), plus one made here when the
entry has none of that kind: a static QDQ ONNX (``edged.quantization.vision``) from an fp32 ONNX
file, else an NNCF OpenVINO IR (``edged.quantization.openvino_quantizer``) from a file OpenVINO reads
(TFLite-only models). Made variants are cached in ``{cache_dir}/quantization`` by source and
calibration images; one that cannot be made is listed with its reason, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edged.config import Settings
from edged.models.catalog import Catalog
from edged.models.schema import ModelEntry, ModelFile
from edged.quantization.accuracy_gate import GateResult
from edged.quantization.calibration import CalibrationSet, load_images
from edged.runtime import FORMAT_OF_RUNTIME
from edged.runtime.base import one_line
from edged.util.digest import file_sha256


@dataclass
class Variant:
    path: Path
    file: ModelFile | None  # None: made here, not (yet) in the catalogue
    gate: GateResult | None = None
    note: str | None = None


def installed(catalog: Catalog, entry: ModelEntry, precision: str) -> list[tuple[ModelFile, Path]]:
    found = catalog.installed(entry)
    return [(f, found[f.path]) for f in entry.files if f.precision == precision and f.path in found]


def fp32_for(catalog: Catalog, entry: ModelEntry, fmt: str) -> Path | None:
    """The fp32 file to compare a ``fmt`` int8 file with; for an OpenVINO IR variant, the
    file it was made from (any format OpenVINO reads, IR first)."""
    fp32 = {f.format: p for f, p in reversed(installed(catalog, entry, "fp32"))}
    wanted = FORMAT_OF_RUNTIME["openvino"] if fmt == "openvino" else (fmt,)
    return next((fp32[f] for f in wanted if f in fp32), None)


def file_format(path: Path) -> str:
    if path.is_dir() or path.suffix == ".xml":
        return "openvino"
    return "tflite" if path.suffix == ".tflite" else "onnx"


def _cache_dir(settings: Settings) -> Path:
    return settings.cache_dir / "quantization"


def _cached(
    settings: Settings, src: Path, calib: CalibrationSet, suffix: str, make: Callable[[Path], None]
) -> Variant:
    """``make(out)`` once per source file and calibration set; the result is kept in
    ``{cache_dir}/quantization`` under a name made of both hashes, written via a temp dir."""
    import tempfile

    cache = _cache_dir(settings)
    dst = cache / f"{src.stem}.{file_sha256(src)[:8]}.{calib.digest[:8]}.{suffix}"
    if not dst.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".quant-", dir=cache) as tmp:
            out = Path(tmp) / dst.name
            make(out)
            out.replace(dst)
    return Variant(dst, None)


def made_here(settings: Settings, entry: ModelEntry, src: Path, calib: CalibrationSet) -> Variant:
    """The QDQ variant of an fp32 ONNX file (its layer exclusions noted beside it)."""
    from edged.quantization.vision import calibrated_qdq

    def make(out: Path) -> None:
        work = out.parent / "trials"
        work.mkdir()
        excluded, _ = calibrated_qdq(entry, src, out, calib, work)
        # Kept beside the variant for a reader of the cache: which layers stayed fp32.
        (_cache_dir(settings) / f"{out.name}.excluded").write_text(",".join(excluded), "utf-8")

    return _cached(settings, src, calib, "qdq-int8.onnx", make)


def made_here_openvino(
    settings: Settings, entry: ModelEntry, src: Path, calib: CalibrationSet
) -> Variant:
    """The NNCF int8 OpenVINO IR of a model with no fp32 ONNX file (TFLite-only)."""
    from edged.quantization.calibration import model_feeds
    from edged.quantization.openvino_quantizer import ov_session, quantize_openvino

    def make(out: Path) -> None:
        fp32 = ov_session(src, "fp32")
        try:
            feeds = model_feeds(entry, fp32, load_images(calib.calibration))
        finally:
            fp32.close()
        quantize_openvino(src, out, feeds)

    return _cached(settings, src, calib, "ov-int8", make)


def variants(
    settings: Settings,
    catalog: Catalog,
    entry: ModelEntry,
    calib: CalibrationSet | None,
    quantize: bool,
    *,
    openvino: bool = True,
) -> list[Variant]:
    """The entry's int8 files, plus one made here when it has none of that kind: static QDQ
    ONNX from an fp32 ONNX file, else (``openvino``) an NNCF OpenVINO IR from what OpenVINO
    reads. A variant that cannot be made is listed with its reason."""
    found = [Variant(p, f) for f, p in installed(catalog, entry, "int8")]
    onnx_fp32 = [p for f, p in installed(catalog, entry, "fp32") if f.format == "onnx"]
    if not quantize or calib is None:
        return found
    src: Path | None
    if onnx_fp32 and not any(file_format(v.path) == "onnx" for v in found):
        src, make = onnx_fp32[0], made_here
    elif openvino and not onnx_fp32 and not any(file_format(v.path) == "openvino" for v in found):
        src, make = fp32_for(catalog, entry, "openvino"), made_here_openvino
    else:
        return found
    if src is not None:
        try:
            found.append(make(settings, entry, src, calib))
        except Exception as exc:  # one model's quantizer failure must not end the bench
            found.append(Variant(src, None, note=f"quantization failed: {one_line(exc, 160)}"))
    return found
