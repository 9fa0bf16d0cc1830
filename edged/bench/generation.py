"""``edged bench generation --model-dir DIR [--budget BYTES] [--steps N] [--json]``.

Each run is a fresh child process (so one run's heap never inflates the next one's RSS):

- ``budgeted``: the pool budget is ``--budget``; residency ``auto`` picks staged when the
  components do not fit together. One generation, cold (every component loaded).
- ``resident`` (baseline): budget unlimited, everything resident; a cold request and then a
  warm one (new prompt: text encoder runs again, nothing is loaded).

Peak RSS is the whole process (Python + onnxruntime + models), sampled every 5 ms and
cross-checked with the kernel's VmHWM; ``peak_bytes_per_stage`` splits it by stage (text
encoder, UNet steps, decoder), each stage's loads and evictions included.

``--decoder auto`` (default) is settled for ``--budget`` first (the VAE if it fits, else a
tiny decoder, else VAE tiles) and the baseline uses that same decoder.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, print_json
from edged.errors import ModelNotFound
from edged.schema import format_bytes, parse_bytes

UNLIMITED = 1 << 40
PROMPTS = ("a photo of an astronaut riding a horse on the moon", "a red house under a blue sky")


def register(suites: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = suites.add_parser("generation", help="text-to-image peak RSS and time, staged vs resident")
    add_common(p)
    p.add_argument("--model-dir", type=Path, required=True, help="diffusers ONNX model dir")
    p.add_argument("--budget", default="1G", help="pool budget for the budgeted run (1G, 1.5G)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    p.add_argument("--size", type=int, default=512, help="image width = height")
    p.add_argument(
        "--scheduler", default="auto", choices=["auto", "euler", "lcm"], help="sampler (dir's)"
    )
    p.add_argument(
        "--decoder", default="auto", help="auto | vae | tiny | vaelight | taesd | path.onnx"
    )
    p.add_argument("--model-dirs", default=None, help="extra model dir for named decoders")
    p.add_argument("--residency", default="auto", choices=["auto", "staged", "resident"])
    p.add_argument("--no-baseline", action="store_true", help="skip the all-resident run")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state-dir", default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=_handler)


def unet_precision(model_dir: Path) -> str:
    """int4 (MatMulNBits), int8 (integer/QDQ ops) or fp32/fp16, read from the UNet graph."""
    import onnx

    model = onnx.load(str(model_dir / "unet" / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if "MatMulNBits" in ops:
        return "int4" + ("+int8-conv" if "ConvInteger" in ops else "")
    if ops & {"MatMulInteger", "ConvInteger", "QLinearConv", "QuantizeLinear"}:
        return "int8"
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    return "fp16" if inputs.get("sample") == onnx.TensorProto.FLOAT16 else "fp32"


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One measured run in this (fresh) process."""
    from edged.config import load_settings
    from edged.engine import Engine
    from edged.memory import PeakSampler, reset_hwm, snapshot
    from edged.pool.model_pool import ModelPool
    from edged.tasks.base import TaskRequest

    overrides: dict[str, Any] = {"model_dirs": [args.model_dirs]} if args.model_dirs else {}
    # The budget asked for, not capped by the profile's default: the baseline is unlimited.
    from edged.pool.estimates import ESTIMATES_FILE

    budget = parse_bytes(args.budget)
    assert isinstance(budget, int)
    # Both runs share one estimate table: the baseline (run first) measures each component's
    # real load cost, so the budgeted run is admitted on measurements, not on the pool's
    # 2.5x-file-size guess for never-seen models.
    estimates = Path(args.state_dir) / ESTIMATES_FILE if args.state_dir else None
    pool: ModelPool[Any] = ModelPool(budget, estimates_path=estimates)
    engine = Engine(load_settings(overrides=overrides), pool=pool)
    params: dict[str, Any] = {"width": args.size, "height": args.size, "residency": args.residency}
    params["decoder"] = args.decoder
    params["scheduler"] = args.scheduler
    if args.steps:
        params["steps"] = args.steps
    reset_hwm()
    runs: list[tuple[float, dict[str, Any]]] = []
    with PeakSampler() as sampler:
        stages = StagePeaks(sampler)
        for prompt in PROMPTS[: 2 if args.residency == "resident" else 1]:
            start = time.perf_counter()
            request = TaskRequest("generation", str(args.model_dir), prompt=prompt, params=params)
            result = engine.run(request, progress=None if runs else stages.progress)
            if not runs:
                stages.finish()
            runs.append((time.perf_counter() - start, result.meta))
    hwm = snapshot(with_pss=False).as_dict().get("hwm_bytes")
    seconds, meta = runs[0]
    out: dict[str, Any] = {
        "peak_rss_bytes": sampler.peak,
        "peak_bytes_per_stage": stages.peaks,
        "vm_hwm_bytes": hwm,
        "budget_bytes": engine.pool.budget,
        "seconds_total": round(seconds, 2),
        "seconds_per_stage": {k: round(v, 2) for k, v in meta["seconds_per_stage"].items()},
        "resident_strategy": meta["residency"],
        "unet_parts": meta.get("unet_parts", 0),
        "text_encoder_parts": meta.get("text_encoder_parts", 0),
        "decoder_tile": meta.get("decoder_tile", 0),
        "steps": meta["steps"],
        "scheduler": meta["scheduler"],
        "decoder": meta["decoder"],
        "decoder_choice": meta.get("decoder_choice", "asked"),
    }
    if len(runs) > 1:
        out["warm_seconds_total"] = round(runs[1][0], 2)
        warm = runs[1][1]["seconds_per_stage"]
        out["warm_seconds_per_stage"] = {k: round(v, 2) for k, v in warm.items()}
    engine.close()
    return out


class StagePeaks:
    """Progress callback splitting the sampler's peak by stage: the text encoder ends at
    ``text_encoder: done``, the UNet at its last ``unet: step n/n``, the decoder with the
    request (``finish``). Loads and evictions count in the stage they belong to."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.stage = "text_encoder"
        self.peaks: dict[str, int] = {}
        sampler.mark()

    def _close(self, following: str) -> None:
        self.peaks[self.stage] = self.sampler.peak_since_mark()
        self.sampler.mark()
        self.stage = following

    def progress(self, step: int, total: int, message: str) -> None:
        if message.startswith("text_encoder:") and self.stage == "text_encoder":
            self._close("unet")
            return
        unet = re.search(r"^unet: step (\d+)/(\d+)", message)
        if unet and unet[1] == unet[2] and self.stage == "unet":
            self._close("decoder")

    def finish(self) -> None:
        if self.stage not in self.peaks:
            self._close("done")


def settled_decoder(args: argparse.Namespace) -> str:
    """``--decoder auto`` settled for the budgeted run's budget (the same rule the request
    applies), so the resident baseline decodes with the decoder the budgeted run will use:
    the two runs then differ only in residency."""
    if args.decoder != "auto":
        return str(args.decoder)
    from edged.config import load_settings
    from edged.engine import Engine
    from edged.pool.model_pool import ModelPool
    from edged.tasks.generation.budget import choose_decoder
    from edged.tasks.generation.pipeline import ModelDir
    from edged.tasks.generation.staged import Residency

    budget = parse_bytes(args.budget)
    assert isinstance(budget, int)
    overrides: dict[str, Any] = {"model_dirs": [args.model_dirs]} if args.model_dirs else {}
    engine = Engine(load_settings(overrides=overrides), pool=ModelPool(budget))
    try:
        residency = Residency(engine, args.model_dir, strategy="staged", pixels=args.size**2)
        return choose_decoder(residency, ModelDir.load(args.model_dir), engine).name
    finally:
        engine.close()


def _spawn(
    args: argparse.Namespace, budget: str, residency: str, state: str, decoder: str
) -> dict[str, Any]:
    # The child is this module, not ``python -m edged``: building the whole CLI imports
    # every sub-command (cv2, zmq: +31 MB) that a generation process does not need.
    argv = [sys.executable, "-m", "edged.bench.generation", "--child", "--json"]
    argv += ["--state-dir", state]
    argv += ["--model-dir", str(args.model_dir), "--budget", budget, "--residency", residency]
    argv += ["--size", str(args.size), "--decoder", decoder, "--scheduler", args.scheduler]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.model_dirs:
        argv += ["--model-dirs", args.model_dirs]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0], "resident_strategy": residency}
    parsed: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return parsed


def _handler(args: argparse.Namespace) -> int:
    if not (args.model_dir / "unet" / "model.onnx").is_file():
        raise ModelNotFound(f"{args.model_dir}: not a diffusers ONNX model dir (unet/model.onnx)")
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edged-bench-gen-") as state:
        if args.no_baseline:
            baseline = None
        else:
            same = settled_decoder(args)
            baseline = _spawn(args, str(UNLIMITED), "resident", state, same)
        result = _spawn(args, args.budget, args.residency, state, args.decoder)
    result["unet_precision"] = unet_precision(args.model_dir)
    result["model_dir"] = str(args.model_dir)
    if baseline is not None:
        result["baseline_resident"] = baseline
    if args.json:
        print_json(result)
    else:
        _print_table(result)
    return 0 if "error" not in result else 1


def _print_table(result: dict[str, Any]) -> None:
    rows = [("budgeted", result)]
    if "baseline_resident" in result:
        rows.append(("resident", result["baseline_resident"]))
    print(f"model {result['model_dir']}  unet {result['unet_precision']}")
    for name, r in rows:
        if "error" in r:
            print(f"{name:9} error: {r['error']}")
            continue
        stages = " ".join(f"{k}={v}s" for k, v in r["seconds_per_stage"].items())
        warm = f" warm {r['warm_seconds_total']}s" if "warm_seconds_total" in r else ""
        print(
            f"{name:9} {r['resident_strategy']:8} peak {format_bytes(r['peak_rss_bytes'])} "
            f"budget {format_bytes(r['budget_bytes'])} decoder {r['decoder']} "
            f"total {r['seconds_total']}s ({stages}){warm}"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m edged.bench.generation ARGS``: the suite alone (the measured child)."""
    parser = argparse.ArgumentParser(prog="edged bench")
    register(parser.add_subparsers())
    args = parser.parse_args(["generation", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
