"""``edged models convert lama|migan|mobilesam``: the inpainting and SAM models whose upstream
publishes torch checkpoints only (or, for LaMa, a hosted ONNX edged fetches directly).

Exporting these checkpoints needs the upstream network code (MI-GAN's generator in
``lib/model_zoo/migan_inference.py``, MobileSAM's TinyViT encoder in the ``mobile_sam``
package): the weights are a state dict without an architecture. edged does not vendor that
code, so instead of a half conversion the command says exactly which upstream file, repo and
revision it needs and which command turns it into the file the catalogue expects. Upstream
facts: the research notes recorded in each manifest's ``[recipe]`` (models/*.toml).
"""

from __future__ import annotations

from dataclasses import dataclass

from edged.errors import BadRequest, ModelNotFound

__all__ = ["VISION_MODELS", "refuse_vision"]


@dataclass(frozen=True)
class VisionRecipe:
    catalogue: str
    needs: str
    command: str

    def message(self, checkpoint: str | None) -> str:
        given = f"--checkpoint {checkpoint} is not enough: " if checkpoint else ""
        return (
            f"{given}edged cannot convert this model itself (the weights are a torch state dict; "
            f"exporting it needs the upstream network code, which edged does not ship). "
            f"Needs: {self.needs}. Run: {self.command}"
        )


VISION_MODELS = {
    "migan": VisionRecipe(
        "migan_512",
        "migan_512_places2.pt from the MI-GAN release folder linked in the README of "
        "https://github.com/Picsart-AI-Research/MI-GAN at commit "
        "130db3ea0a04764814702bddcf2e4813654c128c (Google Drive), plus that repo's "
        "lib/model_zoo/migan_inference.py",
        "in a clone of that repo: `python -m scripts.export_inference_model --model-path "
        "models/migan_512_places2.pt --origs-dir examples/places2_512_freeform/images "
        "--masks-dir examples/places2_512_freeform/masks --output-dir out --resolution 512`, "
        "then `edged models add out/<the exported generator>.onnx --name migan_512 --task "
        "inpainting --family migan` (the raw generator, input [1,4,512,512]; not "
        "migan_pipeline_v2.onnx, whose inputs are uint8 image/mask)",
    ),
    "mobilesam": VisionRecipe(
        "mobilesam",
        "weights/mobile_sam.pt from https://github.com/ChaoningZhang/MobileSAM (decoder export "
        "script scripts/export_onnx_model.py at commit 20a7993471a009f99bfcccdca7d61ff4051d1f3b;"
        " the TinyViT encoder comes from that repo's mobile_sam package)",
        "the decoder needs no conversion: `edged models fetch mobilesam_decoder`; for the "
        "encoder, in a clone with `pip install -e .`: torch.onnx.export of "
        "`mobile_sam.sam_model_registry['vit_t'](checkpoint='weights/mobile_sam.pt')"
        ".image_encoder` with input `image` [1,3,1024,1024] (already normalised) and output "
        "`image_embeddings`, then `edged models add mobilesam_encoder.onnx --task segmentation "
        "--family mobilesam-encoder`",
    ),
}
FETCHED = {
    "lama": (
        "lama_dilated",
        "LaMa needs no conversion: the Qualcomm AI Hub ONNX export is pinned in the catalogue; "
        "run `edged models fetch lama_dilated` (hf://qualcomm/LaMa-Dilated@"
        "455b79d9b74698e1ea401e92e6fb18023aabb4a3/LaMa-Dilated.onnx, sha256 checked)",
    ),
}


def refuse_vision(name: str, checkpoint: str | None) -> BadRequest | ModelNotFound:
    """The one-line error `edged models convert NAME` answers for a torch-only model."""
    if name in FETCHED:
        return BadRequest(FETCHED[name][1])
    recipe = VISION_MODELS[name]
    return ModelNotFound(f"{name} ({recipe.catalogue}): {recipe.message(checkpoint)}")
