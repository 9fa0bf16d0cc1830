"""An HTTP MJPEG camera that stalls (connection open, no bytes): the read timeout notices,
the source reconnects with backoff and resumes when frames flow again."""

from __future__ import annotations

import numpy as np

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.sources import CaptureSource
from edged.testing.cameras import FrameSink, MjpegServer
from edged.testing.waits import wait_until


def test_stalled_mjpeg_stream_times_out_reconnects_and_resumes() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    service = ServiceSettings(
        reconnect_initial_s=0.1, reconnect_max_s=0.4, open_timeout_s=1.0, read_timeout_s=0.5
    )
    with MjpegServer(frame) as camera:
        sink = FrameSink()
        cfg = StreamSettings(name="ipcam", source=camera.url, task="segmentation")
        src = CaptureSource(cfg, service, sink.deliver, sink.on_state)
        src.start()
        try:
            assert wait_until(lambda: len(sink.frames) >= 3, 20)
            assert sink.frames[0].image.shape == (48, 64, 3)
            camera.stall = True
            assert wait_until(lambda: "reconnecting" in sink.state_names(), 20)
            stalled_at = len(sink.frames)
            camera.stall = False
            assert wait_until(lambda: sink.state_names().count("up") >= 2, 20)
            assert wait_until(lambda: len(sink.frames) > stalled_at + 2, 20)
        finally:
            src.stop()
    names = sink.state_names()
    assert names[:3] == ["up", "down", "reconnecting"]
    assert names[-1] == "stopped"
    assert src.stats()["reconnects"] >= 1
    assert camera.connections >= 2
