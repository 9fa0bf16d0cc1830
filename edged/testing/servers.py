"""Test helpers: servers: local HTTP file server, wheels, npm tarballs (the fake Hugging Face
Hub is ``edged.testing.hub``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class Route:
    """What the local server answers for one path.

    ``cut_after`` bytes of the body are sent and then the connection is dropped (with the
    full Content-Length promised), for the first ``cuts`` requests of the path; later
    requests are served whole. ``ranges=False`` makes the route ignore Range headers, like
    a server that cannot seek.
    """

    def __init__(
        self,
        body: bytes,
        content_type: str = "application/octet-stream",
        *,
        cut_after: int | None = None,
        cuts: int = 1,
        ranges: bool = True,
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.cut_after = cut_after
        self.cuts = cuts
        self.ranges = ranges


class RequestRecord:
    """One request the server saw: path, Range header, status and body bytes sent."""

    def __init__(self, path: str, range_header: str | None, status: int, sent: int) -> None:
        self.path = path
        self.range = range_header
        self.status = status
        self.sent = sent

    def __repr__(self) -> str:
        return (
            f"RequestRecord({self.path!r}, range={self.range!r}, {self.status}, sent={self.sent})"
        )


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None if unsatisfiable."""
    spec = header.removeprefix("bytes=").split(",")[0].strip()
    first, _, last = spec.partition("-")
    if not first:
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    return (start, end) if start < size and start <= end else None


class FileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 serving in-memory routes (use as a context manager).

    It honours Range requests, can cut a connection mid-body, and records every request, so
    fetch tests assert on what went over the wire (resumed from where, how many bytes).
    """

    def __init__(self) -> None:
        import threading

        self.routes: dict[str, Route] = {}
        self.log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Any = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes, **options: Any) -> str:
        """Serve ``body`` at ``path``; returns its URL. Options as ``Route``."""
        self.routes[path] = Route(body, **options)
        return self.url(path)

    def add_json(self, path: str, obj: object) -> str:
        import json

        return self.add(path, json.dumps(obj).encode(), content_type="application/json")

    def requests(self, path: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.log if r.path == path]

    def bytes_sent(self, path: str) -> int:
        return sum(r.sent for r in self.requests(path))

    def _answer(self, handler: Any) -> None:
        path = handler.path.split("?")[0]
        route = self.routes.get(path)
        header = handler.headers.get("Range")
        if route is None:
            self._record(path, header, 404, 0)
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body, status, extra = route.body, 200, {}
        if header and route.ranges:
            span = _parse_range(header, len(route.body))
            if span is None:
                self._record(path, header, 416, 0)
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(route.body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            body, status = route.body[span[0] : span[1] + 1], 206
            extra["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(route.body)}"
        self._send(handler, route, body, status, extra, path=path, header=header)

    def _send(
        self,
        handler: Any,
        route: Route,
        body: bytes,
        status: int,
        extra: dict[str, str],
        *,
        path: str,
        header: str | None,
    ) -> None:
        import socket

        handler.send_response(status)
        handler.send_header("Content-Type", route.content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.end_headers()
        cut = route.cut_after is not None and route.cuts > 0 and len(body) > route.cut_after
        if cut:
            route.cuts -= 1
            body = body[: route.cut_after]
        # Recorded before the body goes out: the client may finish (and the test look at
        # the log) before this thread runs again.
        self._record(path, header, status, len(body))
        handler.wfile.write(body)
        handler.wfile.flush()
        if cut:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)

    def _answer_head(self, handler: Any) -> None:
        """A plain file server has no metadata to give (the Hub server does)."""
        self._record(handler.path, None, 405, 0)
        handler.send_response(405)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _record(self, path: str, header: str | None, status: int, sent: int) -> None:
        with self._lock:
            self.log.append(RequestRecord(path, header, status, sent))

    def __enter__(self) -> FileServer:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._answer(self)

            def do_HEAD(self) -> None:
                owner._answer_head(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request log is self.log; stderr noise would hide test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def build_wheel(
    dest_dir: Path, name: str, version: str, members: dict[str, bytes], *, padding: int = 0
) -> Path:
    """A real (minimal) ``py3-none-any`` wheel holding ``members``.

    ``padding`` bytes of incompressible data are stored before the members, so a test can
    tell a ranged read (central directory + one member) from a whole-file download.
    """
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    path = dest_dir / f"{dist}-py3-none-any.whl"
    dest_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as whl:
        if padding:
            noise = np.random.default_rng(0).bytes(padding)
            whl.writestr(f"{name}/padding.bin", noise, compress_type=zipfile.ZIP_STORED)
        for member, data in members.items():
            whl.writestr(member, data)
        whl.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        whl.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def build_npm_tarball(dest_dir: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A real npm package tarball (``package/...`` inside a .tgz) holding ``members``."""
    import io
    import json
    import tarfile

    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    files = {"package.json": json.dumps({"name": name, "version": version}).encode(), **members}
    with tarfile.open(path, "w:gz") as tgz:
        for member, data in files.items():
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(data)
            tgz.addfile(info, io.BytesIO(data))
    return path


def serve_pypi(server: FileServer, wheel: Path, name: str, version: str) -> str:
    """Publish ``wheel`` with a PyPI JSON API on ``server``; returns the index base URL.

    The file URL is relative, as some PyPI mirrors give it.
    """
    import hashlib

    data = wheel.read_bytes()
    server.add(f"/packages/{wheel.name}", data)
    entry = {
        "filename": wheel.name,
        "packagetype": "bdist_wheel",
        "size": len(data),
        "digests": {"sha256": hashlib.sha256(data).hexdigest()},
        "url": f"../../../packages/{wheel.name}",
    }
    server.add_json(f"/pypi/{name}/{version}/json", {"info": {"name": name}, "urls": [entry]})
    return server.base_url


def serve_npm(server: FileServer, tarball: Path, name: str, version: str) -> str:
    """Publish ``tarball`` with an npm registry document on ``server``; returns the registry URL."""
    import base64
    import hashlib

    data = tarball.read_bytes()
    url = server.add(f"/tarballs/{tarball.name}", data)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    meta = {"name": name, "version": version, "dist": {"tarball": url, "integrity": integrity}}
    server.add_json(f"/{name}/{version}", meta)
    return server.base_url
