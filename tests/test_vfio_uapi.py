"""host/vfio_uapi.py against the kernel's own headers: every struct size, field offset and ioctl number.

The Python ABI is written by hand (no compiled extension), so this test is what makes it trustworthy: it
generates a C program from the Python tables, compiles it with gcc against ``linux/vfio.h`` and
``linux/iommufd.h`` and compares what the C compiler computes with what ctypes computes.

Headers: the system's if they are new enough to define the IOMMUFD cdev interface (Linux >= 6.6), otherwise
Debian's ``linux-libc-dev`` from bookworm-backports, downloaded once and unpacked into the user cache (no
system change).  The test is skipped only when there is no C compiler or no way to obtain the headers.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from host import vfio_uapi as uapi

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "virtio-fpga" / "headers"


def _headers_complete(include: Path) -> bool:
    vfio_h = include / "linux" / "vfio.h"
    iommufd_h = include / "linux" / "iommufd.h"
    return (
        vfio_h.is_file()
        and iommufd_h.is_file()
        and "VFIO_DEVICE_BIND_IOMMUFD" in vfio_h.read_text()
        and "IOMMU_IOAS_MAP" in iommufd_h.read_text()
    )


def _include_dir() -> Path:
    """An include directory whose linux/ headers define everything host.vfio_uapi mirrors."""
    system = Path("/usr/include")
    if _headers_complete(system):
        return system
    unpacked = CACHE / "root" / "usr" / "include"
    if _headers_complete(unpacked):
        return unpacked
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("system linux/vfio.h predates IOMMUFD and apt-get is not available to fetch newer headers")
    CACHE.mkdir(parents=True, exist_ok=True)
    for release in ("bookworm-backports", None):
        cmd = ["apt-get", "download", "linux-libc-dev" + (f"/{release}" if release else "")]
        if subprocess.run(cmd, cwd=CACHE, capture_output=True, text=True).returncode == 0:
            break
    debs = sorted(CACHE.glob("linux-libc-dev_*.deb"))
    if not debs:
        pytest.skip("could not download linux-libc-dev (no network or no apt source) for linux/vfio.h")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(CACHE / "root")], check=True)
    if not _headers_complete(unpacked):
        pytest.skip(f"{debs[-1].name} does not define the IOMMUFD cdev interface")
    return unpacked


@pytest.fixture(scope="module")
def kernel_abi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """``{"sizeof:S": n, "offsetof:S.f": n, "const:NAME": v}`` as the C compiler sees the kernel headers."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot compile the header probe")
    include = _include_dir()
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vfio.h>", "#include <linux/iommufd.h>"]
    lines.append("int main(void) {")
    for name, cls in uapi.STRUCTS.items():
        lines.append(f'  printf("sizeof:{name} %zu\\n", sizeof(struct {name}));')
        for field_name, *_ in cls._fields_:
            c_field = uapi.C_FIELD_NAMES.get((name, field_name), field_name)
            lines.append(f'  printf("offsetof:{name}.{field_name} %zu\\n", offsetof(struct {name}, {c_field}));')
    for name in uapi.CONSTANTS:
        lines.append(f'  printf("const:{name} %llu\\n", (unsigned long long)({name}));')
    for member in uapi.VfioPciRegion:
        c_name = f"VFIO_PCI_{member.name}_REGION_INDEX"
        lines.append(f'  printf("const:{c_name} %llu\\n", (unsigned long long)({c_name}));')
    for member in uapi.VfioPciIrq:
        c_name = f"VFIO_PCI_{member.name}_IRQ_INDEX"
        lines.append(f'  printf("const:{c_name} %llu\\n", (unsigned long long)({c_name}));')
    lines.append("  return 0;\n}")
    workdir = tmp_path_factory.mktemp("vfio_abi")
    source = workdir / "abi.c"
    source.write_text("\n".join(lines) + "\n")
    binary = workdir / "abi"
    compiled = subprocess.run(
        ["gcc", "-std=gnu11", "-Wall", "-Werror", f"-I{include}", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, f"header probe did not compile against {include}:\n{compiled.stderr}"
    output = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in (line.split() for line in output.splitlines())}


@pytest.mark.parametrize("name", sorted(uapi.STRUCTS))
def test_struct_layout_matches_header(kernel_abi: dict[str, int], name: str) -> None:
    cls = uapi.STRUCTS[name]
    assert ctypes.sizeof(cls) == kernel_abi[f"sizeof:{name}"], f"sizeof(struct {name})"
    for field_name, *_ in cls._fields_:
        assert getattr(cls, field_name).offset == kernel_abi[f"offsetof:{name}.{field_name}"], f"{name}.{field_name}"


def test_constants_match_header(kernel_abi: dict[str, int]) -> None:
    mismatches = {
        name: (value, kernel_abi[f"const:{name}"])
        for name, value in uapi.CONSTANTS.items()
        if kernel_abi[f"const:{name}"] != value
    }
    assert not mismatches, f"(ours, kernel's): {mismatches}"
    assert len(uapi.CONSTANTS) > 60  # the table really was collected (a typo in the filter would empty it)


def test_pci_indexes_match_header(kernel_abi: dict[str, int]) -> None:
    for member in uapi.VfioPciRegion:
        assert member.value == kernel_abi[f"const:VFIO_PCI_{member.name}_REGION_INDEX"], member
    for member in uapi.VfioPciIrq:
        assert member.value == kernel_abi[f"const:VFIO_PCI_{member.name}_IRQ_INDEX"], member


def test_ioctl_encoding_is_plain_io() -> None:
    """VFIO ioctls carry no size bits: MAP_DMA is ';' << 8 | 113 (a value every VFIO user hard-codes)."""
    assert uapi.VFIO_IOMMU_MAP_DMA == 0x3B71
    assert uapi.VFIO_GET_API_VERSION == 0x3B64
    assert uapi.IOMMU_IOAS_MAP == 0x3B85
