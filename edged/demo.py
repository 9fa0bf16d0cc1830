"""``edged demo``: the main job end to end on a fresh machine, with the embedded defaults.

1. fetch the default models (``selfie_segmentation`` from its PyPI wheel; ``edged_sr_x2``
   ships with edged; ``opencv_telea`` has no files) and a CC0 sample photo (scikit-image's
   astronaut, from its PyPI wheel);
2. turn the photo into a short panning video and drop a small copy in an inbox;
3. start the real daemon (``edged run``) with a segmentation stream on the video and a
   super-resolution inbox, subscribe to its results, send it an inpainting request;
4. write viewable PNGs (mask overlays, the upscaled image, the inpainted image) and a
   ``summary.json`` into the output dir, print a summary, stop the daemon with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.config import Settings
from edged.errors import EdgedError, FetchError
from edged.log import get_logger
from edged.testing.daemon import Daemon
from edged.util.digest import file_sha256
from edged.util.optional import cv2 as _cv2
from edged.util.toml_text import toml_document

log = get_logger("demo")

SAMPLE_SOURCE = "pypi:scikit-image==0.25.2#skimage/data/astronaut.png"
SAMPLE_SHA256 = "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"
MODELS = {
    "segmentation": "selfie_segmentation",
    "superres": "edged_sr_x2",
    "inpainting": "opencv_telea",
}
CONFIG_KEYS = (
    "MODEL_DIRS",
    "STATE_DIR",
    "CACHE_DIR",
    "RUNTIME_DIR",
    "LOG_FORMAT",
    "WARMUP_MODELS",
    "STREAMS",
    "ZMQ",
    "SERVICE",
)
"""Settings the demo's config file sets (EDGED_* variables would override them)."""
FRAMES = 12
WAIT_S = 120.0

Image = npt.NDArray[np.uint8]


@dataclass
class Outcome:
    """What one part of the demo produced (or why it could not)."""

    task: str
    model: str
    ok: bool = False
    files: list[str] = field(default_factory=list)
    detail: str = ""
    backend: str | None = None
    latency_ms: float | None = None


# ---------------------------------------------------------------- downloads


def choose_models(catalog: Any) -> tuple[dict[str, str], list[str]]:
    """The default model per task; a task whose default is not in this catalogue falls back
    to an installed model of the same task (named in the notes)."""
    chosen, notes = {}, []
    for task, name in MODELS.items():
        if name in catalog.entries:
            chosen[task] = name
            continue
        installed = [
            e.name
            for e in catalog
            if e.task == task and e.files and len(catalog.installed(e)) == len(e.files)
        ]
        if installed:
            chosen[task] = sorted(installed)[0]
            notes.append(f"{task}: {name} is not in the catalogue, using {chosen[task]}")
        else:
            chosen[task] = name  # fetch_models reports it
    return chosen, notes


def fetch_models(settings: Settings, catalog: Any, names: list[str]) -> list[str]:
    """Fetch what is missing; returns one clear line per model that could not be fetched."""
    from edged.models.fetch import context_from_settings, fetch_entry, pick_model_dir

    ctx = context_from_settings(settings, timeout=60, retries=2)
    problems = []
    for name in names:
        try:
            entry = catalog.get(name)
            if not entry.files:
                continue
            results = fetch_entry(entry, catalog, pick_model_dir(settings), ctx)
        except EdgedError as exc:
            problems.append(f"{name}: {str(exc).splitlines()[0]}")
            continue
        for result in results:
            print(f"  model {name}: {result.file}: {result.status}", flush=True)
        if not any(r.path for r in results):
            problems.append(f"{name}: no file could be fetched ({results[0].detail})")
    return problems


def fetch_sample(settings: Settings) -> Path:
    """The CC0 sample photo, cached under ``{cache_dir}/demo`` and checked by sha256."""
    from edged.models.fetch import context_from_settings
    from edged.models.sources import fetch_source

    dest = settings.cache_dir / "demo" / "astronaut.png"
    if dest.is_file() and file_sha256(dest) == SAMPLE_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    ctx = context_from_settings(settings, timeout=60, retries=2)
    ctx.download_dir.mkdir(parents=True, exist_ok=True)
    fetch_source(SAMPLE_SOURCE, part, "astronaut.png", ctx, None)
    if file_sha256(part) != SAMPLE_SHA256:
        part.unlink(missing_ok=True)
        raise FetchError(f"{SAMPLE_SOURCE}: sha256 mismatch (mirror serving other bytes?)")
    part.replace(dest)
    return dest


# ---------------------------------------------------------------- inputs


def read_rgb(path: Path) -> Image:
    cv2 = _cv2()
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EdgedError(f"cannot decode {path}")
    rgb: Image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return rgb


def write_rgb(path: Path, image: npt.NDArray[Any]) -> None:
    cv2 = _cv2()
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise EdgedError(f"cannot write {path}")


def panning_frames(photo: Image, count: int, size: int = 256) -> list[Image]:
    """A slow zoom-and-pan over the photo: frames a camera pointed at it might see."""
    cv2 = _cv2()
    h, w = photo.shape[:2]
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        crop = int(min(h, w) * (1.0 - 0.3 * t))
        x, y = int((w - crop) * t * 0.5), int((h - crop) * 0.2 * t)
        view = photo[y : y + crop, x : x + crop]
        frames.append(cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA))
    return frames


def overlay(frame: Image, mask: npt.NDArray[Any]) -> Image:
    """Frame | frame with the person tinted green, side by side."""
    cv2 = _cv2()
    m = mask if mask.ndim == 2 else mask[..., 0]
    m = cv2.resize(m.astype(np.uint8), (frame.shape[1], frame.shape[0]))
    alpha = (m.astype(np.float32) / 255.0)[..., None] * 0.55
    tint = np.array([40, 220, 90], np.float32)
    mixed = (frame.astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    return np.concatenate([frame, mixed], axis=1)


def hole_mask(shape: tuple[int, ...]) -> Image:
    """A hole over the mission patch and a scratch across the sky: 255 = inpaint."""
    cv2 = _cv2()
    mask = np.zeros(shape[:2], np.uint8)
    h, w = shape[:2]
    cv2.ellipse(mask, (int(w * 0.3), int(h * 0.75)), (w // 10, h // 14), 20, 0, 360, 255, -1)
    cv2.line(
        mask, (int(w * 0.55), int(h * 0.1)), (int(w * 0.9), int(h * 0.3)), 255, max(2, w // 64)
    )
    return mask


def demo_config(
    work: Path,
    runtime: Path,
    settings: Settings,
    models: dict[str, str],
    *,
    video: Path,
    inbox: Path,
) -> Path:
    """The config of the daemon the demo starts (the one TOML writer, ``edged.util.toml_text``)."""
    top = {
        "model_dirs": settings.model_search_path,
        "state_dir": settings.state_dir,
        "cache_dir": settings.cache_dir,
        "runtime_dir": runtime,
        "log_format": "json",
        "warmup_models": [models["segmentation"]],
    }
    sections = {"zmq": {"stats_interval_s": 2.0}, "service": {"inbox_poll_s": 0.2}}
    streams: list[dict[str, Any]] = [
        {
            "name": "demo",
            "source": video,
            "task": "segmentation",
            "model": models["segmentation"],
            "loop": True,
            "max_fps": 8,
        },
        {
            "name": "inbox",
            "source": f"dir:{inbox}",
            "task": "superres",
            "model": models["superres"],
        },
    ]
    path = work / "edged.toml"
    body = toml_document(top, sections, {"streams": streams})
    path.write_text("# Written by `edged demo`: the daemon it starts.\n" + body)
    return path


# ---------------------------------------------------------------- the daemon


def start_daemon(config: Path, runtime: Path, log_path: Path) -> Daemon:
    """``edged run --config CONFIG`` as a child (the one daemon harness,
    ``edged.testing.daemon.Daemon``), started and ready (``READY=1``: sockets bound, models
    warmed), logging to ``log_path``; its notify socket sits in the short ``runtime`` dir.

    The config file sets ``CONFIG_KEYS``; ``EDGED_*`` variables for those would override it
    (env > file), so they are left out; any other ``EDGED_*`` setting passes through.
    """
    written = {"EDGED_CONFIG", *(f"EDGED_{k}" for k in CONFIG_KEYS)}
    passed = {
        k: v for k, v in os.environ.items() if k.startswith("EDGED_") and k.upper() not in written
    }
    daemon = Daemon(
        config, runtime, env=passed, isolated=True, runtime_dir=runtime, log_path=log_path
    )
    try:
        return daemon.start(wait_ready=WAIT_S)
    except BaseException:
        daemon.close()
        raise


def runtime_dir() -> Path:
    # ipc:// paths must stay under ~100 bytes, so sockets live in a short temp dir.
    return Path(tempfile.mkdtemp(prefix="edged-demo-"))


def clean_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
