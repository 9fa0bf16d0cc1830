"""The model loader: catalogue entry + backend chain -> a warmed-up session.

For each backend of the chain, in order: pick the installed files whose format that runtime
reads (``FORMAT_OF_RUNTIME``), the requested precision first and fp32 next; verify the
file's sha256 (once per unchanged file); open and warm up the session. The first success
wins; every earlier failure is kept as a one-line reason on ``LoadedModel.reasons`` and in
the log, so "why is this model on the CPU?" has an answer.

Errors: ``LicenceNotAllowed`` before anything is read; ``ModelNotFound`` when no file of
the entry exists in any model dir; ``ModelVerificationError`` when the only loadable files
fail their checksum; otherwise ``ModelLoadError`` listing every backend's reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edged.config import Settings
from edged.errors import BackendUnavailable, ModelLoadError, ModelNotFound, ModelVerificationError
from edged.log import get_logger
from edged.models.catalog import Catalog, check_licence, verify_file
from edged.models.schema import ModelEntry, ModelFile
from edged.quantization.speed_gate import precision_allowed
from edged.runtime import FORMAT_OF_RUNTIME, config_for, open_session, split_backend
from edged.runtime.base import Session

log = get_logger("loader")


@dataclass
class LoadedModel:
    """A session plus what it is and why this backend was chosen."""

    entry: ModelEntry
    session: Session
    backend: str
    path: Path
    reasons: list[str] = field(default_factory=list)
    file: ModelFile | None = None
    load_seconds: float = 0.0


def candidate_files(entry: ModelEntry, runtime: str, precision: str | None) -> list[ModelFile]:
    """Files of ``entry`` the runtime reads: requested precision, then fp32, then the rest;
    within a precision, the runtime's preferred format first."""
    formats = FORMAT_OF_RUNTIME.get(runtime, ())
    files = [f for f in entry.files if f.format in formats]

    def rank(f: ModelFile) -> tuple[int, int]:
        wanted = 0 if f.precision == precision else 1 if f.precision == "fp32" else 2
        return (wanted, formats.index(f.format))

    return sorted(files, key=rank)


def _runtime_precision(requested: str | None, file: ModelFile) -> str:
    """What the runtime is told to compute in: fp16 when the profile asks for it (GPUs, NPUs),
    else the file's own precision, so an fp32 file is never silently run in bf16."""
    return "fp16" if requested == "fp16" else file.precision


@dataclass
class _Attempt:
    """State shared by the attempts of one load_model call."""

    entry: ModelEntry
    installed: dict[str, Path]
    threads: int | None
    precision: str | None
    cache_dir: Path
    settings: Settings
    warmup: bool
    runtime_options: Mapping[str, Mapping[str, str]]
    reasons: list[str] = field(default_factory=list)
    bad_files: set[str] = field(default_factory=set)
    verification_failed: bool = False

    def try_backend(self, backend: str) -> LoadedModel | None:
        try:
            config_for(backend)  # an unknown name is reported as such, not as "no file"
        except BackendUnavailable as exc:
            self.skip(backend, str(exc))
            return None
        runtime, _ = split_backend(backend)
        # A quantized variant only where its accuracy and speed gates passed on this board.
        decision = precision_allowed(self.entry, backend, self.precision, settings=self.settings)
        if decision.reason:
            self.reasons.append(f"{backend}: {decision.reason}")
            log.info(
                "precision_fallback", model=self.entry.name, backend=backend, reason=decision.reason
            )
        files = [
            f
            for f in candidate_files(self.entry, runtime, decision.precision)
            if f.path in self.installed and f.path not in decision.blocked
        ]
        if not files:
            formats = "/".join(FORMAT_OF_RUNTIME.get(runtime, ())) or "readable"
            have = ", ".join(
                sorted({f.format for f in self.entry.files if f.path in self.installed})
            )
            self.skip(backend, f"no {formats} file installed (have {have})")
            return None
        for file in files:
            try:
                loaded = self.try_file(backend, file)
            except BackendUnavailable as exc:  # the runtime/provider/device: no other file helps
                text = str(exc)
                self.skip(backend, text if file.path in text else f"{file.path}: {text}")
                return None
            if loaded is not None:
                return loaded
        return None

    def try_file(self, backend: str, file: ModelFile) -> LoadedModel | None:
        path = self.installed[file.path]
        if file.path in self.bad_files:
            return None
        start = time.perf_counter()
        try:
            if self.settings.verify_models:
                verify_file(file, path, model=self.entry.name)
            config = config_for(
                backend,
                threads=self.threads,
                precision=_runtime_precision(self.precision, file),
                options=self.runtime_options.get(backend),
            )
            session = open_session(
                config,
                path,
                cache_dir=self.cache_dir,
                sha256=file.sha256,
                warmup=self.warmup,
                warmup_size=self.entry.input.size
                if isinstance(self.entry.input.size, tuple)
                else None,
            )
        except ModelVerificationError as exc:
            self.bad_files.add(file.path)
            self.verification_failed = True
            self.skip(backend, str(exc))
            return None
        except ModelLoadError as exc:
            text = str(exc)  # runtime errors name the file already; provider errors do not
            self.skip(backend, text if file.path in text else f"{file.path}: {text}")
            return None
        return LoadedModel(
            self.entry,
            session,
            backend,
            path,
            list(self.reasons),
            file,
            time.perf_counter() - start,
        )

    def skip(self, backend: str, reason: str) -> None:
        self.reasons.append(f"{backend}: {reason}")
        log.info("backend_skipped", model=self.entry.name, backend=backend, reason=reason)


def _installed(entry: ModelEntry, catalog: Catalog) -> dict[str, Path]:
    found = {f.path: p for f in entry.files if (p := catalog.locate(f)) is not None}
    if found:
        return found
    if not entry.files:
        raise ModelNotFound(f"{entry.name} has no model files to load (family {entry.family})")
    dirs = ", ".join(str(d) for d in catalog.search_path) or "(no model_dirs configured)"
    raise ModelNotFound(
        f"{entry.name}: none of its files ({', '.join(f.path for f in entry.files)}) is in "
        f"the model dirs {dirs}; {entry.obtain_hint()}, or add a dir to model_dirs"
    )


def load_model(
    entry: ModelEntry,
    catalog: Catalog,
    chain: list[str],
    *,
    threads: int | None,
    precision: str | None,
    cache_dir: Path,
    settings: Settings,
    warmup: bool = True,
    runtime_options: Mapping[str, Mapping[str, str]] | None = None,
) -> LoadedModel:
    """Load ``entry`` with the first backend of ``chain`` that can; see the module doc.

    ``runtime_options`` (the profile's, backend -> options) go into that backend's config.
    """
    check_licence(entry, settings.allowed_licences)
    attempt = _Attempt(
        entry,
        _installed(entry, catalog),
        threads,
        precision,
        cache_dir,
        settings,
        warmup,
        runtime_options or {},
    )
    for backend in chain:
        loaded = attempt.try_backend(backend)
        if loaded is not None:
            log.info(
                "model_loaded",
                model=entry.name,
                backend=backend,
                path=str(loaded.path),
                format=loaded.file.format if loaded.file else None,
                precision=loaded.file.precision if loaded.file else None,
                cache=getattr(loaded.session, "cache", None),
                load_s=round(loaded.load_seconds, 3),
                skipped=loaded.reasons,
            )
            return loaded
    detail = "; ".join(attempt.reasons) or "the backend chain is empty"
    error = ModelVerificationError if attempt.verification_failed else ModelLoadError
    raise error(f"{entry.name}: no backend of [{', '.join(chain)}] could load it: {detail}")
