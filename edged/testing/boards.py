"""Test helpers: boards: fake sysfs/proc/dev trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

_X86_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c lm"
_BOARDS: dict[str, dict[str, Any]] = {
    "raspberry-pi-4": {
        "cpu": ("arm", "0xd08", 4, "fp asimd evtstrm crc32 cpuid"),
        "model": "Raspberry Pi 4 Model B Rev 1.4",
        "compatible": ["raspberrypi,4-model-b", "brcm,bcm2711"],
        "video": [("video10", "bcm2835-codec-decode", "0"), ("video0", "unicam", "0")],
    },
    "raspberry-pi-5": {
        "cpu": (
            "arm",
            "0xd0b",
            4,
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        ),
        "model": "Raspberry Pi 5 Model B Rev 1.0",
        "compatible": ["raspberrypi,5-model-b", "brcm,bcm2712"],
        "video": [
            ("video0", "HD USB Camera: HD USB Camera", "0"),
            ("video1", "HD USB Camera: HD USB Camera", "1"),
            ("video19", "pispbe-input", "0"),
        ],
    },
    "qualcomm-qcs": {
        "cpu": (
            "arm",
            "0xd4e",
            8,
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16 sve sve2",
        ),
        "model": "Qualcomm Technologies, Inc. QCS6490 RB3gen2",
        "compatible": ["qcom,qcs6490-rb3gen2", "qcom,qcm6490"],
        "soc": {"machine": "QCS6490", "family": "Snapdragon", "soc_id": "497"},
        "dev": ["fastrpc-cdsp", "fastrpc-adsp", "dma_heap/system"],
    },
    "intel-igpu-npu": {
        "cpu": ("x86", "Intel(R) Core(TM) Ultra 7 155H", 4, _X86_FLAGS + " avx_vnni"),
        "dev": ["dri/renderD128", "accel/accel0"],
        "sysfs_vendor": {"class/drm/renderD128": "0x8086", "class/accel/accel0": "0x8086"},
    },
    "generic-x86": {"cpu": ("x86", "AMD Ryzen 5 5600G", 4, _X86_FLAGS)},
    "generic-arm64": {
        "cpu": ("arm", "0xd05", 4, "fp asimd evtstrm crc32 cpuid"),
        "model": "Radxa ROCK 5B",
        "compatible": ["radxa,rock-5b", "rockchip,rk3588"],
    },
    "unknown-riscv": {
        "cpu": ("riscv", "sifive,u74-mc", 4, "rv64imafdc"),
        "arch": "riscv64",
        "model": "StarFive VisionFive 2 v1.3B",
    },
}


def _cpuinfo_text(family: str, ident: str, cores: int, flags: str) -> str:
    blocks = []
    for i in range(cores):
        if family == "x86":
            blocks.append(
                f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {ident}\nflags\t\t: {flags}\n"
            )
        elif family == "arm":
            blocks.append(
                f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {flags}\n"
                f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: {ident}\n"
            )
        else:
            blocks.append(
                f"processor\t: {i}\nhart\t\t: {i}\nisa\t\t: {flags}\nuarch\t\t: {ident}\n"
            )
    return "\n".join(blocks) + "\n"


_DEVICE_TREE_DIRS = {"proc": "proc/device-tree", "sys": "sys/firmware/devicetree/base"}
DeviceTree = Literal["proc", "sys", "cpuinfo"]


def make_board(
    root: Path,
    kind: str,
    *,
    cgroup_max: int | str | None = None,
    mem_total_kb: int = 4_000_000,
    device_tree: DeviceTree = "proc",
    kernel_arch: str | None = None,
) -> Path:
    """Write a fake /proc, /sys and /dev tree for a known board kind under ``root``.

    ``cgroup_max`` writes a cgroup v2 ``memory.max`` for the process's cgroup (as under
    systemd's ``MemoryMax=``). Device nodes are plain files: the probe only looks at names.
    ``device_tree`` says where the board's model shows: ``/proc/device-tree`` (a board),
    ``/sys/firmware/devicetree/base`` only (a chroot or container without the /proc link), or
    only the ``Model`` line a Raspberry Pi kernel appends to /proc/cpuinfo. ``kernel_arch``
    writes /proc/sys/kernel/arch (the host's ``x86_64`` in a qemu-user root).
    """
    spec = _BOARDS[kind]
    family, ident, cores, flags = spec["cpu"]
    cpuinfo = _cpuinfo_text(family, ident, cores, flags)
    if device_tree == "cpuinfo" and "model" in spec:
        cpuinfo += f"Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: {spec['model']}\n"
    files: dict[str, str] = {
        "proc/cpuinfo": cpuinfo,
        "proc/meminfo": f"MemTotal:       {mem_total_kb} kB\nMemFree:        1000 kB\n",
    }
    arch = kernel_arch or spec.get("arch")
    if arch:
        files["proc/sys/kernel/arch"] = arch + "\n"
    dt_dir = _DEVICE_TREE_DIRS.get(device_tree)
    if dt_dir and "model" in spec:
        files[f"{dt_dir}/model"] = spec["model"] + "\0"
    if dt_dir and "compatible" in spec:
        files[f"{dt_dir}/compatible"] = "\0".join(spec["compatible"]) + "\0"
    for key, value in spec.get("soc", {}).items():
        files[f"sys/devices/soc0/{key}"] = value + "\n"
    for name, label, index in spec.get("video", []):
        files[f"dev/{name}"] = ""
        files[f"sys/class/video4linux/{name}/name"] = label + "\n"
        files[f"sys/class/video4linux/{name}/index"] = index + "\n"
    for node in spec.get("dev", []):
        files[f"dev/{node}"] = ""
    for sysdir, vendor in spec.get("sysfs_vendor", {}).items():
        files[f"sys/{sysdir}/device/vendor"] = vendor + "\n"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # cgroup v2 under systemd, as with the unit's MemoryMax=
    unit = "/system.slice/edged.service"
    limit = "max" if cgroup_max is None else str(cgroup_max)
    return make_cgroup_tree(root, version=2, cgroup=unit, limits={unit: limit})


BOARD_KINDS = tuple(_BOARDS)
"""Board kinds ``make_board`` knows; each but ``unknown-riscv`` has a shipped profile of its name."""


def make_cgroup_tree(
    root: Path,
    *,
    version: int,
    cgroup: str,
    limits: dict[str, str],
    current: int | None = None,
    mount_root: str = "/",
) -> Path:
    """A fake ``proc/self/{cgroup,mountinfo}`` + cgroup fs under ``root`` for edged.memory.

    ``cgroup`` is the process's cgroup path; ``limits`` maps cgroup paths (``/`` = the
    mount itself) to the limit file's text (``"max"``, ``"1000000000"``); ``mount_root`` is
    the mountinfo root field (a cgroup namespace shows ``/`` with a deeper path hidden).
    """
    if version == 2:
        mount, fstype, opts, line = "sys/fs/cgroup", "cgroup2", "rw", f"0::{cgroup}\n"
        limit_file, current_file = "memory.max", "memory.current"
    else:
        mount, fstype, opts, line = (
            "sys/fs/cgroup/memory",
            "cgroup",
            "rw,memory",
            f"4:memory:{cgroup}\n",
        )
        limit_file, current_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
    info = f"35 31 0:32 {mount_root} /{mount} rw,relatime - {fstype} {fstype} {opts}\n"
    files = {"proc/self/cgroup": line, "proc/self/mountinfo": info}
    for rel, text in limits.items():
        files[f"{mount}/{rel.strip('/')}/{limit_file}".replace("//", "/")] = text + "\n"
    if current is not None:
        files[f"{mount}/{cgroup.strip('/')}/{current_file}".replace("//", "/")] = f"{current}\n"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
