"""Train edged's own embedded x2 super-resolution model (``edged_sr_x2``), reproducibly.

Recipe (the defaults are exactly what the committed model was made with)::

    .venv/bin/pip install -e .[tools]
    .venv/bin/python tools/train_sr.py --out edged/data/models --set5 ../shared/images/set5/HR

* Data: the openly licensed photos that ship inside the scikit-image wheel (CC0 / public
  domain, see ``TRAIN_IMAGES``) plus 0.6x copies. Set5 is the *test* set and is never read
  for training; ``--set5 DIR`` only prints the score afterwards.
* Degradation: ``cv2.resize(..., INTER_CUBIC)`` x1/2 of random 64x64 HR patches (flips,
  rotations); of every 4 candidate patches the one with most gradient energy is kept.
* Model: ESPCN/XLSR-class on the Y channel (full-range YCrCb / 255): conv5x5(1->32) ReLU,
  conv3x3(32->32) ReLU, conv3x3(32->16) ReLU, conv3x3(16->4), plus a linear 5x5 skip conv
  (1->4) initialised to cv2's bicubic x2 phase kernels, then DepthToSpace(2); the residual
  branch starts at zero so step 0 is exactly bicubic. 15,384 parameters; receptive-field
  radius 5 low-resolution pixels; replicate padding at the border, like cv2.resize.
* Training: fixed seeds, ``torch.use_deterministic_algorithms``, one thread (also much
  faster than two on a loaded machine), Adam lr 1e-3 with cosine decay to 1 %, L1 loss,
  batch 16, 1000 steps (about 1 CPU-minute).
* Export: ONNX opset 17, NCHW ``input`` [1,1,H,W] -> ``output`` [1,1,2H,2W] (dynamic H/W),
  plus an int8 QDQ variant from onnxruntime static quantization calibrated on 64 training
  patches. ``--refit`` (off for the committed model) re-solves the linear read-out by least
  squares; ``--init`` continues from an exported ONNX.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SCALE = 2
TRAIN_IMAGES = (
    # name in skimage.data -> licence stated in its docstring
    "astronaut",  # public domain (NASA)
    "brick",  # CC0 (cc0textures)
    "camera",  # CC0 (Lav Varshney)
    "cell",  # CC0
    "chelsea",  # CC0 (Stefan van der Walt)
    "coffee",  # CC0 (Rachel Michetti)
    "coins",  # no known copyright restrictions
    "grass",  # CC0 (cc0textures)
    "gravel",  # CC0 (cc0textures)
    "hubble_deep_field",  # public domain (NASA)
    "immunohistochemistry",  # no known copyright restrictions
    "retina",  # CC0
    "rocket",  # public domain (SpaceX)
    "text",  # public domain
)


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """Full-range Y (as cv2.COLOR_RGB2YCrCb) of an RGB or gray uint8 image, uint8."""
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    rgb = np.ascontiguousarray(rgb[..., :3].astype(np.uint8))
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 0])


def load_training_images() -> list[np.ndarray]:
    import skimage.data

    images = []
    for name in TRAIN_IMAGES:
        y = y_channel(np.asarray(getattr(skimage.data, name)()))
        images.append(y)
        # A downscaled copy adds coarser texture statistics (INTER_AREA: no aliasing).
        small = cv2.resize(y, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
        if min(small.shape) >= 128:
            images.append(small)
    return images


def sample_batch(
    rng: np.random.Generator,
    images: list[np.ndarray],
    batch: int,
    lr_size: int,
    oversample: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Random HR crops (flip/rot augmented) and their INTER_CUBIC x1/2 LR, float32 0..1.

    ``oversample`` > 1 draws that many candidates per slot and keeps the ``batch`` with the
    most gradient energy: flat sky and sensor noise teach an upscaler little, edges a lot.
    """
    if oversample > 1:
        lr, hr = sample_batch(rng, images, batch * oversample, lr_size)
        energy = np.abs(np.diff(hr, axis=2)).mean(axis=(1, 2, 3)) + np.abs(
            np.diff(hr, axis=3)
        ).mean(axis=(1, 2, 3))
        keep = np.argsort(energy)[-batch:]
        return lr[keep], hr[keep]
    hr_size = lr_size * SCALE
    weights = np.array([im.size for im in images], dtype=np.float64)
    picks = rng.choice(len(images), size=batch, p=weights / weights.sum())
    lrs, hrs = [], []
    for i in picks:
        im = images[i]
        y0 = int(rng.integers(0, im.shape[0] - hr_size + 1))
        x0 = int(rng.integers(0, im.shape[1] - hr_size + 1))
        hr = im[y0 : y0 + hr_size, x0 : x0 + hr_size]
        hr = np.rot90(hr, int(rng.integers(0, 4)))
        if rng.integers(0, 2):
            hr = hr[:, ::-1]
        hr = np.ascontiguousarray(hr)
        lr = cv2.resize(hr, (lr_size, lr_size), interpolation=cv2.INTER_CUBIC)
        hrs.append(hr)
        lrs.append(lr)
    to_f = lambda a: np.stack(a)[:, None].astype(np.float32) / 255.0  # noqa: E731
    return to_f(lrs), to_f(hrs)


def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def bicubic_phase_kernels() -> np.ndarray:
    """[4,1,5,5] kernels: channel r*2+s is cv2 INTER_CUBIC x2 output phase (r, s).

    Output pixel 2i+p samples the source at i + p/2 - 0.25 (half-pixel centres), i.e.
    taps i-2..i+1 for p=0 and i-1..i+2 for p=1, offsets -2..+2 in the 5-tap window.
    """
    phase = [
        np.array([_cubic(1.75), _cubic(0.75), _cubic(0.25), _cubic(1.25), 0.0]),
        np.array([0.0, _cubic(1.25), _cubic(0.25), _cubic(0.75), _cubic(1.75)]),
    ]
    kernels = [np.outer(phase[r], phase[s]) for r in range(SCALE) for s in range(SCALE)]
    return np.stack(kernels)[:, None].astype(np.float32)


def build_model(channels: int = 32) -> object:
    import torch
    from torch import nn

    class EdgedSR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = channels
            # Replicate ("edge") padding, as cv2.resize treats the border: zero padding would
            # darken a 2-pixel frame that the model then has to learn to undo.
            pad = {"padding_mode": "replicate"}
            self.body = nn.Sequential(
                nn.Conv2d(1, c, 5, padding=2, **pad),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, **pad),
                nn.ReLU(),
                nn.Conv2d(c, c // 2, 3, padding=1, **pad),
                nn.ReLU(),
                nn.Conv2d(c // 2, SCALE * SCALE, 3, padding=1, **pad),
            )
            # Linear skip initialised to cv2's bicubic x2 (one 5x5 kernel per sub-pixel
            # phase): the network starts at bicubic quality and only learns the residual.
            self.skip = nn.Conv2d(1, SCALE * SCALE, 5, padding=2, bias=False, **pad)
            with torch.no_grad():
                self.skip.weight.copy_(torch.from_numpy(bicubic_phase_kernels()))
                # The residual branch starts silent so step 0 is exactly the bicubic skip.
                last = self.body[-1]
                assert isinstance(last, nn.Conv2d)
                last.weight.zero_()
                assert last.bias is not None
                last.bias.zero_()
            self.shuffle = nn.PixelShuffle(SCALE)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shuffle(self.body(x) + self.skip(x))

    return EdgedSR()


def load_onnx_weights(model: object, path: Path) -> None:
    """Continue from an exported model: its initializers keep the torch parameter names."""
    import onnx
    import torch
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    state = {k: torch.from_numpy(weights[k].copy()) for k in model.state_dict()}  # type: ignore[attr-defined]
    model.load_state_dict(state)  # type: ignore[attr-defined]


def train(args: argparse.Namespace) -> object:
    import torch

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    images = load_training_images()
    model = build_model(args.channels)
    if args.init is not None:
        load_onnx_weights(model, args.init)
    params = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    print(f"training on {len(images)} images, {params} parameters, {args.steps} steps")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)  # type: ignore[attr-defined]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / max(args.steps, 1)))
    )
    start = time.monotonic()
    running = 0.0
    for step in range(1, args.steps + 1):
        lr, hr = sample_batch(rng, images, args.batch, args.patch, args.oversample)
        out = model(torch.from_numpy(lr))  # type: ignore[operator]
        loss_fn = torch.nn.functional.l1_loss if args.loss == "l1" else torch.nn.functional.mse_loss
        loss = loss_fn(out, torch.from_numpy(hr))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % 200 == 0:
            print(
                f"step {step} loss {running / 200:.5f} {time.monotonic() - start:.0f}s", flush=True
            )
            running = 0.0
    model.eval()  # type: ignore[attr-defined]
    return model


def refit_readout(model: object, seed: int, patches: int = 128, ridge: float = 1e-3) -> None:
    """Least-squares refit of the linear read-out (last conv + skip conv) for MSE = PSNR.

    Both are linear in fixed features (the body's penultimate activations and the input), so
    the MSE-optimal weights on training patches are one ridge-regularised normal-equation
    solve: a cheap, exact last step after the noisy L1/Adam steps.
    """
    import torch
    import torch.nn.functional as F

    m: Any = model
    last, channels = m.body[-1], m.body[-1].in_channels
    rng = np.random.default_rng(seed + 2)
    images = load_training_images()
    dims = channels * 9 + 25 + 1
    xtx = torch.zeros(dims, dims, dtype=torch.float64)
    xty = torch.zeros(dims, SCALE * SCALE, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(patches // 16):
            lr_np, hr_np = sample_batch(rng, images, 16, 48)
            lr = torch.from_numpy(lr_np)
            feats = m.body[:-1](lr)
            cols = [
                F.unfold(F.pad(feats, (1, 1, 1, 1), mode="replicate"), 3),
                F.unfold(F.pad(lr, (2, 2, 2, 2), mode="replicate"), 5),
                torch.ones(lr.shape[0], 1, lr.shape[2] * lr.shape[3]),
            ]
            x = torch.cat(cols, dim=1).permute(0, 2, 1).reshape(-1, dims).double()
            y = F.pixel_unshuffle(torch.from_numpy(hr_np), SCALE)
            y = y.permute(0, 2, 3, 1).reshape(-1, SCALE * SCALE).double()
            xtx += x.T @ x
            xty += x.T @ y
        reg = ridge * torch.trace(xtx) / dims * torch.eye(dims, dtype=torch.float64)
        w = torch.linalg.solve(xtx + reg, xty).float()
        last.weight.copy_(w[: channels * 9].T.reshape(SCALE * SCALE, channels, 3, 3))
        m.skip.weight.copy_(w[channels * 9 : channels * 9 + 25].T.reshape(SCALE * SCALE, 1, 5, 5))
        last.bias.copy_(w[-1])


def export_onnx(model: object, path: Path) -> None:
    import torch

    dummy = torch.zeros(1, 1, 32, 32)
    torch.onnx.export(
        model,  # type: ignore[arg-type]
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "height2", 3: "width2"}},
        opset_version=17,
        dynamo=False,
    )
    import onnx

    proto = onnx.load(str(path))
    proto.doc_string = "edged_sr_x2: edged's own x2 Y-channel SR model (Apache-2.0)"
    onnx.save(proto, str(path))


def quantize_int8(fp32: Path, int8: Path, seed: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    rng = np.random.default_rng(seed + 1)
    images = load_training_images()

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            lr, _ = sample_batch(rng, images, 64, 64)
            self.items = iter([{"input": lr[i : i + 1]} for i in range(len(lr))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


def psnr_y_set5(model_path: Path, set5_hr: Path) -> float:
    """Mean Y-PSNR (border SCALE cropped) on Set5 with INTER_CUBIC LR, model on Y only."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    scores = []
    for path in sorted(set5_hr.glob("*.png")):
        hr = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        h, w = (hr.shape[0] // SCALE) * SCALE, (hr.shape[1] // SCALE) * SCALE
        hr = hr[:h, :w]
        lr = cv2.resize(hr, (w // SCALE, h // SCALE), interpolation=cv2.INTER_CUBIC)
        y = y_channel(lr).astype(np.float32)[None, None] / 255.0
        sr = sess.run(None, {"input": y})[0][0, 0]
        # Score like the SR papers (and ../shared/models/README.md): MATLAB rgb2ycbcr's
        # studio-range Y (16..235), i.e. full-range Y scaled by 219/255 and offset by 16.
        sr = np.clip(np.round(sr * 255.0), 0, 255) * (219.0 / 255.0) + 16.0
        ref = y_channel(hr).astype(np.float64) * (219.0 / 255.0) + 16.0
        b = SCALE
        mse = np.mean((sr[b:-b, b:-b] - ref[b:-b, b:-b]) ** 2)
        scores.append(10 * math.log10(255.0**2 / mse))
    return float(np.mean(scores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("edged/data/models"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=32, help="LR patch side")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--oversample", type=int, default=4, help="edge-rich patch picking")
    parser.add_argument("--init", type=Path, default=None, help="start from this ONNX export")
    parser.add_argument("--loss", choices=["l1", "mse"], default="l1")
    parser.add_argument("--refit", action="store_true", help="least-squares read-out refit")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set5", type=Path, default=None, help="Set5 HR dir, to print scores")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = train(args)
    if args.refit:
        refit_readout(model, args.seed)
    fp32 = args.out / "edged_sr_x2.onnx"
    int8 = args.out / "edged_sr_x2_int8.onnx"
    export_onnx(model, fp32)
    quantize_int8(fp32, int8, args.seed)
    for path in (fp32, int8):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path}: {path.stat().st_size} bytes sha256 {digest}")
        if args.set5 is not None:
            print(f"{path.name}: Set5 x2 Y-PSNR {psnr_y_set5(path, args.set5):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
