"""Where a conversion reads from: a local diffusers dir, or a Hub repo id fetched with
``huggingface_hub.snapshot_download`` (its cache, resume, ``HF_TOKEN``, ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` apply as for any Hub download).

Only what an export reads is downloaded: the configs, tokenizers, the scheduler and each
component's fp32 weights (``.safetensors``; ``.bin`` only for a component without them), not
the fp16 variants, single-file checkpoints or ONNX copies many repos also carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edged.errors import BadRequest, FetchError, ModelNotFound

__all__ = ["Source", "resolve_source"]

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_CONFIGS = ["model_index.json", "scheduler/*.json", "tokenizer*/*", "*/config.json"]
_WEIGHTS = ["*/model.safetensors", "*/diffusion_pytorch_model.safetensors"]
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")


@dataclass(frozen=True)
class Source:
    """A diffusers dir on disk and what it came from (for the manifest)."""

    path: Path
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None

    def describe(self) -> dict[str, str | None]:
        if self.repo is None:
            return {"local": str(self.path)}
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit}


def resolve_source(text: str) -> Source:
    """A local diffusers dir (has model_index.json), else OWNER/REPO[@REVISION] on the Hub."""
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelNotFound(
                f"{path}: not a diffusers pipeline dir (no model_index.json); give a dir saved "
                "with save_pretrained or a Hub repo id OWNER/REPO[@REVISION]"
            )
        return Source(path.resolve())
    match = REPO_ID.match(text)
    if match is None:
        raise BadRequest(
            f"{text!r}: neither an existing directory nor a Hub repo id OWNER/REPO[@REVISION]"
        )
    return _download(match.group("repo"), match.group("revision"))


def _download(repo: str, revision: str | None) -> Source:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # a dependency of edged; only a broken install lacks it
        raise FetchError(f"huggingface_hub is not importable: pip install edged ({exc})") from exc
    where = f"{repo}@{revision or 'main'}"
    try:
        local = Path(snapshot_download(repo, revision=revision, allow_patterns=_CONFIGS + _WEIGHTS))
        missing = [
            c
            for c in COMPONENTS
            if (local / c).is_dir() and not list((local / c).glob("*.safetensors"))
        ]
        if missing:  # older repos: PyTorch pickles only
            patterns = [f"{c}/*.bin" for c in missing]
            local = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except GatedRepoError as exc:
        raise FetchError(
            f"{where} is gated: accept its licence on the Hub, then set HF_TOKEN to a token "
            "of that account"
        ) from exc
    except RevisionNotFoundError as exc:
        raise FetchError(f"{where}: no such revision on the Hub") from exc
    except RepositoryNotFoundError as exc:
        raise FetchError(
            f"{repo}: no such repo on the Hub (or it is private: set HF_TOKEN)"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise FetchError(
            f"{where}: not in the Hugging Face cache and the Hub cannot be reached (offline: "
            "HF_HUB_OFFLINE is set or no network); run once with network access"
        ) from exc
    except OSError as exc:
        raise FetchError(f"{where}: download failed: {exc}") from exc
    return Source(local, repo, revision, local.name)
