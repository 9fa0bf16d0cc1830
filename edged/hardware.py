"""Probe the board: CPU, SoC, accelerators, cameras and memory limits.

``probe(root)`` is a pure function of a filesystem root, so tests hand it fake ``/proc``,
``/sys`` and ``/dev`` trees (``edged.testing.make_board``) and get the same answer a real board
would give. What only a live process can know (onnxruntime providers, OpenVINO devices) comes
from ``probe_runtimes()`` and is never read from the root.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from edged.memory import read_cgroup_memory
from edged.schema import StrictModel

# ISA flags that change which kernels a runtime can use; everything else in cpuinfo is noise.
_ISA_X86 = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
_ISA_ARM = {
    "neon": "neon",
    "asimd": "asimd",
    "fphp": "fp16",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "sve": "sve",
    "sve2": "sve2",
    "i8mm": "i8mm",
    "bf16": "bf16",
}
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2",
    "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3",
    "0xd80": "Cortex-A520",
    "0xd81": "Cortex-A720",
    "0xd82": "Cortex-X4",
    "0x001": "Qualcomm Oryon",
}
# V4L2 nodes that are codecs, ISPs or metadata rather than cameras (sysfs `name` substrings).
_NOT_CAMERAS = (
    "codec",
    "isp",
    "rpivid",
    "hantro",
    "-enc",
    "-dec",
    "scaler",
    "pispbe",
    "unicam-meta",
)

AcceleratorKind = Literal["intel-gpu", "gpu", "intel-npu", "npu", "hexagon", "coral", "hailo"]


class Accelerator(StrictModel):
    """A device node an inference runtime can use."""

    kind: AcceleratorKind = Field(description="What it is.")
    path: str = Field(description="Device node, relative to the probed root.")
    detail: str = Field(default="", description="Vendor id or driver name when known.")


class Camera(StrictModel):
    """A V4L2 capture node."""

    path: str = Field(description="/dev/videoN")
    name: str = Field(description="Driver-reported name from sysfs.")


class RuntimeDevices(StrictModel):
    """What the installed runtimes report (only from a live process)."""

    onnx_providers: list[str] = Field(default_factory=list)
    openvino_devices: list[str] = Field(default_factory=list)
    litert: bool = Field(default=False, description="ai-edge-litert or tflite-runtime importable.")


class Hardware(StrictModel):
    """Everything profile matching needs to know about the board."""

    arch: str = Field(description="x86_64, aarch64, armv7l, ...")
    cpu_model: str = Field(description="Marketing name or core type.")
    cores: int = Field(ge=1, description="Logical CPUs in /proc/cpuinfo.")
    isa: list[str] = Field(default_factory=list, description="Normalised ISA flags that matter.")
    vendor: str | None = Field(
        default=None, description="raspberrypi, qualcomm, rockchip, nvidia, intel, amd."
    )
    board: str | None = Field(default=None, description="/proc/device-tree/model.")
    compatible: list[str] = Field(default_factory=list, description="/proc/device-tree/compatible.")
    soc: dict[str, str] = Field(
        default_factory=dict, description="/sys/devices/soc0 machine/family/soc_id."
    )
    accelerators: list[Accelerator] = Field(default_factory=list)
    cameras: list[Camera] = Field(default_factory=list)
    mem_total_bytes: int | None = Field(default=None, description="MemTotal.")
    cgroup_memory_max: int | None = Field(default=None, description="Tightest cgroup memory limit.")
    runtime: RuntimeDevices | None = Field(default=None, description="Live runtime devices.")


def _read(root: Path, rel: str) -> str | None:
    try:
        # device-tree strings are NUL-terminated (and NUL-separated for `compatible`)
        return (root / rel.lstrip("/")).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def _cpuinfo(root: Path) -> list[dict[str, str]]:
    text = _read(root, "/proc/cpuinfo") or ""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1][key.strip().lower()] = value.strip()
    return [b for b in blocks if b]


def userland_arch() -> str:
    """The architecture of this process's userland, not the kernel's: ``uname -m`` names the
    kernel (``aarch64`` under a 32-bit Raspberry Pi OS on a 64-bit kernel) unless the pointer
    size says the process is 32-bit. Under qemu-user ``uname`` is emulated and names the guest,
    while ``/proc/sys/kernel/arch`` still names the host kernel (x86_64)."""
    machine = platform.machine() or "unknown"
    if struct.calcsize("P") == 4:
        return {"aarch64": "armv7l", "arm64": "armv7l", "x86_64": "i686", "amd64": "i686"}.get(
            machine.lower(), machine
        )
    return machine


def _cpuinfo_arch(first: dict[str, str]) -> str | None:
    """What cpuinfo says: x86 ``flags`` (``lm`` = 64-bit) or ARM ``Features``; an arm64
    kernel shows a 32-bit reader compat hwcaps (``thumb``, ``vfp``) with architecture 8."""
    if "flags" in first:
        return "x86_64" if " lm " in f" {first['flags']} " else "i686"
    if "features" in first:
        features = set(first["features"].split())
        compat = bool(features & {"thumb", "vfp", "half", "vfpv3", "vfpv4"})
        return "aarch64" if first.get("cpu architecture", "") == "8" and not compat else "armv7l"
    return None


def _arch_class(arch: str) -> str:
    """Coarse family + width, so armv6l/armv7l or i586/i686 do not count as contradictions."""
    if arch in ("aarch64", "arm64"):
        return "arm64"
    if arch.startswith("arm"):
        return "arm32"
    if arch in ("x86_64", "amd64"):
        return "x86_64"
    if re.fullmatch(r"i[3-6]86", arch):
        return "x86_32"
    return arch


def _arch(root: Path, blocks: list[dict[str, str]]) -> str:
    # The live root: the userland that will load the wheels and run the kernels is this
    # process's (kernel/arch names the host kernel under qemu-user, and a 64-bit kernel under
    # a 32-bit userland).
    if root.resolve() == Path("/"):
        return userland_arch()
    declared = (_read(root, "/proc/sys/kernel/arch") or "").strip()
    derived = _cpuinfo_arch(blocks[0] if blocks else {})
    if declared and (derived is None or _arch_class(derived) == _arch_class(declared)):
        return declared
    return derived or "unknown"


def _cpu(root: Path) -> tuple[str, str, int, list[str]]:
    blocks = _cpuinfo(root)
    procs = [b for b in blocks if "processor" in b] or blocks
    first = procs[0] if procs else {}
    arch = _arch(root, blocks)
    flags = set((first.get("flags") or first.get("features") or "").split())
    if arch.startswith(("x86", "i6")):
        isa = [f for f in _ISA_X86 if f in flags]
    else:
        isa = sorted({_ISA_ARM[f] for f in flags if f in _ISA_ARM})
        if arch == "aarch64" and "asimd" in isa and "neon" not in isa:
            isa.insert(0, "neon")  # every AArch64 core has Advanced SIMD (NEON)
    # Not the trailer's ``Model`` line on a Raspberry Pi: that names the board (_device_tree).
    model = (
        first.get("model name")
        or _ARM_PARTS.get(first.get("cpu part", ""), first.get("cpu part", ""))
        or "unknown"
    )
    cores = len(procs) if procs else (os.cpu_count() or 1)
    return arch, model, max(1, cores), isa


def _vendor(
    board: str | None, compatible: list[str], soc: dict[str, str], cpu_model: str
) -> str | None:
    text = " ".join([board or "", *compatible, *soc.values()]).lower()
    for key, vendor in (
        ("raspberry", "raspberrypi"),
        ("brcm,bcm27", "raspberrypi"),
        ("qcom", "qualcomm"),
        ("qualcomm", "qualcomm"),
        ("snapdragon", "qualcomm"),
        ("rockchip", "rockchip"),
        ("nvidia", "nvidia"),
        ("tegra", "nvidia"),
    ):
        if key in text:
            return vendor
    lowered = cpu_model.lower()
    if "intel" in lowered:
        return "intel"
    if "amd" in lowered:
        return "amd"
    return None


def _pci_vendor(root: Path, sysfs_dir: str) -> str:
    return (_read(root, f"{sysfs_dir}/device/vendor") or "").strip().lower()


def _accelerators(root: Path) -> list[Accelerator]:
    found: list[Accelerator] = []
    dev = root / "dev"
    for node in sorted(dev.glob("dri/renderD*")):
        vendor = _pci_vendor(root, f"/sys/class/drm/{node.name}")
        kind: AcceleratorKind = "intel-gpu" if vendor == "0x8086" else "gpu"
        found.append(Accelerator(kind=kind, path=f"/dev/dri/{node.name}", detail=vendor))
    for node in sorted(dev.glob("accel/accel*")):
        vendor = _pci_vendor(root, f"/sys/class/accel/{node.name}")
        kind = "intel-npu" if vendor == "0x8086" else "npu"
        found.append(Accelerator(kind=kind, path=f"/dev/accel/{node.name}", detail=vendor))
    patterns: tuple[tuple[str, AcceleratorKind], ...] = (
        ("fastrpc-cdsp*", "hexagon"),
        ("adsprpc-smd", "hexagon"),
        ("apex_*", "coral"),
        ("hailo*", "hailo"),
    )
    for pattern, kind in patterns:
        for node in sorted(dev.glob(pattern)):
            found.append(Accelerator(kind=kind, path=f"/dev/{node.name}"))
    return found


def _cameras(root: Path) -> list[Camera]:
    cams = []
    for node in sorted((root / "dev").glob("video*"), key=lambda p: (len(p.name), p.name)):
        sysfs = f"/sys/class/video4linux/{node.name}"
        name = (_read(root, f"{sysfs}/name") or "").strip()
        index = (_read(root, f"{sysfs}/index") or "0").strip()
        # UVC exposes a metadata node (index 1) per camera; codecs and ISPs are not cameras.
        if index != "0" or any(bad in name.lower() for bad in _NOT_CAMERAS):
            continue
        cams.append(Camera(path=f"/dev/{node.name}", name=name or node.name))
    return cams


def _meminfo(root: Path) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read(root, "/proc/meminfo") or "", re.M)
    return int(match.group(1)) * 1024 if match else None


def cgroup_memory_max(root: Path) -> int | None:
    """Tightest memory limit over the process's cgroup and its ancestors (v1 memory
    controller where mounted, else v2); the one cgroup reader is ``edged.memory``'s."""
    cgroup = read_cgroup_memory(root)
    return cgroup.max if cgroup is not None else None


# /proc/device-tree is a link the kernel makes to this; a chroot, container or qemu-user root
# may have /sys without it (and no device tree at all on x86 hosts).
_DT_DIRS = ("/proc/device-tree", "/sys/firmware/devicetree/base")


def _device_tree(root: Path) -> tuple[str | None, list[str]]:
    """Board model and compatible strings: the device tree where there is one, else the
    ``Model`` line Raspberry Pi kernels add to /proc/cpuinfo (no compatible strings there)."""
    for directory in _DT_DIRS:
        model = (_read(root, f"{directory}/model") or "").strip("\0\n ")
        compat = _read(root, f"{directory}/compatible") or ""
        compatible = [c for c in compat.split("\0") if c.strip()]
        if model or compatible:
            return model or None, compatible
    # Only the trailer after the processor blocks: x86 blocks carry a numeric ``model`` each.
    trailer = next((b for b in _cpuinfo(root)[-1:] if "processor" not in b), {})
    return trailer.get("model") or None, []


def probe(root: str | Path = "/") -> Hardware:
    """Describe the board under ``root`` (``/`` for this machine, a fake tree in tests)."""
    base = Path(root)
    arch, cpu_model, cores, isa = _cpu(base)
    board, compatible = _device_tree(base)
    soc = {
        k: v.strip()
        for k in ("machine", "family", "soc_id")
        if (v := _read(base, f"/sys/devices/soc0/{k}")) and v.strip()
    }
    return Hardware(
        arch=arch,
        cpu_model=cpu_model,
        cores=cores,
        isa=isa,
        vendor=_vendor(board, compatible, soc, cpu_model),
        board=board,
        compatible=compatible,
        soc=soc,
        accelerators=_accelerators(base),
        cameras=_cameras(base),
        mem_total_bytes=_meminfo(base),
        cgroup_memory_max=cgroup_memory_max(base),
    )


def probe_runtimes() -> RuntimeDevices:
    """Ask the installed runtimes what they can use; absent runtimes report nothing."""
    providers: list[str] = []
    devices: list[str] = []
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    devices = openvino_devices()
    # Installed is enough to list LiteRT; importing it would map its libraries into every
    # process (generation never uses it).
    litert = any(_installed(m) for m in ("ai_edge_litert", "tflite_runtime"))
    return RuntimeDevices(onnx_providers=providers, openvino_devices=devices, litert=litert)


def _installed(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


@functools.cache
def openvino_devices() -> list[str]:
    """OpenVINO's devices, asked in a child process (once per process): loading OpenVINO and
    its plugins here would add ~45 MB of RSS to every edged process, measured, whether or
    not it ever compiles a model (a text-to-image worker under a 0.3 GB budget never does)."""
    if not _installed("openvino"):
        return []
    code = "import openvino; print(' '.join(openvino.Core().available_devices))"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []
