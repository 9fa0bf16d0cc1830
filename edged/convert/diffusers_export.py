"""Export the components of a diffusers pipeline directory to ONNX, in the layout
``edged.tasks.generation`` reads (docs/generation.md)::

    text_encoder/model.onnx   input_ids -> last_hidden_state (+ hidden_states.N, text_embeds)
    unet/model.onnx (+ .data) sample, timestep, encoder_hidden_states [, timestep_cond |
                              text_embeds, time_ids] -> out_sample
    vae_decoder/model.onnx    latent_sample -> sample;  vae_decoder/config.json scaling_factor

torch.onnx's TorchScript exporter (``dynamo=False``), opset 17: it traces the diffusers and
transformers modules as they are, which matched diffusers' own pipeline image for image
(tools/diffusers_parity.py, tests/test_convert.py). Needs the ``convert`` extra (torch,
diffusers, transformers, onnx); imported only by ``edged models convert`` and the tools.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.errors import BackendUnavailable, ModelLoadError

__all__ = [
    "OPSET",
    "UnetKind",
    "export_onnx",
    "export_text_encoder",
    "export_unet",
    "export_vae_decoder",
    "gather_external_data",
    "unet_kind",
]

OPSET = 17
SPATIAL = frozenset({"sample", "out_sample", "latent_sample"})
INSTALL_HINT = "pip install 'edged[convert]'"
_TOKEN_LENGTH = 77


def require_torch() -> Any:
    """torch, or BackendUnavailable naming the extra to install."""
    try:
        import diffusers  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"converting needs torch, diffusers and transformers: {INSTALL_HINT} ({exc})"
        ) from exc
    return torch


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep the tracer's warnings and the libraries' load chatter (progress bars, "install
    accelerate") off stderr, where the conversion's own progress lines go."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    dynamic: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Trace ``module`` to ``path``; batch (and H/W of latents/images) dynamic by default."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if dynamic is None:
        # Batch: CFG doubles it; height/width: any image size.
        dynamic = {
            n: {0: "batch", 2: "h", 3: "w"} if n in SPATIAL else {0: "batch"}
            for n in [*inputs, *outputs]
        }
    with quiet_libraries(), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    gather_external_data(path)
    return path


def gather_external_data(path: Path) -> None:
    """The TorchScript exporter writes a >2 GB graph's weights as loose tensor files beside
    it: gather them into one ``model.onnx.data`` (what onnxruntime and the tools expect)."""
    import onnx

    keep = {path.name, f"{path.name}.data"}
    loose = [p for p in path.parent.iterdir() if p.is_file() and p.name not in keep]
    if not loose:
        return
    model = onnx.load(str(path), load_external_data=True)
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    for p in loose:
        p.unlink()


# ---------------------------------------------------------------- wrappers (traced modules)


def _modules() -> Any:
    torch = require_torch()

    class Encoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        """CLIP text tower -> (text_embeds?), last_hidden_state, hidden_states.0..N."""

        def __init__(self, model: Any, pooled: bool) -> None:
            super().__init__()
            self.model, self.pooled = model, pooled

        def forward(self, input_ids: Any) -> Any:
            o = self.model(input_ids, output_hidden_states=True)
            head = (o.text_embeds,) if self.pooled else ()
            return (*head, o.last_hidden_state, *o.hidden_states)

    class Unet(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, model: Any, kind: str) -> None:
            super().__init__()
            self.model, self.kind = model, kind

        def forward(self, sample: Any, timestep: Any, ehs: Any, *more: Any) -> Any:
            if self.kind == "lcm":  # the guidance embedding
                return self.model(sample, timestep, ehs, timestep_cond=more[0]).sample
            cond = {"text_embeds": more[0], "time_ids": more[1]} if self.kind == "sdxl" else None
            return self.model(sample, timestep, ehs, added_cond_kwargs=cond).sample

    class Decoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, vae: Any) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample: Any) -> Any:
            return self.vae.decode(latent_sample).sample

    return Encoder, Unet, Decoder


# ---------------------------------------------------------------- components


def export_text_encoder(model: Any, pooled: bool, out: Path) -> Path:
    """``out/model.onnx`` of a transformers CLIP text model (with projection when ``pooled``)."""
    torch = require_torch()
    encoder, _, _ = _modules()
    ids = torch.zeros((1, _TOKEN_LENGTH), dtype=torch.int64)
    layers = model.config.num_hidden_layers
    hidden = [f"hidden_states.{i}" for i in range(layers + 1)]
    outs = (["text_embeds"] if pooled else []) + ["last_hidden_state", *hidden]
    return export_onnx(
        encoder(model.eval(), pooled),
        (ids,),
        out / "model.onnx",
        inputs=["input_ids"],
        outputs=outs,
    )


@dataclass(frozen=True)
class UnetKind:
    """Which extra conditioning inputs the UNet takes (from its config)."""

    kind: str  # "sd", "lcm" (timestep_cond) or "sdxl" (text_embeds, time_ids)
    context: int  # encoder_hidden_states width
    extra: tuple[tuple[str, int], ...] = ()


def unet_kind(config: Any) -> UnetKind:
    """From a diffusers ``UNet2DConditionModel.config``."""
    context = int(config.cross_attention_dim)
    if config.addition_embed_type == "text_time":
        pooled = int(config.projection_class_embeddings_input_dim) - 6 * int(
            config.addition_time_embed_dim
        )
        return UnetKind("sdxl", context, (("text_embeds", pooled), ("time_ids", 6)))
    if config.addition_embed_type is not None:
        raise ModelLoadError(
            f"UNet addition_embed_type {config.addition_embed_type!r} is not a Stable Diffusion "
            "UNet edged runs (SD 1.x/2.x, LCM, SDXL-class)"
        )
    if config.time_cond_proj_dim is not None:
        return UnetKind("lcm", context, (("timestep_cond", int(config.time_cond_proj_dim)),))
    return UnetKind("sd", context)


def export_unet(unet: Any, out: Path) -> tuple[Path, UnetKind]:
    torch = require_torch()
    _, wrapper, _ = _modules()
    kind = unet_kind(unet.config)
    lat = 8
    args: tuple[Any, ...] = (
        torch.randn(1, 4, lat, lat),
        torch.tensor([999.0]),
        torch.randn(1, _TOKEN_LENGTH, kind.context),
    )
    names = ["sample", "timestep", "encoder_hidden_states"]
    for name, width in kind.extra:
        args, names = (*args, torch.randn(1, width)), [*names, name]
    path = export_onnx(
        wrapper(unet.eval(), kind.kind),
        args,
        out / "model.onnx",
        inputs=names,
        outputs=["out_sample"],
    )
    return path, kind


def export_vae_decoder(vae: Any, out: Path) -> Path:
    torch = require_torch()
    _, _, decoder = _modules()
    path = export_onnx(
        decoder(vae.eval()),
        (torch.randn(1, 4, 8, 8),),
        out / "model.onnx",
        inputs=["latent_sample"],
        outputs=["sample"],
    )
    scaling = float(vae.config.scaling_factor)
    (out / "config.json").write_text(json.dumps({"scaling_factor": scaling}), "utf-8")
    return path


# ---------------------------------------------------------------- loading a diffusers dir


def load_component(src: Path, name: str) -> Any:
    """One component of a diffusers dir, fp32, by the class model_index.json names."""
    require_torch()
    import importlib

    index = json.loads((src / "model_index.json").read_text("utf-8"))
    entry = index.get(name)
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
        raise ModelLoadError(f"{src}: model_index.json has no {name} component")
    library, cls_name = entry
    try:
        cls = getattr(importlib.import_module(library), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"{src}: {name} is {library}.{cls_name}, not importable: {exc}"
        ) from exc
    import torch

    try:
        with quiet_libraries():
            return cls.from_pretrained(str(src / name), torch_dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{src / name}: cannot load {cls_name}: {exc}") from exc


def copy_tokenizer(src: Path, dest: Path) -> None:
    """vocab.json + merges.txt (+ the special-token files): what edged's CLIP tokenizer reads.

    transformers 5 may save only ``tokenizer.json``; the BPE vocab and merges are then taken
    from it (the same tables).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    if (dest / "vocab.json").is_file() and (dest / "merges.txt").is_file():
        return
    fast = src / "tokenizer.json"
    if not fast.is_file():
        raise ModelLoadError(f"{src}: no vocab.json + merges.txt or tokenizer.json (CLIP BPE)")
    model = json.loads(fast.read_text("utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (dest / "vocab.json").write_text(json.dumps(model["vocab"]), "utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
