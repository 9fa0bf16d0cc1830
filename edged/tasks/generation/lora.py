"""LoRA adapters merged into the UNet's weights at load, switchable per request.

A request names an adapter (``params.lora``: a ``.safetensors`` path, or NAME for
``<model dir>/loras/NAME.safetensors``) and ``params.lora_scale`` (default 1). The base ONNX
file is never rewritten: for every weight the adapter targets, ``W + scale * alpha/r * up @ down``
is computed once and handed to onnxruntime as a replacement initializer when the UNet (or a
UNet part) loads. The merged session is its own pool entry (key includes the adapter's
sha256 and the scale), so the base session stays valid: a request without ``lora`` uses it
("unmerge" is just not using the merged one), and the pool evicts whichever is older.

Keys understood: PEFT/diffusers (``<module>.lora_A.weight`` / ``lora_B.weight``), older
diffusers (``<module>.lora.down.weight`` / ``lora.up.weight``) and kohya
(``lora_unet_<module>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``). A module is
matched to the node whose exported name is its path (``/down_blocks.0/.../to_q/MatMul``) and
whose weight is an initializer (MatMul ``[in, out]``, Gemm, Conv). Every adapter module must
match, and the targeted weights must be float: nothing is applied partly or silently.
Needs ``onnx`` to read the graph (``pip install edged[quantize]``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import BackendUnavailable, BadRequest

F32 = npt.NDArray[np.float32]
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
_SUFFIXES = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)
_PREFIXES = ("base_model.model.", "unet.", "lora_unet_")
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
LoraWeights = tuple[F32, F32, float | None]
"""(down [r, in, ...], up [out, r, ...], alpha or None)"""


def read_safetensors(path: Path) -> dict[str, F32]:
    """Every tensor of a ``.safetensors`` file as float32 (the format is a JSON header + raw)."""
    try:
        blob = path.read_bytes()
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size])
    except (OSError, ValueError) as exc:
        raise BadRequest(f"lora {path}: not a readable .safetensors file ({exc})") from exc
    base = 8 + size
    out: dict[str, F32] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise BadRequest(f"lora {path}: tensor {key} has unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        raw = np.frombuffer(blob[base + start : base + end], dtype=dtype)
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[key] = raw.astype(np.float32).reshape(info["shape"])
    return out


def _module(key: str, suffix: str) -> str:
    name = key[: -len(suffix)]
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return name.replace(".", "_").replace("/", "_")


@dataclass(frozen=True)
class Adapter:
    """module (normalised with ``_``) -> (down [r, ...], up [out, r, ...], alpha or None)."""

    path: Path
    sha256: str
    modules: dict[str, LoraWeights]

    @classmethod
    def load(cls, path: Path) -> Adapter:
        tensors = read_safetensors(path)
        modules: dict[str, LoraWeights] = {}
        for key in tensors:
            for down_suffix, up_suffix in _SUFFIXES:
                if key.endswith(down_suffix):
                    up_key = key[: -len(down_suffix)] + up_suffix
                    if up_key not in tensors:
                        raise BadRequest(f"lora {path.name}: {key} has no {up_suffix}")
                    alpha = tensors.get(key[: -len(down_suffix)] + ".alpha")
                    modules[_module(key, down_suffix)] = (
                        tensors[key],
                        tensors[up_key],
                        None if alpha is None else float(alpha.reshape(-1)[0]),
                    )
        if not modules:
            raise BadRequest(f"lora {path.name}: no LoRA down/up weight pairs in it")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(path, digest, modules)


def _node_module(name: str) -> str:
    """``/m/down_blocks.0/attn1/to_q/MatMul`` -> ``m_down_blocks_0_attn1_to_q``."""
    parts = [p for p in name.split("/") if p][:-1]
    return "_".join(parts).replace(".", "_")


@lru_cache(maxsize=8)
def weight_targets(unet: Path) -> dict[str, tuple[str, str, int]]:
    """module -> (initializer name, op type, ONNX element type) of the UNet's weights."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable(f"LoRA needs onnx: pip install edged[quantize] ({exc})") from exc
    graph = onnx.load(str(unet), load_external_data=False).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    out: dict[str, tuple[str, str, int]] = {}
    for node in graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            out.setdefault(
                _node_module(node.name), (node.input[1], node.op_type, inits[node.input[1]])
            )
    return out


_QUANT_OPS = ("MatMulInteger", "ConvInteger", "MatMulNBits", "DequantizeLinear", "QLinearConv")


@lru_cache(maxsize=8)
def _quantized(unet: Path) -> bool:
    import onnx

    graph = onnx.load(str(unet), load_external_data=False).graph
    return any(node.op_type in _QUANT_OPS for node in graph.node)


def _match(module: str, targets: dict[str, tuple[str, str, int]]) -> tuple[str, str, int] | None:
    if module in targets:
        return targets[module]
    hits = [v for k, v in targets.items() if k.endswith("_" + module)]
    return hits[0] if len(hits) == 1 else None


def _delta(down: F32, up: F32, alpha: float | None, shape: tuple[int, ...], op: str) -> F32:
    rank = down.shape[0]
    delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)  # [out, in*k*k]
    scale = (alpha / rank) if alpha is not None else 1.0
    if op == "MatMul":  # exported Linear weights are stored transposed: [in, out]
        delta = delta.T
    if int(np.prod(delta.shape)) != int(np.prod(shape)):
        raise BadRequest(f"lora shape {up.shape}x{down.shape} does not fit a weight of {shape}")
    return np.asarray(delta.reshape(shape) * scale, dtype=np.float32)


def plan_merge(unet: Path, adapter: Adapter) -> dict[str, tuple[str, LoraWeights]]:
    """initializer name -> (op type, [down, up, alpha]) for every adapter module, or a
    BadRequest naming what does not match."""
    import onnx

    targets = weight_targets(unet)
    plan: dict[str, tuple[str, LoraWeights]] = {}
    missing = []
    for module, lora in adapter.modules.items():
        hit = _match(module, targets)
        if hit is None:
            missing.append(module)
            continue
        name, op, kind = hit
        if kind not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            raise BadRequest(
                f"lora {adapter.path.name}: weight {name} of this UNet is not float "
                "(quantized); apply LoRA to an fp32/fp16 UNet"
            )
        plan[name] = (op, lora)
    if missing and _quantized(unet):
        raise BadRequest(
            f"lora {adapter.path.name}: {unet.parent.name} is a quantized UNet (its weights are "
            "not float): apply LoRA to an fp32/fp16 UNet, or merge it first and then quantize"
        )
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise BadRequest(
            f"lora {adapter.path.name}: {len(missing)} module(s) not found in {unet.parent.name}: "
            f"{shown}{' ...' if len(missing) > 5 else ''}"
        )
    return plan


def merged_model(model: Path, unet: Path, adapter: Adapter, scale: float) -> Path:
    """``model`` (the UNet or one of its parts) with the adapter merged: a sidecar file.

    Only the targeted tensors are written (inline in ``.lora-<key>.onnx`` beside ``model``);
    every other tensor keeps pointing at the model's own external data file, so the base is
    neither copied nor changed. (onnxruntime's ``add_initializer`` would avoid the file, but
    its graph optimizer folds some weights, e.g. a Conv's, before the override applies:
    measured here, the result silently kept the base conv weight.)
    """
    import onnx

    stat = model.stat()
    tag = f"{adapter.sha256}:{scale!r}:{model.name}:{stat.st_size}:{stat.st_mtime_ns}"
    out = model.parent / f".lora-{hashlib.sha256(tag.encode()).hexdigest()[:16]}.onnx"
    if out.is_file():
        return out
    plan = plan_merge(unet, adapter)
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        if tensor.name in plan:
            _merge_tensor(onnx, tensor, model.parent, plan[tensor.name], scale)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(proto, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadRequest(
            f"lora: cannot write the merged UNet beside {model} ({exc.strerror}); "
            "the model dir must be writable for LoRA"
        ) from exc
    return out


def _merge_tensor(
    onnx: Any, tensor: Any, base_dir: Path, target: tuple[str, LoraWeights], scale: float
) -> None:
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(tensor, str(base_dir))
    base = numpy_helper.to_array(tensor)
    op, (down, up, alpha) = target
    merged = base.astype(np.float32) + scale * _delta(down, up, alpha, tuple(base.shape), op)
    tensor.CopyFrom(numpy_helper.from_array(merged.astype(base.dtype), tensor.name))


def resolve(root: Path, name: str) -> Path:
    """``params.lora``: a path, or NAME of ``<model dir>/loras/NAME.safetensors``."""
    path = Path(name)
    if not path.is_file() and re.fullmatch(r"[\w.-]+", name):
        path = root / "loras" / f"{name.removesuffix('.safetensors')}.safetensors"
    if not path.is_file():
        raise BadRequest(
            f"lora {name!r}: no such file (a .safetensors path or NAME in {root}/loras)"
        )
    return path


@lru_cache(maxsize=4)
def _load_cached(path: Path, mtime_ns: int, size: int) -> Adapter:
    return Adapter.load(path)


def from_params(root: Path, params: dict[str, Any]) -> tuple[Adapter, float] | None:
    """``params.lora`` / ``params.lora_scale`` -> (adapter, scale), or None without ``lora``."""
    name = params.get("lora")
    if not name:
        return None
    try:
        scale = float(params.get("lora_scale", 1.0))
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"lora_scale: a number (got {params.get('lora_scale')!r})") from exc
    if not np.isfinite(scale):
        raise BadRequest(f"lora_scale: a finite number (got {scale})")
    path = resolve(root, str(name)).resolve()
    stat = path.stat()
    return _load_cached(path, stat.st_mtime_ns, stat.st_size), scale
