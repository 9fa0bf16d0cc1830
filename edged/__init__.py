"""edged: an edge-AI daemon for embedded Linux boards.

The public API, for programs that embed edged or talk to its daemon::

    from edged import Engine, TaskRequest, load_settings
    engine = Engine(load_settings())
    result = engine.run(TaskRequest(task="segmentation", image=rgb))

    from edged import Client
    with Client("ipc:///run/edged/requests.sock") as client:
        reply = client.request("segmentation", image=rgb)

Every name in ``__all__`` is imported on first use (module ``__getattr__``), so ``import
edged`` has no side effects and imports no runtime, OpenCV or ZeroMQ: hardware is probed by
``edged.hardware.probe()``, settings are built by ``load_settings()`` and runtimes are
imported when a model is loaded. Errors all derive from ``EdgedError`` and carry
``exit_code`` and ``wire_code``.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edged.config import Settings, load_settings
    from edged.engine import Engine
    from edged.errors import (
        BackendUnavailable,
        BadRequest,
        Busy,
        Cancelled,
        ConfigError,
        EdgedError,
        FetchError,
        LicenceNotAllowed,
        MemoryBudgetExceeded,
        ModelLoadError,
        ModelNotFound,
        ModelVerificationError,
        ServerUnavailable,
        SourceError,
        TooLarge,
    )
    from edged.tasks.base import TaskRequest, TaskResult
    from edged.wire.client import Client, Subscriber

try:
    __version__ = version("edged")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_ERRORS = (
    "EdgedError",
    "ConfigError",
    "BackendUnavailable",
    "ModelNotFound",
    "ModelLoadError",
    "ModelVerificationError",
    "LicenceNotAllowed",
    "MemoryBudgetExceeded",
    "Busy",
    "BadRequest",
    "TooLarge",
    "SourceError",
    "FetchError",
    "Cancelled",
    "ServerUnavailable",
)
_HOME: dict[str, str] = {
    "Engine": "edged.engine",
    "TaskRequest": "edged.tasks.base",
    "TaskResult": "edged.tasks.base",
    "Client": "edged.wire.client",
    "Subscriber": "edged.wire.client",
    "Settings": "edged.config",
    "load_settings": "edged.config",
    **dict.fromkeys(_ERRORS, "edged.errors"),
}
"""Public name -> the module that defines it."""

__all__ = [
    "BackendUnavailable",
    "BadRequest",
    "Busy",
    "Cancelled",
    "Client",
    "ConfigError",
    "EdgedError",
    "Engine",
    "FetchError",
    "LicenceNotAllowed",
    "MemoryBudgetExceeded",
    "ModelLoadError",
    "ModelNotFound",
    "ModelVerificationError",
    "ServerUnavailable",
    "Settings",
    "SourceError",
    "Subscriber",
    "TaskRequest",
    "TaskResult",
    "TooLarge",
    "__version__",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'edged' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
