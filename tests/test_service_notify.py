"""sd_notify over a real datagram socket: path and abstract namespace, watchdog period."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from edged.daemon.sdnotify import Notifier
from edged.testing.waits import wait_until


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_notify_to_a_socket_path(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.ready("ready: 0 streams")
        assert _recv(sock) == {"READY": "1", "STATUS": "ready: 0 streams"}
        assert notifier.reloading()
        msg = _recv(sock)
        assert msg["RELOADING"] == "1"
        assert int(msg["MONOTONIC_USEC"]) > 0
        assert notifier.stopping()
        assert _recv(sock)["STOPPING"] == "1"
        notifier.close()


def test_notify_to_an_abstract_socket() -> None:
    name = f"edged-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.watchdog()
        assert _recv(sock) == {"WATCHDOG": "1"}
        notifier.close()


def test_without_a_manager_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog_interval_s is None


def test_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.status("hello") is False


def test_watchdog_interval_is_half_and_respects_watchdog_pid() -> None:
    mine = Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == 1.5
    other = Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


def test_watchdog_is_withheld_while_no_worker_makes_progress(tmp_path: Path) -> None:
    import threading

    from edged.config import Settings
    from edged.daemon.scheduler import Job, Scheduler
    from edged.daemon.service import Service
    from edged.tasks.base import TaskRequest, TaskResult

    gate = threading.Event()

    def wedged(request: TaskRequest, progress: object, cancel: threading.Event) -> TaskResult:
        gate.wait(10)  # a native call that never returns, as far as the daemon can tell
        return TaskResult(request.task, "m", "cpu", {})

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.5)
        service = Service(Settings(), notifier=Notifier({"NOTIFY_SOCKET": str(path)}))
        scheduler = Scheduler(wedged, workers=1)
        service.scheduler = scheduler
        scheduler.start()
        service._pet_watchdog(0.05)
        assert _recv(sock) == {"WATCHDOG": "1"}  # idle workers tick: healthy
        scheduler.submit(Job(TaskRequest("segmentation")))
        assert wait_until(lambda: scheduler.stats()["busy_workers"] == 1, 5)
        threading.Event().wait(0.3)  # > 2 x interval without any progress
        service._pet_watchdog(0.05)
        with pytest.raises(TimeoutError):  # a wedged scheduler must not pet the watchdog
            sock.recv(4096)
        gate.set()
        assert scheduler.stop(5)
        service._pet_watchdog(0.05)
        assert _recv(sock) == {"WATCHDOG": "1"}  # progress again: pinged again
