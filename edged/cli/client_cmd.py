"""``edged client``: talk to a running daemon (request, subscribe, stats, ping, models, keygen)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.cli.common import add_common, print_json, settings_from_args
from edged.errors import BadRequest
from edged.wire.client import Client, Subscriber
from edged.wire.payloads import is_image
from edged.wire.security import generate_keys, read_key_pair, read_public_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("client", help="Send requests to / subscribe to a running edged.")
    actions = parser.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    conn = argparse.ArgumentParser(add_help=False)
    add_common(conn)
    conn.add_argument("--endpoint", help="ZeroMQ endpoint (default: from the settings)")
    conn.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    conn.add_argument("--server-key", help="server CURVE public key: z85 text or a *.key file")
    conn.add_argument("--client-key", type=Path, help="this client's *.key_secret file")

    req = actions.add_parser("request", parents=[conn], help="Run one task on an image.")
    req.add_argument("task", help="segmentation, superres, inpainting, generation, ...")
    req.add_argument("--input", type=Path, help="PNG or JPEG image")
    req.add_argument("--mask", type=Path, help="PNG mask (255 = hole / foreground)")
    req.add_argument("--points", nargs="+", default=[], metavar="X,Y[,LABEL]")
    req.add_argument("--box", metavar="X0,Y0,X1,Y1")
    req.add_argument("--prompt")
    req.add_argument("--model")
    req.add_argument("--backend", help="force one backend, e.g. onnx:cpu")
    req.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    req.add_argument("--encoding", choices=["png", "jpeg", "npy"], default=None)
    req.add_argument("--output", type=Path, required=True, help="where the first output goes")
    req.set_defaults(handler=_request)

    subs = actions.add_parser("subscribe", parents=[conn], help="Print (and save) results.")
    subs.add_argument("topics", nargs="*", default=[], metavar="TOPIC", help="topic prefixes")
    subs.add_argument("--save", type=Path, help="directory to save payloads into")
    subs.add_argument("--count", type=int, default=0, help="exit after N messages")
    subs.set_defaults(handler=_subscribe, timeout=None)

    for name, fn, text in (
        ("stats", _stats, "Print the daemon's statistics."),
        ("ping", _ping, "Check that the daemon answers."),
        ("models", _models, "List the models the daemon knows."),
    ):
        action = actions.add_parser(name, parents=[conn], help=text)
        action.set_defaults(handler=fn, timeout=10.0)

    keygen = actions.add_parser(
        "keygen", help="Write a CURVE key pair (NAME.key, NAME.key_secret)."
    )
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("--name", default="client")
    keygen.set_defaults(handler=_keygen)


# ---------------------------------------------------------------- argument parsing


def _curve(args: argparse.Namespace) -> dict[str, Any]:
    server = read_public_key(args.server_key) if args.server_key else None
    if args.client_key and server is None:
        raise BadRequest("--client-key needs --server-key (the server's public key)")
    client = read_key_pair(args.client_key) if args.client_key else None
    return {"curve_server_key": server, "curve_client_keys": client}


def _client(args: argparse.Namespace) -> Client:
    settings = settings_from_args(args)
    endpoint = args.endpoint or settings.requests_endpoint
    return Client(endpoint, timeout_s=args.timeout or 60.0, **_curve(args))


def _floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in count:
        raise BadRequest(f"{what}: expected {' or '.join(map(str, count))} numbers, got {text!r}")
    return values


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise BadRequest(f"--param {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)  # 3, 0.5, true, [1,2] keep their JSON types
    except ValueError:
        return key, raw


# ---------------------------------------------------------------- actions


def _request(args: argparse.Namespace) -> int:
    points = []
    for text in args.points:
        x, y, *label = _floats(text, (2, 3), "--points")
        points.append((x, y, int(label[0]) if label else 1))
    box = _floats(args.box, (4,), "--box") if args.box else None
    with _client(args) as client:
        reply = client.request(
            args.task,
            image=args.input,
            mask=args.mask,
            points=points,
            box=(box[0], box[1], box[2], box[3]) if box else None,
            prompt=args.prompt,
            model=args.model,
            backend=args.backend,
            params=dict(_param(p) for p in args.param),
            encoding=args.encoding,
        )
    files = _write_outputs(reply.outputs, args.output)
    print_json({**{k: v for k, v in reply.header.items() if k != "payloads"}, "files": files})
    return 0


def _write_outputs(outputs: dict[str, npt.NDArray[Any]], output: Path) -> dict[str, str]:
    """First output -> ``output``; the others beside it as ``{stem}_{name}{suffix}``."""
    files: dict[str, str] = {}
    for i, (name, arr) in enumerate(outputs.items()):
        path = output if i == 0 else output.with_name(f"{output.stem}_{name}{output.suffix}")
        files[name] = str(save_array(arr, path))
    return files


def save_array(arr: npt.NDArray[Any], path: Path) -> Path:
    """Images as PNG/JPEG by suffix (RGB in), anything else as .npy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg") or not is_image(arr):
        path = path.with_suffix(".npy")
        np.save(path, arr, allow_pickle=False)
        return path
    import cv2

    img = arr
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        img = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), img):
        raise BadRequest(f"cannot write {path}")
    return path


def _subscribe(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    endpoint = args.endpoint or settings.results_endpoint
    seen = 0
    with Subscriber(endpoint, args.topics or [""], **_curve(args)) as subscriber:
        while args.count <= 0 or seen < args.count:
            message = subscriber.recv(args.timeout)
            if message is None:
                break  # --timeout without a message
            seen += 1
            files: dict[str, str] = {}
            if args.save is not None:
                stem = f"{message.topic}_{message.header.get('seq', seen)}"
                for name, arr in message.arrays.items():
                    files[name] = str(save_array(arr, args.save / f"{stem}_{name}.png"))
            header = {k: v for k, v in message.header.items() if k != "payloads"}
            print_json({"topic": message.topic, **header, **({"files": files} if files else {})})
    return 0 if seen or args.count <= 0 else 1


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print_json(client.stats())
    return 0


def _ping(args: argparse.Namespace) -> int:
    with _client(args) as client:
        header = client.ping()
    print_json({"ok": True, "version": header.get("version"), "protocol": header.get("protocol")})
    return 0


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print_json({"models": client.models()})
    return 0


def _keygen(args: argparse.Namespace) -> int:
    public, secret = generate_keys(args.directory, args.name)
    print_json({"public": str(public), "secret": str(secret)})
    return 0
