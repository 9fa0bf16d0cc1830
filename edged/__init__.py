"""edged: an edge-AI daemon for embedded Linux boards.

Importing the package has no side effects: hardware is probed by ``edged.hardware.probe()``,
settings are built by ``edged.config.load_settings()`` and runtimes are imported lazily.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edged")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
