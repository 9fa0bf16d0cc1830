"""The config file's sections: ``[zmq]``, ``[[streams]]``, ``[service]``, ``[generation]``,
``[quantization]``; each a strict model validated once when the settings load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from edged.schema import ByteSize, StrictModel


class ZmqSettings(StrictModel):
    """ZeroMQ endpoints, limits and security (see docs/protocol.md)."""

    requests: str | None = Field(
        default=None,
        description="Request (ROUTER) endpoint; default ipc://{runtime_dir}/requests.sock.",
    )
    results: str | None = Field(
        default=None,
        description="Results (PUB) endpoint; default ipc://{runtime_dir}/results.sock.",
    )
    curve_secret_key_file: Path | None = Field(
        default=None,
        description="Server CURVE secret key file (zmq.auth format); required for tcp:// endpoints.",
    )
    curve_allowed_clients_dir: Path | None = Field(
        default=None,
        description="Directory of allowed client public keys (*.key); checked by ZAP.",
    )
    allow_insecure_tcp: bool = Field(
        default=False, description="Allow tcp:// endpoints without CURVE (trusted networks only)."
    )
    max_frame_bytes: ByteSize = Field(
        default=32_000_000, gt=0, description="Largest single request frame accepted."
    )
    max_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest decoded image (width*height) accepted."
    )
    max_message_bytes: ByteSize | None = Field(
        default=None,
        gt=0,
        description="Largest whole request (all frames); default header + 2 frames, and never "
        "over 1/8 of the memory budget (see edged.wire.receive).",
    )
    max_queue: int = Field(default=64, gt=0, description="Requests waiting before `busy`.")
    receiver: Literal["process", "inline"] = Field(
        default="process",
        description="process: a memory-limited child process receives requests, so a "
        "many-frame message costs the daemon nothing (docs/reliability.md); inline: the "
        "daemon receives them itself: ~0.2-1 ms less per request, for trusted clients only.",
    )
    hwm: int = Field(default=100, gt=0, description="Send/receive high-water mark per socket.")
    linger_ms: int = Field(default=200, ge=0, description="How long close() may flush.")
    stats_interval_s: float = Field(
        default=10.0, gt=0, description="Period of the `stats` topic on the results socket."
    )


class StreamSettings(StrictModel):
    """One input the daemon processes continuously (`[[streams]]`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Topic prefix of results.")
    source: str = Field(
        description=(
            "/dev/videoN, rtsp://, http(s)://, a video or image file, or dir:PATH for an inbox."
        )
    )
    task: Literal["segmentation", "superres", "inpainting", "generation"] = Field(
        description="What to run on each frame or file."
    )
    model: str | None = Field(default=None, description="Catalogue name; default per task.")
    params: dict[str, Any] = Field(default_factory=dict, description="Task parameters.")
    every_nth: int = Field(default=1, ge=1, description="Process one frame in N.")
    max_fps: float | None = Field(default=None, gt=0, description="Upper bound on processed fps.")
    publish: bool = Field(default=True, description="Publish results on the PUB socket.")
    encoding: Literal["png", "jpeg", "npy", "raw"] = Field(
        default="png",
        description="How result images are published: png/jpeg are compact; raw/npy skip "
        "encoding (cheapest on ipc:// or loopback, several ms per 640x360 frame).",
    )
    width: int | None = Field(default=None, gt=0, description="Camera capture width.")
    height: int | None = Field(default=None, gt=0, description="Camera capture height.")
    fps: float | None = Field(default=None, gt=0, description="Camera capture fps.")
    fourcc: str | None = Field(
        default=None, min_length=4, max_length=4, description="Camera pixel format, e.g. MJPG."
    )
    loop: bool = Field(default=False, description="Restart a video file at its end.")
    parallel: int = Field(
        default=1,
        ge=1,
        le=4,
        description="Frames of this stream processed at once, each on its own copy of the "
        "model with the profile's threads split between them; results stay in capture order.",
    )

    @field_validator("params")
    @classmethod
    def _params_fit_the_task(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checked once here, with the same typed model a request's params meet, rather than
        # failing every frame once the stream runs (and so a SIGHUP reload refuses it). Lazy:
        # edged.tasks.params is light (pydantic only), but the config must not import tasks
        # at module level.
        from edged.errors import BadRequest
        from edged.tasks.params import validate_params

        task = info.data.get("task")
        if task is None:  # the task itself is invalid: that error is reported already
            return value
        try:
            validate_params(task, value)
        except BadRequest as exc:
            name = info.data.get("name", "?")
            raise ValueError(f"stream {name!r} ({task}): {exc}") from None
        return value


class ServiceSettings(StrictModel):
    """How `edged run` schedules jobs, reconnects sources and shuts down (`[service]`)."""

    workers: int = Field(default=2, ge=1, le=64, description="Worker threads running jobs.")
    requests_first: bool = Field(
        default=True, description="Serve queued requests before background stream frames."
    )
    stream_queue: int = Field(
        default=2, ge=1, le=1000, description="Frames a live stream may queue (oldest dropped)."
    )
    drain_timeout_s: float = Field(
        default=10.0, ge=0, description="SIGTERM: how long in-flight jobs may finish."
    )
    reconnect_initial_s: float = Field(
        default=0.5, gt=0, description="First delay before reopening a dead camera or stream."
    )
    reconnect_max_s: float = Field(
        default=5.0, gt=0, description="Cap of the exponential reconnect backoff."
    )
    open_timeout_s: float = Field(
        default=5.0, gt=0, description="RTSP/HTTP open timeout (OpenCV FFmpeg backend)."
    )
    read_timeout_s: float = Field(
        default=5.0, gt=0, description="RTSP/HTTP read timeout; a silent stream counts as down."
    )
    inbox_poll_s: float = Field(default=0.5, gt=0, description="How often inboxes are scanned.")


class GenerationSettings(StrictModel):
    """Text-to-image options."""

    text_encoder: str | None = Field(
        default=None,
        description='"zmq://host:port" asks another edged for embeddings instead of running CLIP here.',
    )
    residency: Literal["auto", "resident", "staged"] = Field(
        default="auto", description="Keep components together or load them one at a time."
    )
    lora_max_bytes: ByteSize = Field(
        default=512_000_000, gt=0, description="Largest LoRA file read (bigger: too_large)."
    )
    lora_cache_entries: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Merged LoRA UNets kept under {cache_dir}/lora (least recently used go).",
    )


class QuantizationSettings(StrictModel):
    """Accuracy-gate limits a quantized variant must meet (`[quantization]`, docs/quantization.md).

    Finite numbers only: the limit used is stored with each gate result in the catalogue
    (TOML) and ``quantization.json``, where ``inf`` is not portable JSON.
    """

    max_psnr_drop_db: float = Field(
        default=0.3,
        ge=0,
        allow_inf_nan=False,
        description="Super-resolution: most Y-PSNR (dB) a variant may lose against fp32.",
    )
    min_iou: float = Field(
        default=0.97,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Segmentation: least IoU of the variant's person mask with fp32's.",
    )
    max_hole_drop_db: float = Field(
        default=0.5,
        ge=0,
        allow_inf_nan=False,
        description="Inpainting: most in-hole PSNR (dB) a variant may lose against fp32.",
    )
