"""The accuracy gate of quantized variants (speed records and the load rule: ``precision_gate``).

Accuracy gate (per quantized variant, on the held-out split of a calibration set):

* super-resolution -- Y-channel PSNR against the HR image (border of ``scale`` px cropped,
  LR made with the model's training degradation): the variant may lose at most
  ``max_psnr_drop_db`` against its fp32 original and must never score below bicubic;
* segmentation -- IoU of the variant's person mask with the fp32 mask, at least ``min_iou``;
* inpainting -- PSNR inside the hole against the original, at most ``max_hole_drop_db`` drop.

The limits are the ``[quantization]`` settings (``thresholds_from``); CLI flags override them.

The result is a plain dict stored on ``ModelFile.gate`` (see ``record_gate``), so
``edged models list`` shows it and the loader can read it.

Speed gate and the load-time decision live in ``edged.quantization.speed_gate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edged.config import Settings
from edged.models.schema import ModelEntry
from edged.runtime.base import Session


@dataclass(frozen=True)
class Thresholds:
    """Gate limits; the defaults equal ``QuantizationSettings``' (a test pins them)."""

    max_psnr_drop_db: float = 0.3
    min_iou: float = 0.97
    max_hole_drop_db: float = 0.5


DEFAULTS = Thresholds()


def thresholds_from(settings: Settings) -> Thresholds:
    """The limits in force: ``[quantization]`` after env and CLI overrides."""
    q = settings.quantization
    return Thresholds(q.max_psnr_drop_db, q.min_iou, q.max_hole_drop_db)


# ---------------------------------------------------------------- metrics


def psnr(a: npt.NDArray[Any], b: npt.NDArray[Any], peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(peak * peak / mse))


def iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def _y255(image: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """H x W x 1 float 0..1 (model output) or RGB uint8 -> Y levels 0..255, rounded."""
    if image.dtype == np.uint8:
        y = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 0].astype(np.float64)
    else:
        y = np.clip(np.rint(image[..., 0] * 255.0), 0, 255).astype(np.float64)
    return y


def _crop(a: npt.NDArray[Any], border: int) -> npt.NDArray[Any]:
    return a[border:-border, border:-border] if border else a


# ---------------------------------------------------------------- gates


@dataclass
class GateResult:
    """Verdict plus the numbers behind it; ``as_dict`` is what the catalogue stores."""

    passed: bool
    metric: str
    values: dict[str, float]
    threshold: dict[str, float]
    images: int
    reasons: list[str] = field(default_factory=list)
    calibration: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "passed": self.passed,
            "metric": self.metric,
            **{k: round(v, 4) for k, v in self.values.items()},
            **self.threshold,
            "images": self.images,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.calibration:
            out["calibration_sha256"] = self.calibration
        if self.reasons:
            out["reasons"] = "; ".join(self.reasons)
        return out

    def summary(self) -> str:
        # IoU limits sit at the third decimal (0.97): two would print a failing 0.968 as 0.97.
        nums = ", ".join(
            f"{k} {v:.3f}" if k == "iou" else f"{k} {v:.2f}" for k, v in self.values.items()
        )
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.reasons)
        return f"{self.metric} {nums} -> {verdict}"


def sr_gate(
    entry: ModelEntry,
    fp32: Session,
    quant: Session,
    images: Sequence[npt.NDArray[np.uint8]],
    thresholds: Thresholds = DEFAULTS,
    *,
    crop: int | None = None,
) -> GateResult:
    """Mean Y-PSNR over ``images`` (HR, RGB) of fp32, variant and bicubic; see module doc."""
    from edged.quantization.calibration import sr_pair

    scale = int(entry.params.get("scale", 1))
    sums = {"fp32_db": 0.0, "quant_db": 0.0, "bicubic_db": 0.0}
    for hr in images:
        lr, hr_c = sr_pair(entry, hr, crop)
        truth = _crop(_y255(hr_c), scale)
        bicubic = cv2.resize(lr, (hr_c.shape[1], hr_c.shape[0]), interpolation=cv2.INTER_CUBIC)
        sums["bicubic_db"] += psnr(_crop(_y255(bicubic), scale), truth)
        sums["fp32_db"] += psnr(_crop(_sr_y(entry, fp32, lr), scale), truth)
        sums["quant_db"] += psnr(_crop(_sr_y(entry, quant, lr), scale), truth)
    n = max(1, len(images))
    values = {k: v / n for k, v in sums.items()}
    values["drop_db"] = values["fp32_db"] - values["quant_db"]
    reasons = []
    if values["drop_db"] > thresholds.max_psnr_drop_db:
        reasons.append(
            f"loses {values['drop_db']:.2f} dB vs fp32 ({values['quant_db']:.2f} vs "
            f"{values['fp32_db']:.2f}; limit {thresholds.max_psnr_drop_db} dB)"
        )
    # GAN-trained models score below bicubic in fp32 already: the floor says nothing there.
    floor_applies = values["fp32_db"] >= values["bicubic_db"]
    if floor_applies and values["quant_db"] < values["bicubic_db"]:
        reasons.append(f"below bicubic ({values['quant_db']:.2f} < {values['bicubic_db']:.2f} dB)")
    return GateResult(
        passed=not reasons,
        metric="y_psnr",
        values=values,
        threshold={"max_drop_db": thresholds.max_psnr_drop_db},
        images=len(images),
        reasons=reasons,
    )


def _sr_y(entry: ModelEntry, session: Session, lr: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    from edged.quantization.calibration import sr_upscale_y

    out = sr_upscale_y(entry, session, lr)
    if entry.family == "sr-y":
        return _y255(out)
    rgb = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return _y255(rgb)


def seg_gate(
    entry: ModelEntry,
    fp32: Session,
    quant: Session,
    images: Sequence[npt.NDArray[np.uint8]],
    thresholds: Thresholds = DEFAULTS,
) -> GateResult:
    """Mean IoU of the variant's mask with the fp32 mask (at model resolution)."""
    from edged.quantization.calibration import seg_feed

    total = 0.0
    for image in images:
        feed = seg_feed(entry, fp32, image)
        total += iou(_seg_mask(entry, fp32, feed), _seg_mask(entry, quant, feed))
    mean = total / max(1, len(images))
    reasons = [] if mean >= thresholds.min_iou else [f"IoU {mean:.3f} < {thresholds.min_iou}"]
    return GateResult(
        passed=not reasons,
        metric="mask_iou",
        values={"iou": mean},
        threshold={"min_iou": thresholds.min_iou},
        images=len(images),
        reasons=reasons,
    )


def _seg_mask(entry: ModelEntry, session: Session, feed: dict[str, Any]) -> npt.NDArray[np.bool_]:
    from edged.tasks import segmentation_map

    raw = segmentation_map(entry, session, session.run(feed))
    if entry.family == "deeplabv3":
        person = int(entry.params.get("person", 15))
        return np.asarray(np.argmax(raw, axis=2) == person)
    return np.asarray(raw[:, :, 0] >= 0.5)


def hole_gate(
    reference: Sequence[npt.NDArray[Any]],
    fp32_out: Sequence[npt.NDArray[Any]],
    quant_out: Sequence[npt.NDArray[Any]],
    holes: Sequence[npt.NDArray[np.bool_]],
    thresholds: Thresholds = DEFAULTS,
) -> GateResult:
    """Inpainting: PSNR inside the holes vs the original image, fp32 against the variant."""
    f = float(
        np.mean([psnr(o[h], r[h]) for o, r, h in zip(fp32_out, reference, holes, strict=True)])
    )
    q = float(
        np.mean([psnr(o[h], r[h]) for o, r, h in zip(quant_out, reference, holes, strict=True)])
    )
    drop = f - q
    reasons = []
    if drop > thresholds.max_hole_drop_db:
        reasons.append(f"loses {drop:.2f} dB in the holes (limit {thresholds.max_hole_drop_db})")
    return GateResult(
        passed=not reasons,
        metric="hole_psnr",
        values={"fp32_db": f, "quant_db": q, "drop_db": drop},
        threshold={"max_drop_db": thresholds.max_hole_drop_db},
        images=len(holes),
        reasons=reasons,
    )


def inpaint_gate(
    entry: ModelEntry,
    fp32: Session,
    quant: Session,
    images: Sequence[npt.NDArray[np.uint8]],
    thresholds: Thresholds = DEFAULTS,
    *,
    holes: Sequence[npt.NDArray[np.bool_]],
) -> GateResult:
    """In-hole PSNR of the variant's and fp32's fills against the original images."""
    from edged.quantization.calibration import inpaint_fill

    reference = [np.asarray(i, np.float64) for i in images]
    pairs = list(zip(images, holes, strict=True))
    fp32_out = [np.clip(inpaint_fill(entry, fp32, i, h), 0, 255) for i, h in pairs]
    quant_out = [np.clip(inpaint_fill(entry, quant, i, h), 0, 255) for i, h in pairs]
    return hole_gate(reference, fp32_out, quant_out, holes, thresholds)


GateFn = Callable[..., GateResult]


def gate_for(entry: ModelEntry) -> GateFn | None:
    """The gate of the entry's task, or None when there is none for its family."""
    from edged.quantization.calibration import INPAINT_FAMILIES, SEG_FAMILIES, SR_FAMILIES

    if entry.family in INPAINT_FAMILIES:
        return inpaint_gate
    if entry.family in SR_FAMILIES:
        return sr_gate
    if entry.family in SEG_FAMILIES:
        return seg_gate
    return None
