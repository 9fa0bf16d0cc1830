"""5k seeded garbage requests against the RUNNING daemon (``python -m edged run``).

The in-process hypothesis fuzz (test_protocol_fuzz.py) and the 500-message socket fuzz of the
bare RequestServer (test_server.py) cover the codec; this drives the whole service: server,
scheduler, engine, pool and the real tasks behind it, through many concurrent DEALER sockets.
The full run is ``edged bench fuzz --requests 100000`` (see docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.bench.fuzz import LiveDaemon, check_reply, fuzz_daemon, run_fuzz
from edged.bench.fuzz_cases import Case
from edged.wire.client import Client

REQUESTS = 5000


@pytest.fixture
def daemon(tmp_path: Path, shared_models: Path) -> LiveDaemon:
    return fuzz_daemon(tmp_path / "fz", [shared_models])


def test_5k_fuzzed_requests_get_exactly_one_structured_reply_each(daemon: LiveDaemon) -> None:
    with daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        report = run_fuzz(
            daemon.requests_endpoint, requests=REQUESTS, seed=7, sockets=48, alive=daemon.alive
        )
        with Client(daemon.requests_endpoint, timeout_s=20) as client:
            stats = client.stats()
            # Still the same process, still serving real work after the garbage.
            assert stats["pid"] == pid
            assert client.ping()["protocol"] == 1
        server = stats["server"]
    summary = report.as_dict()
    print(summary)
    assert report.crashes == 0
    assert report.hangs == 0, summary["malformed_examples"]
    assert report.malformed == 0, summary["malformed_examples"]
    assert report.replies == report.requests == REQUESTS
    # "internal" is a structured answer too, but it means a task let a bad input through.
    assert report.codes["internal"] == 0, summary["internal_examples"]
    # The generator reached every path: results, every client-error class, every case kind.
    assert report.ok > 100
    # Valid images reached the models, valid prompts the tokenizer and the tiny SD model.
    assert report.ok_kinds["image"] > 50
    assert report.ok_kinds["prompt"] > 10
    assert {"bad_request", "too_large", "unknown_model"} <= set(report.codes)
    assert set(report.kinds) >= {"builtin", "bytes", "json", "header", "image", "prompt", "big"}
    # The daemon's own books agree: every request counted, none dropped, nothing in flight.
    assert server["requests"] >= REQUESTS
    assert server.get("dropped_replies", 0) == 0
    assert server["in_flight"] == 0


def test_reply_checker_flags_what_a_client_could_not_use() -> None:
    case = Case("header", [b"{}"], "r1", delimiter=False)
    assert check_reply(case, [b'{"v":1,"id":"r1","ok":true,"payloads":[]}'])[0] == "ok"
    assert check_reply(case, [b'{"v":1,"id":"r2","ok":true}'])[0] == "malformed"
    assert check_reply(case, [b"not json"])[0] == "malformed"
    bad_code = b'{"v":1,"id":"r1","ok":false,"error":{"code":"oops","message":"m"}}'
    assert check_reply(case, [bad_code])[0] == "malformed"
    missing_frame = b'{"v":1,"id":"r1","ok":true,"payloads":[{"name":"mask"}]}'
    assert check_reply(case, [missing_frame])[0] == "malformed"
    busy = b'{"v":1,"id":"r1","ok":false,"error":{"code":"busy","message":"later"}}'
    assert check_reply(case, [busy]) == ("busy", "later")
    with_delimiter = Case("header", [b"{}"], None, delimiter=True)
    assert check_reply(with_delimiter, [b'{"v":1,"id":null,"ok":true}'])[0] == "malformed"
