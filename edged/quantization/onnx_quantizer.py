"""Quantize an fp32/fp16 ONNX model (or the UNet of a model dir) with onnxruntime's tools.

Schemes:

- ``dynamic-int8``  8-bit weights, activations quantized at run time (MatMulInteger,
                    ConvInteger + DynamicQuantizeLinear). Weights are uint8: ORT's CPU
                    ConvInteger has no int8-weight kernel. SD UNets are ~70 % conv weights, so
                    skipping convs (``convs=False``) saves little.
- ``qdq-int8``      static QDQ (QuantizeLinear/DequantizeLinear) calibrated on inputs; without
                    user data the calibration feeds are random draws shaped like the inputs,
                    which suits diffusion latents/noise but not images.
- ``int4-weights``  4-bit block-wise weight-only MatMul/Gemm (``MatMulNBits``), activations
                    fp32; then convolutions as in ``dynamic-int8`` (``convs=False`` keeps them
                    fp32: MatMulNBits has no conv form).

Needs ``onnx`` and (for int4) ``onnx-ir`` + ``ml_dtypes``: ``pip install edged[quantize]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import BackendUnavailable, BadRequest, ModelLoadError, ModelNotFound
from edged.graph.fuse_attention import fuse_unet_attention

SCHEMES = ("dynamic-int8", "qdq-int8", "int4-weights")
# ONNX protobufs stop at 2 GB: above this, tensors go to a side file (model.onnx.data).
_EXTERNAL_ABOVE = 1 << 30
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
_DTYPES["tensor(int32)"] = np.int32
_TIMESTEPS = np.array([999, 759, 499, 259])


@dataclass(frozen=True)
class QuantizeReport:
    src: Path
    dst: Path
    scheme: str
    src_bytes: int
    dst_bytes: int
    seconds: float
    op_counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "src": str(self.src),
            "dst": str(self.dst),
            "scheme": self.scheme,
            "src_bytes": self.src_bytes,
            "dst_bytes": self.dst_bytes,
            "ratio": round(self.dst_bytes / max(1, self.src_bytes), 3),
            "seconds": round(self.seconds, 1),
            "op_counts": self.op_counts,
        }


def model_bytes(path: Path) -> int:
    """The .onnx file plus its external-data files."""
    total = path.stat().st_size
    for side in path.parent.glob(f"{path.name}.data*"):
        total += side.stat().st_size
    return total


def _quant_modules() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # onnx missing: quantization imports it at module level
        raise BackendUnavailable(
            f"quantization needs onnx: pip install edged[quantize] ({exc})"
        ) from exc
    return quantization


def random_feeds(path: Path, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration feeds drawn from N(0, 1) in each input's shape (dynamic dims -> 1 / 8)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        one: dict[str, np.ndarray] = {}
        for arg in sess.get_inputs():
            dims = [
                d if isinstance(d, int) else (1 if i == 0 else 8) for i, d in enumerate(arg.shape)
            ]
            dtype = _DTYPES.get(arg.type, np.float32)
            if arg.name == "timestep":  # diffusion UNets: the timesteps 1-4 step samplers use
                one[arg.name] = rng.choice(_TIMESTEPS, size=dims).astype(dtype)
            elif np.issubdtype(dtype, np.integer):
                one[arg.name] = rng.integers(0, 1000, size=dims).astype(dtype)
            else:
                one[arg.name] = rng.standard_normal(dims).astype(dtype)
        feeds.append(one)
    return feeds


class _Reader:
    """CalibrationDataReader over a list of feeds (duck-typed: get_next/rewind)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


@contextmanager
def quiet_quantizer(logger: str = "") -> Iterator[None]:
    """Quantizers print progress to stdout (which would corrupt ``--json``) and log below
    errors: onnxruntime's on the root logger (``""``), NNCF's on ``"nncf"``. Keep both out."""
    quieted = logging.getLogger(logger)
    level = quieted.level
    quieted.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        quieted.setLevel(level)


def _dir_takes_files(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, not guessed: root ignores mode
    bits, a read-only mount refuses even root)."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".edged-probe-"):
            return True
    except OSError:
        return False


@contextmanager
def writable_source(src: Path) -> Iterator[Path]:
    """``src`` where its directory takes files, else ``src`` seen from a temp dir.

    onnxruntime's quantizers write ``NAME-inferred.onnx`` beside the model for shape inference,
    so a model on a read-only mount (a shared models dir, a board's image) failed. The temp
    dir holds symlinks to ``src`` and its siblings, so external data still resolves.
    """
    if _dir_takes_files(src.parent):
        yield src
        return
    with tempfile.TemporaryDirectory(prefix="edged-quant-src-") as tmp:
        for sibling in src.parent.iterdir():
            (Path(tmp) / sibling.name).symlink_to(sibling.resolve())
        yield Path(tmp) / src.name


def _dynamic(src: Path, dst: Path, external: bool, op_types: Sequence[str]) -> None:
    q = _quant_modules()
    with quiet_quantizer():
        q.quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=list(op_types),
            weight_type=q.QuantType.QUInt8,
            use_external_data_format=external,
            # Fused contrib ops (MultiHeadAttention from the transformers optimizer) defeat ONNX
            # shape inference; their outputs are float, so say so instead of failing.
            extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
        )


def timestep_only_nodes(path: Path, input_name: str = "timestep") -> list[str]:
    """Nodes computing only from ``timestep`` (the sinusoidal time embedding and its MLP).

    Sin/Cos of a quantized phase at t~999 lose whole radians, so static int8 ruins the
    embedding; these few small nodes stay fp32.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    free = {init.name for init in graph.initializer} | {""}
    tainted = {input_name}
    excluded: list[str] = []
    for node in graph.node:
        dynamic = [i for i in node.input if i not in free]
        if not dynamic:
            free.update(node.output)
        elif all(i in tainted for i in dynamic):
            tainted.update(node.output)
            excluded.append(node.name)
    return excluded


def _qdq(
    src: Path, dst: Path, external: bool, feeds: Sequence[dict[str, np.ndarray]] | None
) -> None:
    q = _quant_modules()
    reader = _Reader(feeds if feeds is not None else random_feeds(src, 8))
    with tempfile.TemporaryDirectory(prefix="edged-calib-") as tmp:
        q.quantize_static(
            src,
            dst,
            reader,
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=timestep_only_nodes(src),
            use_external_data_format=external,
            calibration_cache_path=Path(tmp) / "calib",
            extra_options={"ActivationSymmetric": True},
        )


def _int4(src: Path, dst: Path, external: bool, block_size: int) -> None:
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise BackendUnavailable(
            f"int4 needs onnx-ir and ml_dtypes: pip install edged[quantize] ({exc})"
        ) from exc
    # The quantizer logs every node at INFO; keep a 3000-node UNet's log readable.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(src), load_external_data=True)
    quant = MatMulNBitsQuantizer(
        model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=4
    )
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=external)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def quantize_file(
    src: Path,
    dst: Path,
    scheme: str,
    *,
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
    block_size: int = 32,
    convs: bool = True,
) -> QuantizeReport:
    """Quantize one .onnx file to ``dst`` (written atomically: tmp dir, then rename)."""
    if scheme not in SCHEMES:
        raise BadRequest(f"unknown scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    if not src.is_file():
        raise ModelNotFound(f"{src} does not exist")
    start = time.monotonic()
    external = model_bytes(src) > _EXTERNAL_ABOVE
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".quant-", dir=dst.parent) as tmp,
        writable_source(src) as readable,
    ):
        out = Path(tmp) / dst.name
        try:
            if scheme == "dynamic-int8":
                ops = ["MatMul", "Gemm", "Conv"] if convs else ["MatMul", "Gemm"]
                _dynamic(readable, out, external, ops)
            elif scheme == "qdq-int8":
                _qdq(readable, out, external, calibration)
            elif convs:
                stage = Path(tmp) / "stage" / "model.onnx"
                stage.parent.mkdir()
                _int4(readable, stage, external, block_size)
                _dynamic(stage, out, external, ["Conv"])
                shutil.rmtree(stage.parent)
            else:
                _int4(readable, out, external, block_size)
        except (BackendUnavailable, BadRequest):
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot quantize {src.name} with {scheme}: {exc}") from exc
        for produced in Path(tmp).iterdir():
            if produced.name == dst.name or produced.name.startswith(f"{dst.name}.data"):
                os.replace(produced, dst.parent / produced.name)
    return QuantizeReport(
        src,
        dst,
        scheme,
        model_bytes(src),
        model_bytes(dst),
        time.monotonic() - start,
        op_counts(dst),
    )


def quantize_model_dir(
    src: Path,
    dst: Path,
    scheme: str,
    components: Sequence[str] = ("unet",),
    *,
    fuse_attention: bool = False,
    **kwargs: Any,
) -> QuantizeReport:
    """A diffusers-layout dir: quantize ``components``; copy the others unchanged.

    ``fuse_attention`` first rewrites the UNet's attention to onnxruntime's flash-attention
    ``MultiHeadAttention`` (edged/graph/fuse_attention.py: lower peak memory, ~4x faster steps).

    The report is the UNet's (or the first component's); each quantized component gets a
    ``QUANTIZED`` marker naming the scheme.
    """
    if dst.resolve() == src.resolve():
        raise BadRequest("--out must differ from the source model dir")
    missing = [c for c in components if not (src / c / "model.onnx").is_file()]
    if missing:
        raise ModelNotFound(f"{src}: no {', '.join(f'{c}/model.onnx' for c in missing)}")
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name in components or (dst / item.name).exists():
            continue
        # Copies, not links: the output is copied to a board on its own (rsync -a, scp -r),
        # and the source dir may be deleted; a symlink would then point at nothing.
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
    reports = []
    for component in components:
        out = dst / component / "model.onnx"
        source = src / component / "model.onnx"
        with tempfile.TemporaryDirectory(prefix=".fuse-", dir=dst) as tmp:
            if component == "unet" and fuse_attention:
                # Fused first, then quantized: the fusion needs the fp32 pattern it matches.
                fused = Path(tmp) / "model.onnx"
                fuse_unet_attention(source, fused)
                source = fused
            reports.append(quantize_file(source, out, scheme, **kwargs))
        (out.parent / "QUANTIZED").write_text(f"{scheme}\n", "utf-8")
    return reports[0]


def quantize(src: Path, dst: Path | None, scheme: str, **kwargs: Any) -> QuantizeReport:
    """File or model dir; default ``dst`` is next to ``src`` with the scheme in the name."""
    if src.is_dir():
        if not (src / "unet" / "model.onnx").is_file():
            raise ModelNotFound(
                f"{src}: a directory must be a diffusers ONNX model dir (unet/model.onnx)"
            )
        return quantize_model_dir(
            src, dst or src.with_name(f"{src.name}-{scheme}"), scheme, **kwargs
        )
    target = dst or src.with_name(f"{src.stem}.{scheme}.onnx")
    if target.is_dir():
        target = target / src.name
    return quantize_file(src, target, scheme, **kwargs)
