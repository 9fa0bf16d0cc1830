"""Settings: CLI flags > ``EDGED_*`` environment > TOML file > defaults.

Validated once here, at the boundary; the rest of edged receives a frozen ``Settings``.
Directory defaults follow systemd (``StateDirectory=`` etc. export ``STATE_DIRECTORY``),
then FHS paths when running as root, then XDG directories for a normal user.
"""

from edged.config.dirs import default_cache_dir, default_runtime_dir, default_state_dir
from edged.config.sections import (
    GenerationSettings,
    QuantizationSettings,
    ServiceSettings,
    StreamSettings,
    ZmqSettings,
)
from edged.config.settings import (
    DEFAULT_ALLOWED_LICENCES,
    DEFAULT_CONFIG_FILE,
    Settings,
    load_settings,
)

__all__ = [
    "DEFAULT_ALLOWED_LICENCES",
    "DEFAULT_CONFIG_FILE",
    "GenerationSettings",
    "QuantizationSettings",
    "ServiceSettings",
    "Settings",
    "StreamSettings",
    "ZmqSettings",
    "default_cache_dir",
    "default_runtime_dir",
    "default_state_dir",
    "load_settings",
]
