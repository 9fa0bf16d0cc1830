"""The equality figures of the arm64 job (issue #19): arm64 outputs vs the x86 outputs of the
same commands on the same inputs, plus the profile and gate checks; a table on stdout and
OUT/equality.json. Exit 1 when a figure misses its tolerance or a check fails.

    python .ci/arm64/compare.py OUT SHARED CORE...    (OUT/x86 and OUT/<core> from main_path.sh)

SR: PSNR is on the Y channel (studio range) with a border of 2 cropped, against the Set5 HR
image; the tolerance is on |PSNR(arm, HR) - PSNR(x86, HR)| <= 0.05 dB, and PSNR(arm, x86) is
reported as well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IOU_MIN = 0.999
PSNR_TOL_DB = 0.05
LIVE_PROFILE = {"cortex-a72": "raspberry-pi-4", "cortex-a76": "raspberry-pi-5"}


def _read(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise FileNotFoundError(path)
    return image


def _y(bgr: np.ndarray) -> np.ndarray:
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr_y(a: np.ndarray, b: np.ndarray, border: int = 2) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    ya = _y(a[:h, :w])[border:-border, border:-border]
    yb = _y(b[:h, :w])[border:-border, border:-border]
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ma, mb = a > 127, b > 127
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else int((ma & mb).sum()) / union


def _steps(run: Path) -> list[str]:
    rows = [line.split("\t") for line in (run / "steps.tsv").read_text().splitlines() if line]
    return [f"{name} exited {rc}" for name, rc, _ in rows if rc != "0"]


def compare_core(out: Path, shared: Path, core: str) -> dict[str, Any]:
    x86, arm = out / "x86", out / core
    figures: dict[str, Any] = {"failures": _steps(arm)}
    fails: list[str] = figures["failures"]
    figures["seg_iou"] = {
        n: round(iou(_read(arm / f"seg-{n}.png", 0), _read(x86 / f"seg-{n}.png", 0)), 6)
        for n in ("astronaut", "zidane")
    }
    fails += [f"seg {n} IoU {v} < {IOU_MIN}" for n, v in figures["seg_iou"].items() if v < IOU_MIN]
    sr: dict[str, Any] = {}
    for n in ("baby", "butterfly"):
        hr = _read(shared / "images/set5/HR" / f"{n}.png")
        a, x = _read(arm / f"sr-{n}.png"), _read(x86 / f"sr-{n}.png")
        pa, px = psnr_y(a, hr), psnr_y(x, hr)
        sr[n] = {
            "arm_db": round(pa, 4),
            "x86_db": round(px, 4),
            "diff_db": round(pa - px, 4),
            "arm_vs_x86_db": round(min(psnr_y(a, x), 999.0), 2),
            "max_abs_diff": int(np.abs(a.astype(int) - x.astype(int)).max()),
        }
        if abs(pa - px) > PSNR_TOL_DB:
            fails.append(f"sr {n} PSNR differs by {pa - px:+.4f} dB > {PSNR_TOL_DB}")
    figures["sr"] = sr
    inp = np.abs(_read(arm / "inpaint.png").astype(int) - _read(x86 / "inpaint.png").astype(int))
    figures["inpaint_max_abs_diff"] = int(inp.max())
    gate = {
        k: json.loads((run / "quantize-espcn_x2.json").read_text())["gate"]
        for k, run in (("arm", arm), ("x86", x86))
        if (run / "quantize-espcn_x2.json").is_file()
        and (run / "quantize-espcn_x2.json").stat().st_size
    }
    figures["int8_gate"] = {
        k: {f: g[f] for f in ("passed", "fp32_db", "quant_db", "drop_db")} for k, g in gate.items()
    }
    if not gate.get("arm", {}).get("passed"):
        fails.append("int8 gate (espcn_x2) did not pass on arm64")
    figures["profiles"] = _profiles(arm, core, fails)
    return figures


def _profiles(arm: Path, core: str, fails: list[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, want in (
        ("raspberry-pi-4", "raspberry-pi-4"),
        ("raspberry-pi-5", "raspberry-pi-5"),
        ("live", LIVE_PROFILE.get(core)),
    ):
        path = arm / f"profile-{name}.json"
        if not path.is_file() or not path.stat().st_size:
            fails.append(f"profile {name}: no output")
            continue
        got = json.loads(path.read_text())
        seen[name] = {"arch": got["hardware"]["arch"], "profile": got["profile"]}
        if got["hardware"]["arch"] != "aarch64":
            fails.append(f"profile {name}: arch {got['hardware']['arch']!r}, not 'aarch64'")
        if want and got["profile"] != want:
            fails.append(f"profile {name}: chose {got['profile']!r}, not {want!r}")
    return seen


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        f"{'core':<11} {'selfie IoU (min)':>16} {'SR dB arm-x86 (max |d|)':>24} "
        f"{'SR dB arm vs x86':>17} {'inpaint max|d|':>15} {'int8 drop dB':>13}  result"
    ]
    for core, r in results.items():
        sr = r["sr"].values()
        drop = r["int8_gate"].get("arm", {}).get("drop_db", "-")
        worst = min(s["arm_vs_x86_db"] for s in sr)  # 999 = identical bytes (infinite PSNR)
        vs_x86 = "identical" if worst >= 999 else f"{worst:.2f}"
        lines.append(
            f"{core:<11} {min(r['seg_iou'].values()):>16.6f} "
            f"{max(abs(s['diff_db']) for s in sr):>24.4f} "
            f"{vs_x86:>17} {r['inpaint_max_abs_diff']:>15} "
            f"{drop!s:>13}  {'ok' if not r['failures'] else 'FAIL'}"
        )
    return lines


def main(argv: list[str]) -> int:
    out, shared, cores = Path(argv[0]), Path(argv[1]), argv[2:]
    results: dict[str, dict[str, Any]] = {}
    for core in cores:
        try:
            results[core] = compare_core(out, shared, core)
        except (OSError, KeyError, ValueError) as exc:  # a missing output is a failure, named
            print(f"compare {core}: {type(exc).__name__}: {exc}")
            return 1
    payload = {
        "tolerances": {"seg_iou_min": IOU_MIN, "sr_psnr_diff_db": PSNR_TOL_DB},
        "cores": results,
    }
    (out / "equality.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(table(results)))
    for core, r in results.items():
        for failure in r["failures"]:
            print(f"FAIL {core}: {failure}")
    print(f"written: {out / 'equality.json'}")
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
