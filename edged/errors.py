"""The one error hierarchy of edged.

Every error a user can cause or fix is an ``EdgedError``. Each class carries
``exit_code`` (what the CLI exits with) and ``wire_code`` (the ``error.code`` of a ZeroMQ
reply, see docs/protocol.md), so the CLI and the request server never guess.
Messages are one line and name the fix where there is one.
"""

from __future__ import annotations


class EdgedError(Exception):
    """Root of every error edged raises on purpose."""

    exit_code: int = 1
    wire_code: str = "internal"


class ConfigError(EdgedError):
    """Settings, a profile or a catalogue entry are invalid."""

    exit_code = 2
    wire_code = "bad_request"


class BackendUnavailable(EdgedError):
    """A runtime or execution provider is not installed or cannot run here."""

    exit_code = 3
    wire_code = "internal"


class ModelNotFound(EdgedError):
    """No catalogue entry, or no file for it in any model directory."""

    exit_code = 4
    wire_code = "unknown_model"


class ModelLoadError(EdgedError):
    """Every backend in the chain failed to load a model."""

    exit_code = 5
    wire_code = "internal"


class ModelVerificationError(ModelLoadError):
    """A model file's sha256 or size does not match its catalogue entry."""

    exit_code = 6


class LicenceNotAllowed(EdgedError):
    """The model's licence is not in ``allowed_licences``."""

    exit_code = 7
    wire_code = "licence"


class MemoryBudgetExceeded(EdgedError):
    """A model cannot fit in the memory budget even when loaded alone."""

    exit_code = 8
    wire_code = "too_large"


class Busy(EdgedError):
    """Admission control refused a job: a queue is full or every model is pinned."""

    exit_code = 9
    wire_code = "busy"


class BadRequest(EdgedError):
    """A request or input is malformed: bad image, wrong mask size, unknown parameter."""

    exit_code = 10
    wire_code = "bad_request"


class TooLarge(BadRequest):
    """A request exceeds a configured limit (frame bytes, pixels, prompt length)."""

    wire_code = "too_large"


class SourceError(EdgedError):
    """A camera, stream, file or inbox source failed."""

    exit_code = 11
    wire_code = "internal"


class FetchError(EdgedError):
    """A model download failed or produced the wrong bytes."""

    exit_code = 12
    wire_code = "internal"


class Cancelled(EdgedError):
    """A job was cancelled (shutdown or an explicit cancel)."""

    exit_code = 13
    wire_code = "internal"


class ServerUnavailable(EdgedError):
    """A client got no reply in time: the daemon is down, overloaded, or refused our key."""

    exit_code = 14
    wire_code = "internal"
