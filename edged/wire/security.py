"""Endpoint security: ipc socket files, CURVE keys and the ZAP allow-list.

Policy (docs/protocol.md, "Security"):

- ``ipc://`` endpoints (the default) live in the runtime dir, created 0750, and the socket
  file is chmod 0660 right after bind: access is the file system's job (owner + group).
- ``tcp://`` endpoints require CURVE: the server secret key from
  ``zmq.curve_secret_key_file`` (a path, or ``credential:NAME`` for a systemd credential in
  ``$CREDENTIALS_DIRECTORY``) and the allowed client public keys from
  ``zmq.curve_allowed_clients_dir``, checked by one ZAP handler per process. Without keys a
  tcp endpoint is refused unless ``zmq.allow_insecure_tcp = true``.
- Rejected clients are logged (``event=zap_denied``) with their public key.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edged.config import ZmqSettings
from edged.errors import ConfigError
from edged.log import get_logger

log = get_logger("zmq.security")

ZAP_DOMAIN = "edged"
IPC_FILE_MODE = 0o660
RUNTIME_DIR_MODE = 0o750
CREDENTIAL_PREFIX = "credential:"
# sockaddr_un.sun_path is 108 bytes including the NUL on Linux.
MAX_IPC_PATH_BYTES = 107


def ipc_path(endpoint: str) -> Path | None:
    """``ipc:///run/edged/requests.sock`` -> that path; None for other transports."""
    if endpoint.startswith("ipc://"):
        return Path(endpoint.removeprefix("ipc://"))
    return None


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def check_endpoint(endpoint: str, settings: ZmqSettings) -> None:
    """Refuse endpoints the policy does not allow, before any socket exists."""
    if ipc_path(endpoint) is not None or endpoint.startswith("inproc://"):
        return
    if not is_tcp(endpoint):
        raise ConfigError(f"zmq endpoint {endpoint!r}: use ipc://PATH or tcp://HOST:PORT")
    if settings.curve_secret_key_file is None and not settings.allow_insecure_tcp:
        raise ConfigError(
            f"zmq endpoint {endpoint!r} is tcp without CURVE: set zmq.curve_secret_key_file "
            "and zmq.curve_allowed_clients_dir (see `edged client keygen`), or "
            "zmq.allow_insecure_tcp = true on a trusted network"
        )
    if settings.curve_secret_key_file is not None and settings.curve_allowed_clients_dir is None:
        raise ConfigError(
            "zmq.curve_secret_key_file is set but zmq.curve_allowed_clients_dir is not: "
            "put the allowed client public keys (*.key) in a directory and set it"
        )


# ---------------------------------------------------------------- ipc socket files


def prepare_ipc(path: Path) -> None:
    """Create the runtime dir (0750) and clear a stale socket; refuse a live one."""
    if len(os.fsencode(path)) > MAX_IPC_PATH_BYTES:
        raise ConfigError(
            f"ipc path {path} is longer than {MAX_IPC_PATH_BYTES} bytes: use a shorter runtime_dir"
        )
    parent = path.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        os.chmod(parent, RUNTIME_DIR_MODE)  # mkdir's mode is filtered by the umask
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ConfigError(f"{path} exists and is not a socket: remove it or change runtime_dir")
    if _socket_is_live(path):
        raise ConfigError(f"another process is listening on {path}: is edged already running?")
    path.unlink()


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ConfigError(f"cannot check socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    return True


def finish_ipc(path: Path) -> None:
    """0660 after bind: group members may connect, others may not.

    The window between bind and chmod is covered by the 0750 runtime dir.
    """
    os.chmod(path, IPC_FILE_MODE)


# ---------------------------------------------------------------- CURVE + ZAP


class _AllowedKeys:
    """ZAP credentials provider: the *.key files of a directory, re-read when it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: frozenset[bytes] = frozenset()

    def _reload(self) -> frozenset[bytes]:
        try:
            st = self.directory.stat()
        except OSError:
            return frozenset()
        stamp = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if stamp != self._stamp:
                certs: dict[bytes, bool] = zmq.auth.load_certificates(os.fspath(self.directory))
                self._keys = frozenset(certs)
                self._stamp = stamp
            return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self._reload()
        if not allowed:
            log.warning(
                "zap_denied",
                client_key=key.decode("ascii", "replace"),
                domain=domain,
                allowed_dir=str(self.directory),
            )
        return allowed


@dataclass
class _AuthState:
    authenticator: ThreadAuthenticator
    directory: Path
    users: int


_auth_lock = threading.Lock()
_auth: dict[int, _AuthState] = {}


def _acquire_authenticator(context: zmq.Context[Any], directory: Path) -> None:
    """One ZAP handler per context, shared by the server and the publisher."""
    if not directory.is_dir():
        raise ConfigError(f"zmq.curve_allowed_clients_dir {directory} is not a directory")
    with _auth_lock:
        state = _auth.get(id(context))
        if state is not None:
            if state.directory != directory:
                raise ConfigError(
                    "every CURVE socket of a process must use one allowed-clients dir"
                )
            state.users += 1
            return
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve_callback(
            domain=ZAP_DOMAIN, credentials_provider=_AllowedKeys(directory)
        )
        _auth[id(context)] = _AuthState(auth, directory, 1)


def _release_authenticator(context: zmq.Context[Any]) -> None:
    with _auth_lock:
        state = _auth.get(id(context))
        if state is None:
            return
        state.users -= 1
        if state.users == 0:
            state.authenticator.stop()
            del _auth[id(context)]


def resolve_credential(path: Path) -> Path:
    """``credential:NAME`` -> ``$CREDENTIALS_DIRECTORY/NAME``; any other path unchanged.

    Under ``DynamicUser=`` the service user changes at every start and cannot own a key file;
    systemd hands secrets over instead (``LoadCredential=NAME``: a read-only copy only the
    unit's user can read, in ``$CREDENTIALS_DIRECTORY``).
    """
    text = str(path)
    if not text.startswith(CREDENTIAL_PREFIX):
        return path
    name = text.removeprefix(CREDENTIAL_PREFIX)
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{text!r}: a credential name is one file name, e.g. credential:curve")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            f"{text!r} needs $CREDENTIALS_DIRECTORY: run under systemd with "
            f"LoadCredential={name} (see docs/service.md), or give a file path"
        )
    found = Path(directory) / name
    if not found.is_file():
        raise ConfigError(
            f"credential {name!r} is not in $CREDENTIALS_DIRECTORY ({directory}): put the key "
            f"in /etc/credstore/{name} or add LoadCredential={name}:/PATH to the unit"
        )
    return found


def load_server_keys(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a zmq.auth ``*.key_secret`` file (or a
    ``credential:NAME``, see ``resolve_credential``)."""
    path = resolve_credential(path)
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key file {path}: {exc}") from exc
    if not secret:
        raise ConfigError(f"{path} holds no secret key: give the *.key_secret file")
    return public, secret


class SecureBinding:
    """Bind a server-side socket according to the policy; ``close()`` releases ZAP."""

    def __init__(self, sock: zmq.Socket[Any], endpoint: str, settings: ZmqSettings) -> None:
        check_endpoint(endpoint, settings)
        self._context = sock.context
        self._uses_zap = False
        self.ipc_path: Path | None = None
        self.curve = is_tcp(endpoint) and settings.curve_secret_key_file is not None
        if self.curve:
            assert settings.curve_secret_key_file is not None
            assert settings.curve_allowed_clients_dir is not None
            public, secret = load_server_keys(settings.curve_secret_key_file)
            _acquire_authenticator(self._context, settings.curve_allowed_clients_dir)
            self._uses_zap = True
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.zap_domain = ZAP_DOMAIN.encode()
        elif is_tcp(endpoint):
            log.warning("insecure_tcp", endpoint=endpoint, reason="zmq.allow_insecure_tcp = true")
        path = ipc_path(endpoint)
        try:
            if path is not None:
                prepare_ipc(path)
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"cannot bind {endpoint}: {exc}") from exc
        except ConfigError:
            self.close()
            raise
        if path is not None:
            finish_ipc(path)
        last = sock.last_endpoint
        self.endpoint = last.decode() if isinstance(last, bytes) and last else endpoint
        self.ipc_path = path  # only once bound: close() then waits for the listener to go

    def close(self) -> None:
        """Call after closing the socket: waits until the ipc listener is really gone."""
        if self.ipc_path is not None:
            _wait_released(self.ipc_path)
        if self._uses_zap:
            self._uses_zap = False
            _release_authenticator(self._context)


def _wait_released(path: Path, timeout_s: float = 2.0) -> None:
    """libzmq closes listeners on its I/O thread after ``close()`` returns; wait for it so a
    restart in the same process (tests, SIGHUP) does not find its own socket still live."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not stat.S_ISSOCK(path.lstat().st_mode):
                return
            if not _socket_is_live(path):
                path.unlink()  # ours and dead: leave no stale socket behind
                return
        except (OSError, ConfigError):
            return
        time.sleep(0.01)


def configure_client_socket(
    sock: zmq.Socket[Any],
    *,
    server_key: bytes | None,
    client_keys: tuple[bytes, bytes] | None = None,
) -> None:
    """Make ``sock`` a CURVE client of a server with public key ``server_key``.

    Without ``client_keys`` an ephemeral key pair is used: encrypted, but only accepted by a
    server whose allowed-clients dir happens to contain it (i.e. never): pass your own.
    """
    if server_key is None:
        return
    public, secret = client_keys if client_keys is not None else zmq.curve_keypair()
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def read_public_key(value: str | bytes | Path) -> bytes:
    """A z85 public key given inline (40 chars) or as a zmq.auth key file."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and len(value) == 40 and not Path(value).exists():
        return value.encode("ascii")
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(value))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE public key {value}: {exc}") from exc
    return bytes(public)


def read_key_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``*.key_secret`` file (client side)."""
    return load_server_keys(path)


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)
