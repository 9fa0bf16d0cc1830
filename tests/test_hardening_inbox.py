"""Issue 15, the inbox side: every input gets exactly one result or error record, whatever it is.

Decode bombs, symlinks (outside, looping), FIFOs, directories and 255-byte names through the
real daemon; the races (a FIFO or a directory where a listed file was) on a real InboxSource;
results that belong to a job id (a failed ``cat`` never touches ``cat.png``'s results; a
reused name is a new job after a kill -9).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.inbox import InboxSource
from edged.daemon.inbox_files import NAME_MAX, job_id, read_claimed
from edged.daemon.inbox_tickets import InboxDirs, InboxTicket, recover
from edged.errors import BadRequest
from edged.tasks.base import TaskResult
from edged.testing import small_tmpfs
from edged.testing.cameras import FrameSink
from edged.testing.daemon import Daemon, toml_config
from edged.testing.waits import wait_until


def bmp_bomb() -> bytes:
    """118 bytes whose header claims 40000 x 40000 x 24 bit (cv2.imdecode raises cv2.error)."""
    head = b"BM" + struct.pack("<IHHI", 118, 0, 0, 54)
    head += struct.pack("<IiiHHIIiiII", 40, 40000, 40000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return head + b"\0" * (118 - len(head))


def png(path: Path, seed: int = 0, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def drop(inbox: Path, name: str, seed: int = 0) -> Path:
    """Write elsewhere, rename in: the inbox never sees half a file."""
    tmp = png(inbox.parent / f"tmp-{seed}.png", seed)
    os.rename(tmp, inbox / name)
    return inbox / name


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def record(failed: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((failed / f"{name}.error.json").read_text())
    return data


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Any]:
    """A daemon config with one segmentation inbox (started by the test)."""
    inbox = tmp_path / "box" / "inbox"
    inbox.mkdir(parents=True)
    work = tmp_path / "d"
    work.mkdir()
    return {"inbox": inbox, "root": inbox.parent, "work": work}


def start(box: dict[str, Any], models: Path, **env: str) -> Daemon:
    stream = {"name": "box", "source": f"dir:{box['inbox']}", "task": "segmentation"}
    service = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.4}
    config = toml_config(box["work"] / "edged.toml", models, [stream], service)
    return Daemon(config, box["work"], env=env).start()


# ---------------------------------------------------------------- through the daemon


def test_hostile_inputs_each_get_one_error_record_and_the_inbox_goes_on(
    box: dict[str, Any], shared_models: Path, tmp_path: Path
) -> None:
    inbox, root = box["inbox"], box["root"]
    secret = png(tmp_path / "outside.png", 9)  # an image the inbox writer must not get at
    (inbox / "bomb.bmp").write_bytes(bmp_bomb())
    (inbox / "link.png").symlink_to(secret)
    (inbox / "loop.png").symlink_to(inbox / "loop.png")  # stat() raises ELOOP
    os.mkfifo(inbox / "pipe.png")
    (inbox / "folder.png").mkdir()
    long_name = "L" * (NAME_MAX - 4) + ".png"
    drop(inbox, long_name, 1)
    drop(inbox, "good.png", 2)
    daemon = start(box, shared_models)
    try:
        assert wait_until(lambda: not listing(inbox) and not listing(root / "processing"), 30), (
            daemon.log()
        )
        drop(inbox, "after.png", 3)  # the loop is still alive after all of that
        assert wait_until((root / "done" / "after.png").exists, 30), daemon.log()
    finally:
        daemon.close()
    failed = root / "failed"
    refused = {"bomb.bmp", "link.png", "loop.png", "pipe.png", "folder.png"}
    assert {n for n in listing(failed) if not n.endswith(".error.json")} == refused
    for name in refused:
        assert record(failed, name)["error"]["code"] in ("bad_request", "too_large"), name
    assert "symlink" in record(failed, "link.png")["error"]["message"]
    assert "FIFO" in record(failed, "pipe.png")["error"]["message"]
    assert (failed / "link.png").is_symlink()  # moved as a link, the target never opened
    assert listing(root / "done") == sorted([long_name, "good.png", "after.png"])
    manifests = [json.loads(p.read_text()) for p in (root / "outbox").glob("*.json")]
    assert sorted(m["input"] for m in manifests) == sorted([long_name, "good.png", "after.png"])
    for manifest in manifests:
        for output in manifest["outputs"]:
            assert len(output.encode()) <= NAME_MAX
            assert (root / "outbox" / output).is_file()


def test_reused_name_after_kill_9_is_a_new_job(box: dict[str, Any], shared_models: Path) -> None:
    inbox, root = box["inbox"], box["root"]
    drop(inbox, "cat.png", 1)
    daemon = start(box, shared_models)
    try:
        assert wait_until((root / "done" / "cat.png").exists, 30), daemon.log()
    finally:
        daemon.close()
    first = json.loads((root / "outbox" / "cat.png.json").read_text())
    # A new cat.png, claimed when a kill -9 hit: left in processing/ with no result of its own.
    new = drop(root / "processing", "cat.png", 2)
    new_job, new_bytes = job_id(new.stat()), new.read_bytes()
    assert new_job != first["job"]
    daemon = start(box, shared_models)
    try:
        assert wait_until(
            lambda: json.loads((root / "outbox" / "cat.png.json").read_text())["job"] == new_job,
            30,
        ), daemon.log()
    finally:
        daemon.close()
    assert (root / "done" / "cat.png").read_bytes() == new_bytes
    second = json.loads((root / "outbox" / "cat.png.json").read_text())
    # The old job's outputs are superseded, the new ones are there: one set per name.
    assert listing(root / "outbox") == sorted(["cat.png.json", *second["outputs"]])


# ---------------------------------------------------------------- races, in-process


@pytest.fixture
def source(tmp_path: Path) -> tuple[InboxSource, FrameSink]:
    sink = FrameSink()
    cfg = StreamSettings(name="box", source=f"dir:{tmp_path / 'inbox'}", task="segmentation")
    src = InboxSource(cfg, ServiceSettings(inbox_poll_s=0.02), sink.deliver, sink.on_state)
    return src, sink


def take_in_thread(src: InboxSource, path: Path) -> threading.Thread:
    """``_take`` (the claim of one listed file) on a thread: a blocked open stays alive."""
    thread = threading.Thread(target=src._take, args=(path,), daemon=True)
    thread.start()
    thread.join(10)
    return thread


def test_fifo_renamed_onto_a_listed_name_is_refused_without_blocking(
    source: tuple[InboxSource, FrameSink],
) -> None:
    src, sink = source
    path = src.dirs.inbox / "a.png"
    os.mkfifo(path)  # listed as a file a moment ago; a FIFO by the time it is claimed
    thread = take_in_thread(src, path)
    assert not thread.is_alive(), "the inbox thread blocked opening a FIFO"
    assert listing(src.dirs.failed) == ["a.png", "a.png.error.json"]
    assert "FIFO" in record(src.dirs.failed, "a.png")["error"]["message"]
    assert not sink.frames


def test_fifo_is_never_opened_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_claimed(str(fifo), job_id(fifo.lstat()), 1000)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(result[0], BadRequest)


def test_read_error_on_a_claimed_input_goes_to_failed_with_a_record(
    source: tuple[InboxSource, FrameSink],
) -> None:
    src, _ = source
    path = src.dirs.inbox / "b.png"
    path.mkdir()  # listed as a file, a directory when read: EISDIR on the old read path
    thread = take_in_thread(src, path)
    assert not thread.is_alive()
    assert listing(src.dirs.processing) == []
    assert listing(src.dirs.failed) == ["b.png", "b.png.error.json"]
    assert record(src.dirs.failed, "b.png")["error"]["code"] == "bad_request"
    assert src.stats()["refused"] == 1


def test_decode_bomb_is_an_error_record_not_a_dead_thread(
    source: tuple[InboxSource, FrameSink],
) -> None:
    src, sink = source
    (src.dirs.inbox / "bomb.bmp").write_bytes(bmp_bomb())
    png(src.dirs.inbox / "z.png")
    src.start()
    try:
        assert wait_until(lambda: len(sink.frames) == 1, 10)
    finally:
        src.stop()
    assert sink.frames[0].meta == {"file": "z.png"}
    message = record(src.dirs.failed, "bomb.bmp")["error"]["message"]
    assert message.startswith("bomb.bmp:")
    assert src.stats()["restarts"] == 0


# ---------------------------------------------------------------- results belong to a job


def claim(dirs: InboxDirs, name: str, seed: int = 0) -> InboxTicket:
    png(dirs.inbox / name, seed, 8)
    ticket = InboxTicket(dirs, name, "box")
    (dirs.inbox / name).rename(ticket.claimed)
    ticket.job = job_id(ticket.claimed.stat())
    return ticket


def test_a_failed_write_for_cat_never_deletes_the_results_of_cat_png(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "out", "64k") as outbox:
        dirs = InboxDirs(tmp_path / "inbox", outbox)
        dirs.create()
        mask = np.zeros((8, 8), np.uint8)
        claim(dirs, "cat.png").complete(TaskResult("segmentation", "m", "cpu", {"mask": mask}))
        kept = listing(outbox)
        assert len(kept) == 2
        (outbox / "filler").write_bytes(b"\0" * (48 * 1024))  # leave less than one output needs
        noisy = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
        claim(dirs, "cat", 1).complete(TaskResult("superres", "m", "cpu", {"image": noisy}))
        assert listing(dirs.failed) == ["cat", "cat.error.json"]
        assert listing(outbox) == sorted([*kept, "filler"])


def test_recovery_compares_job_ids_not_names(tmp_path: Path) -> None:
    dirs = InboxDirs(tmp_path / "inbox")
    dirs.create()
    old = claim(dirs, "cat.png", 1)
    old.complete(TaskResult("segmentation", "m", "cpu", {"mask": np.zeros((8, 8), np.uint8)}))
    shutil.move(dirs.done / "cat.png", tmp_path / "old.png")
    new = claim(dirs, "cat.png", 2)  # the same name, claimed, then kill -9
    (dirs.failed / "cat.png.error.json").write_text(json.dumps({"job": old.job}))
    assert recover(dirs, "box") == {"done": 0, "failed": 0, "returned": 1}
    assert listing(dirs.inbox) == ["cat.png"]
    assert job_id((dirs.inbox / "cat.png").stat()) == new.job
    assert len(listing(dirs.outbox)) == 2  # the old job's result is untouched


def test_inbox_refuses_a_tiff_bomb_from_its_header_without_inflating_it(tmp_path: Path) -> None:
    """A 12000 x 12000 deflate TIFF (~150 kB) is too_large before any pixel is decoded.

    Run in a fresh interpreter so its peak RSS belongs to this decode alone: decoding the
    bomb would take ~144 MB (grey) to ~430 MB (as RGB).
    """
    import subprocess
    import sys

    from edged.bench.hostile import tiff_bomb

    bomb = tmp_path / "bomb.tiff"
    bomb.write_bytes(tiff_bomb(12_000))
    code = (
        "import resource, sys; from pathlib import Path\n"
        "from edged.daemon.inbox_files import decode_dropped\n"
        "from edged.errors import TooLarge\n"
        "data = Path(sys.argv[1]).read_bytes()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    decode_dropped('bomb.tiff', data, 40_000_000)\n"
        "    print('decoded')\n"
        "except TooLarge as exc:\n"
        "    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "    print('too_large', grew * 1024, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=2)
    assert out[0] == "too_large", out
    assert int(out[1]) < 50_000_000, f"the decode grew the peak by {int(out[1]) >> 20} MB"
    assert "12000" in out[2]
