"""A fake Hugging Face Hub on loopback (``HubServer``): the resolve, model-info and tree
endpoints huggingface_hub's ``hf_hub_download`` and ``snapshot_download`` use, served from
memory by the local test file server (``edged.testing.servers``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edged.testing.servers import FileServer, Route

__all__ = ["HubServer"]


class HubServer(FileServer):
    """A fake Hugging Face Hub on loopback, for what ``hf_hub_download`` and
    ``snapshot_download`` read. Point huggingface_hub at it with ``HF_ENDPOINT``.

    - ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: an LFS file as the Hub answers it
      (``X-Repo-Commit``, ``X-Linked-Etag`` = sha256, ``X-Linked-Size``, ``ETag``), a git file
      (``lfs=False``) with its git blob sha1 as ``ETag`` only; Range requests; a cut
      connection mid-body (``cut_after``).
    - ``GET /api/models/{repo}/revision/{revision}``: model info (``sha``, ``siblings``).
    - ``GET /api/models/{repo}/tree/{revision}[/{path}]?recursive=``: the tree listing
      (``type``, ``path``, ``size``, ``oid``, ``lfs``).

    A revision is a commit or a ref (``add_ref``, ``main`` by ``add_repo``). Errors as
    ``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, and for a
    gated repo's files ``GatedRepo`` with 401 without a token, 403 with a wrong one (its
    info and tree stay public, as on the Hub).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lfs: dict[str, tuple[str, str]] = {}
        """resolve path -> (commit, the sha256 announced in X-Linked-Etag)."""
        self.git_files: set[str] = set()
        """resolve paths of files kept in git (not LFS)."""
        self.refs: dict[tuple[str, str], str] = {}
        """(repo, branch or tag) -> commit."""
        self.gated: dict[str, str] = {}
        """repo id -> the token that opens it."""

    def add_file(
        self,
        repo: str,
        commit: str,
        path: str,
        body: bytes,
        *,
        announced_sha256: str | None = None,
        lfs: bool = True,
        **options: Any,
    ) -> str:
        """Serve ``body`` as ``path`` of ``repo`` at ``commit``; returns the ``hf://`` source.

        ``announced_sha256`` makes the Hub's metadata differ from the bytes (a lying mirror).
        """
        import hashlib

        resolve = f"/{repo}/resolve/{commit}/{path}"
        self.routes[resolve] = Route(body, **options)
        self.lfs[resolve] = (commit, announced_sha256 or hashlib.sha256(body).hexdigest())
        if not lfs:
            self.git_files.add(resolve)
        return f"hf://{repo}@{commit}/{path}"

    def add_ref(self, repo: str, name: str, commit: str) -> None:
        """Make the branch or tag ``name`` of ``repo`` point at ``commit``."""
        self.refs[(repo, name)] = commit

    def add_repo(self, repo: str, commit: str, root: Path, *, ref: str = "main") -> list[str]:
        """Serve every file under ``root`` (e.g. a ``save_pretrained`` dir) at ``commit``,
        weights (``.safetensors``, ``.bin``, ``.onnx``) as LFS files, the rest in git; ``ref``
        points at ``commit``. Returns the repo paths."""
        paths = []
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = file.relative_to(root).as_posix()
            lfs = file.suffix in (".safetensors", ".bin", ".onnx", ".pt")
            self.add_file(repo, commit, rel, file.read_bytes(), lfs=lfs)
            paths.append(rel)
        self.add_ref(repo, ref, commit)
        return paths

    def gate(self, repo: str, token: str) -> None:
        """Make ``repo``'s files answer only requests with ``Authorization: Bearer <token>``."""
        self.gated[repo] = token

    def _commit(self, repo: str, revision: str) -> str:
        return self.refs.get((repo, revision), revision)

    def _files(self, repo: str, commit: str) -> dict[str, str]:
        """repo path -> resolve path, of ``repo`` at ``commit``."""
        prefix = f"/{repo}/resolve/{commit}/"
        return {key[len(prefix) :]: key for key in self.lfs if key.startswith(prefix)}

    def _error(self, handler: Any, status: int, code: str, commit: str | None = None) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", f"fake hub: {code}")
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _repo_refusal(self, repo: str, revision: str) -> tuple[int, str] | None:
        if not any(key.startswith(f"/{repo}/resolve/") for key in self.lfs):
            return 404, "RepoNotFound"
        if not self._files(repo, self._commit(repo, revision)):
            return 404, "RevisionNotFound"
        return None

    def _refusal(self, handler: Any, path: str) -> tuple[int, str] | None:
        repo, _, rest = path.lstrip("/").partition("/resolve/")
        revision = rest.partition("/")[0]
        if repo in self.gated:
            auth = handler.headers.get("Authorization")
            if auth != f"Bearer {self.gated[repo]}":
                return (401 if auth is None else 403), "GatedRepo"
        refusal = self._repo_refusal(repo, revision)
        if refusal is None and self._resolved(path) not in self.lfs:
            return 404, "EntryNotFound"
        return refusal

    def _resolved(self, path: str) -> str:
        """A resolve path with its revision (a ref or a commit) as the commit."""
        repo, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, file = rest.partition("/")
        return f"/{repo}/resolve/{self._commit(repo, revision)}/{file}"

    def _refused(self, handler: Any, path: str) -> bool:
        refusal = self._refusal(handler, path)
        if refusal is None:
            return False
        self._record(path, handler.headers.get("Range"), refusal[0], 0)
        revision = path.partition("/resolve/")[2].partition("/")[0]
        self._error(handler, *refusal, commit=revision if refusal[1] == "EntryNotFound" else None)
        return True

    def _answer(self, handler: Any) -> None:
        path = handler.path.split("?")[0]
        if path.startswith("/api/models/"):
            self._answer_api(handler, path)
        elif not self._refused(handler, path):
            handler.path = self._resolved(path)
            super()._answer(handler)

    def _answer_head(self, handler: Any) -> None:
        path = handler.path.split("?")[0]
        if self._refused(handler, path):
            return
        resolved = self._resolved(path)
        commit, sha = self.lfs[resolved]
        body = self.routes[resolved].body
        self._record(path, None, 200, 0)
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", commit)
        if resolved in self.git_files:
            handler.send_header("ETag", f'"{_git_blob_sha1(body)}"')
        else:
            handler.send_header("X-Linked-Etag", f'"{sha}"')
            handler.send_header("X-Linked-Size", str(len(body)))
            handler.send_header("ETag", f'"{sha}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()

    def _answer_api(self, handler: Any, path: str) -> None:
        from urllib.parse import parse_qs, unquote, urlsplit

        rest = path.removeprefix("/api/models/")
        kind = "/revision/" if "/revision/" in rest else "/tree/"
        repo, _, tail = rest.partition(kind)
        revision, _, sub = tail.partition("/")
        revision, sub = unquote(revision), unquote(sub)
        refusal = self._repo_refusal(repo, revision) if tail else (404, "RepoNotFound")
        if refusal is not None:
            self._record(path, None, refusal[0], 0)
            self._error(handler, *refusal)
            return
        commit = self._commit(repo, revision)
        if kind == "/revision/":
            doc: Any = self._model_info(repo, commit)
        else:
            query = parse_qs(urlsplit(handler.path).query)
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            doc = self._tree(repo, commit, sub, recursive=recursive)
        body = json.dumps(doc).encode()
        self._send(handler, Route(body, "application/json"), body, 200, {}, path=path, header=None)

    def _model_info(self, repo: str, commit: str) -> dict[str, Any]:
        siblings = [{"rfilename": name} for name in sorted(self._files(repo, commit))]
        gated = "manual" if repo in self.gated else False
        return {"id": repo, "sha": commit, "siblings": siblings, "private": False, "gated": gated}

    def _tree(self, repo: str, commit: str, sub: str, *, recursive: bool) -> list[dict[str, Any]]:
        """Files (and folders) under ``sub``: the direct children, or all with ``recursive``."""
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for name, resolved in sorted(self._files(repo, commit).items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if recursive or depth == 1:
                    folder = prefix + "/".join(parts[:depth])
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": ""})
            if recursive or len(parts) == 1:
                entries[name] = self._tree_file(name, resolved)
        return list(entries.values())

    def _tree_file(self, name: str, resolved: str) -> dict[str, Any]:
        body = self.routes[resolved].body
        if resolved in self.git_files:
            return {"type": "file", "path": name, "size": len(body), "oid": _git_blob_sha1(body)}
        sha = self.lfs[resolved][1]
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(body)}\n"
        )
        return {
            "type": "file",
            "path": name,
            "size": len(body),
            "oid": _git_blob_sha1(pointer.encode()),
            "lfs": {"oid": sha, "size": len(body), "pointerSize": len(pointer)},
        }


def _git_blob_sha1(body: bytes) -> str:
    """The git object id of a blob (what the Hub gives as a git file's ETag and oid)."""
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(body) + body, usedforsecurity=False).hexdigest()
