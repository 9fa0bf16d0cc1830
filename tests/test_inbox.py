"""Inbox crash-safety: claims, results, error records and recovery of every crash state."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.daemon.inbox_files import job_id
from edged.daemon.inbox_tickets import InboxDirs, InboxTicket, recover
from edged.errors import BadRequest
from edged.tasks.base import TaskResult
from edged.testing import small_tmpfs


@pytest.fixture
def dirs(tmp_path: Path) -> InboxDirs:
    d = InboxDirs(tmp_path / "inbox")
    d.create()
    return d


def claim(dirs: InboxDirs, name: str) -> InboxTicket:
    src = dirs.inbox / name
    cv2.imwrite(str(src), np.full((8, 8, 3), 7, np.uint8))
    ticket = InboxTicket(dirs, name, "box")
    src.rename(ticket.claimed)
    ticket.job = job_id(ticket.claimed.stat())
    return ticket


def result() -> TaskResult:
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    return TaskResult("segmentation", "selfie", "litert:xnnpack", {"mask": mask}, {"k": 1})


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_complete_writes_outputs_then_manifest_then_moves_to_done(dirs: InboxDirs) -> None:
    ticket = claim(dirs, "a.png")
    ticket.complete(result())
    assert listing(dirs.done) == ["a.png"]
    assert listing(dirs.processing) == []
    mask_name = f"a.png.{ticket.job}.mask.png"
    assert listing(dirs.outbox) == sorted(["a.png.json", mask_name])
    manifest = json.loads((dirs.outbox / "a.png.json").read_text())
    assert manifest["outputs"] == [mask_name]
    assert manifest["job"] == ticket.job
    assert manifest["model"] == "selfie"
    mask = cv2.imread(str(dirs.outbox / mask_name), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (8, 8)
    assert int(mask[3, 3]) == 255
    # A second ending (e.g. a late cancel) is ignored: exactly one outcome per input.
    ticket.hand_back()
    assert listing(dirs.inbox) == []


def test_fail_writes_error_record_beside_the_input(dirs: InboxDirs) -> None:
    ticket = claim(dirs, "b.png")
    ticket.fail(BadRequest("mask size 3x3 does not match image 8x8"))
    assert listing(dirs.failed) == ["b.png", "b.png.error.json"]
    record = json.loads((dirs.failed / "b.png.error.json").read_text())
    assert record["error"]["code"] == "bad_request"
    assert "mask size" in record["error"]["message"]


def test_hand_back_returns_the_input_to_the_inbox(dirs: InboxDirs) -> None:
    claim(dirs, "c.png").hand_back()
    assert listing(dirs.inbox) == ["c.png"]
    assert listing(dirs.processing) == []


def test_recover_settles_every_crash_state(dirs: InboxDirs) -> None:
    # 1. crashed after the manifest, before the move: complete -> done, outputs kept.
    done = claim(dirs, "done.png")
    (dirs.outbox / f"done.png.{done.job}.mask.png").write_bytes(b"x")
    (dirs.outbox / "done.png.json").write_text(json.dumps({"job": done.job}))
    # 2. crashed after the error record, before the move -> failed.
    err = claim(dirs, "err.png")
    (dirs.failed / "err.png.error.json").write_text(json.dumps({"job": err.job}))
    # 3. crashed mid-write: partial output and a temp file -> removed, input back in inbox.
    half = claim(dirs, "half.png")
    (dirs.outbox / f"half.png.{half.job}.mask.png").write_bytes(b"partial")
    (dirs.outbox / f".half.png.{half.job}.image.png.tmp").write_bytes(b"partial")
    counts = recover(dirs, "box")
    assert counts == {"done": 1, "failed": 1, "returned": 1}
    assert listing(dirs.done) == ["done.png"]
    assert listing(dirs.failed) == ["err.png", "err.png.error.json"]
    assert listing(dirs.inbox) == ["half.png"]
    assert listing(dirs.outbox) == sorted(["done.png.json", f"done.png.{done.job}.mask.png"])
    assert listing(dirs.processing) == []


def test_disk_full_outbox_fails_the_job_without_partial_files(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "full", "16k") as outbox:
        (outbox / "filler").write_bytes(b"\0" * 15_000)  # leave less than one output needs
        dirs = InboxDirs(tmp_path / "inbox", outbox)
        dirs.create()
        ticket = claim(dirs, "big.png")
        noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        ticket.complete(TaskResult("superres", "m", "cpu", {"image": noisy}))
        assert listing(dirs.failed) == ["big.png", "big.png.error.json"]
        record = json.loads((dirs.failed / "big.png.error.json").read_text())
        assert "No space left" in record["error"]["message"]
        assert listing(outbox) == ["filler"]
        assert listing(dirs.done) == []


def test_dropped_files_obey_the_request_limits(tmp_path: Path) -> None:
    from edged.daemon.inbox import load_image
    from edged.errors import TooLarge

    path = tmp_path / "bomb.png"
    cv2.imwrite(str(path), np.zeros((300, 400), np.uint8))  # 120k pixels, a few hundred bytes
    with pytest.raises(TooLarge, match="pixels"):
        load_image(path, max_bytes=1_000_000, max_pixels=100_000)
    with pytest.raises(TooLarge, match="max_frame_bytes"):
        load_image(path, max_bytes=10, max_pixels=1_000_000)
    assert load_image(path, max_bytes=1_000_000, max_pixels=1_000_000).shape == (300, 400, 3)
    (tmp_path / "junk.bmp").write_bytes(b"BM not really")
    with pytest.raises(BadRequest, match=r"junk\.bmp: truncated BMP header"):
        load_image(tmp_path / "junk.bmp", max_bytes=1_000_000, max_pixels=1_000_000)


def test_inbox_source_survives_its_directory_vanishing(tmp_path: Path) -> None:
    import shutil

    from edged.config import ServiceSettings, StreamSettings
    from edged.daemon.inbox import InboxSource
    from edged.testing.cameras import FrameSink
    from edged.testing.waits import wait_until

    inbox = tmp_path / "box" / "inbox"
    sink = FrameSink()
    cfg = StreamSettings(name="box", source=f"dir:{inbox}", task="segmentation")
    src = InboxSource(cfg, ServiceSettings(inbox_poll_s=0.02), sink.deliver, sink.on_state)
    src.start()
    try:
        assert wait_until(lambda: sink.state_names() == ["up"], 10)
        shutil.rmtree(inbox)  # e.g. an unmounted USB stick
        assert wait_until(lambda: sink.state_names()[-1:] == ["down"], 10)
        inbox.mkdir()
        cv2.imwrite(str(inbox / "late.png"), np.zeros((4, 4, 3), np.uint8))
        assert wait_until(lambda: len(sink.frames) == 1, 10)
    finally:
        src.stop()
    assert sink.state_names() == ["up", "down", "up"]
    assert sink.frames[0].meta == {"file": "late.png"}
    assert sink.frames[0].ticket is not None
