"""A quantized variant's accuracy gate, registration in the catalogue, and refusal.

Shared by the two ways edged makes variants of a catalogue model: onnxruntime QDQ
(``edged.quantization.vision``) and NNCF OpenVINO IR (``edged.quantization.openvino_quantizer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.config import Settings
from edged.errors import BadRequest, ModelNotFound, ModelVerificationError
from edged.log import get_logger
from edged.models.add import write_user_manifest
from edged.models.catalog import Catalog
from edged.models.schema import ModelEntry, ModelFile
from edged.quantization.accuracy_gate import DEFAULTS, GateResult, Thresholds, gate_for
from edged.quantization.calibration import CalibrationSet, load_images
from edged.runtime.base import Session

log = get_logger("quantize")


class GateFailed(ModelVerificationError):
    """A quantized variant did not pass its accuracy gate (it is not registered)."""


@dataclass
class VisionQuantResult:
    entry: str
    src: Path
    dst: Path | None
    scheme: str
    gate: GateResult | None
    excluded: list[str] = field(default_factory=list)
    fidelity_db: float | None = None
    manifest: Path | None = None
    calibration: dict[str, Any] | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.entry,
            "src": str(self.src),
            "dst": str(self.dst) if self.dst else None,
            "scheme": self.scheme,
            "excluded_nodes": self.excluded,
            "fidelity_db": None if self.fidelity_db is None else round(self.fidelity_db, 2),
            "gate": self.gate.as_dict() if self.gate else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "calibration": self.calibration,
            **({"note": self.note} if self.note else {}),
        }


def evaluate_gate(
    entry: ModelEntry,
    fp32: Session,
    quant: Session,
    calib: CalibrationSet,
    thresholds: Thresholds = DEFAULTS,
    *,
    crop: int | None = None,
) -> GateResult:
    """The entry's accuracy gate on the held-out split of ``calib``."""
    gate = gate_for(entry)
    if gate is None:
        raise BadRequest(
            f"model {entry.name}: no accuracy gate for family {entry.family!r} "
            "(super-resolution and segmentation families have one)"
        )
    images = load_images(calib.held_out)
    kwargs: dict[str, Any] = {"crop": crop} if entry.task == "superres" else {}
    if entry.task == "inpainting":
        kwargs = {"holes": calib.holes(calib.held_out)}
    result = gate(entry, fp32, quant, images, thresholds, **kwargs)
    result.calibration = calib.digest
    return result


def register_variant(
    settings: Settings, catalog: Catalog, entry: ModelEntry, new: ModelFile
) -> Path:
    """Add (or replace) ``new`` in ``entry``'s files and write the user manifest."""
    files = [f for f in entry.files if f.path != new.path]
    updated = entry.model_copy(update={"files": [*files, new]})
    ModelEntry.model_validate(updated.model_dump())  # the manifest must read back
    return write_user_manifest(settings, updated)


def record_gate(
    settings: Settings, catalog: Catalog, entry: ModelEntry, path: str, gate: dict[str, Any]
) -> Path:
    """Store a gate result on the entry's file ``path`` (user manifest)."""
    file = next((f for f in entry.files if f.path == path), None)
    if file is None:
        raise ModelNotFound(f"{entry.name} has no file {path}")
    return register_variant(settings, catalog, entry, file.model_copy(update={"gate": gate}))


def refusal(name: str, scheme: str, gate: GateResult) -> GateFailed:
    """The error of a variant the gate refused: the numbers, and that nothing was written."""
    return GateFailed(
        f"{name} {scheme} refused by the accuracy gate on {gate.images} held-out images: "
        f"{gate.summary()}; nothing was written (--keep-failed keeps it, registered as failed)"
    )


def search_path_note(settings: Settings, dst: Path) -> str | None:
    """Catalogue files are names looked up on model_dirs: a variant written elsewhere is said
    to be unreachable rather than left silently unused."""
    where = dst.parent.resolve()
    if any(d.resolve() == where for d in settings.model_search_path):
        return None
    log.warning("variant_outside_model_dirs", path=str(dst))
    return (
        f"{dst.parent} is not on the model search path, so edged will not load this "
        f"variant: add it to model_dirs (EDGED_MODEL_DIRS) or quantize without --out"
    )
