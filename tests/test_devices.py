"""CPU discovery: the parsers on known /proc/cpuinfo and sysctl texts, and the live machine."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import psutil
import pytest

from hetrix.devices import AcceleratorInfo, CpuInfo, Device, detect_cpu, list_devices
from hetrix.devices import cpu as cpu_mod

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512cd \
avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2
"""

ZEN2 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7742 64-Core Processor
flags\t\t: fpu sse2 sse4_2 avx f16c fma avx2 sha_ni
"""

GRAVITON3 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 asimddp sha512 sve asimdfhm svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd40
"""

APPLE_M2_SYSCTL = """\
machdep.cpu.brand_string: Apple M2
hw.optional.neon: 1
hw.optional.neon_fp16: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_BF16: 1
hw.optional.arm.FEAT_SME: 0
hw.optional.avx2_0: 0
"""


def test_parse_cpuinfo_x86_reads_the_first_block() -> None:
    facts = cpu_mod.parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    assert facts.name == "Intel(R) Xeon(R) Platinum 8480+"
    assert facts.vendor == "Intel"
    assert facts.source == "/proc/cpuinfo"
    assert facts.features == (
        "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512dq", "avx512cd",
        "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
        "amx_bf16", "amx_int8",
    )


def test_parse_cpuinfo_x86_without_avx512() -> None:
    facts = cpu_mod.parse_cpuinfo(ZEN2, "x86_64")
    assert facts.vendor == "AMD"
    assert facts.features == ("sse4_2", "avx", "f16c", "fma", "avx2")


def test_parse_cpuinfo_arm_features_and_name() -> None:
    facts = cpu_mod.parse_cpuinfo(GRAVITON3, "aarch64")
    assert facts.features == ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve")
    assert facts.vendor == "Arm"
    assert "0xd40" in facts.name


def test_parse_cpuinfo_aarch64_always_has_neon() -> None:
    text = "processor\t: 0\nFeatures\t: fp evtstrm\nCPU implementer\t: 0x61\n"
    facts = cpu_mod.parse_cpuinfo(text, "aarch64")
    assert facts.features == ("neon",)
    assert facts.vendor == "Apple"


def test_parse_sysctl_apple() -> None:
    facts = cpu_mod.parse_sysctl(APPLE_M2_SYSCTL)
    assert facts.name == "Apple M2"
    assert facts.vendor == "Apple"
    assert facts.features == ("neon", "fp16", "dotprod", "i8mm", "bf16")


def test_features_from_numpy_table() -> None:
    table = {"AVX2": True, "AVX512F": True, "AVX512BW": False, "FMA3": True, "ASIMD": False}
    assert cpu_mod.features_from_numpy(table) == ("fma", "avx2", "avx512f")


def test_parse_numpy_config() -> None:
    config = {
        "Build Dependencies": {"blas": {"name": "openblas", "version": "0.3.27",
                                        "openblas configuration": "USE64BITINT\n  Haswell"}},
        "SIMD Extensions": {"baseline": ["SSE"], "found": ["AVX2", "AVX512F"]},
    }
    blas, simd = cpu_mod.parse_numpy_config(config)
    assert (blas.name, blas.version, blas.config) == ("openblas", "0.3.27", "USE64BITINT Haswell")
    assert simd == ("AVX2", "AVX512F")
    assert cpu_mod.parse_numpy_config({}) == (cpu_mod.BlasInfo(), ())


def test_detect_cpu_matches_the_machine() -> None:
    info = detect_cpu()
    assert isinstance(info, CpuInfo) and isinstance(info, Device)
    assert info.kind == "cpu" and info.id == "cpu:0"
    assert info.logical_cores == (psutil.cpu_count() or os.cpu_count())
    assert 1 <= info.usable_cores <= info.logical_cores
    assert info.memory_bytes == psutil.virtual_memory().total
    assert info.available_memory_bytes is not None
    assert 0 < info.available_memory_bytes <= info.memory_bytes
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    assert info.blas.name == blas["name"]


def test_detect_cpu_features_agree_with_numpy_dispatch() -> None:
    """NumPy probes the CPU with cpuid/hwcaps itself: every feature it sees, we must see."""
    numpy_view = cpu_mod.features_from_numpy(cpu_mod._numpy_cpu_features())
    info = detect_cpu()
    assert set(numpy_view) <= set(info.features)
    assert all(info.has(f.upper()) for f in numpy_view)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_detect_cpu_reads_proc_cpuinfo() -> None:
    with open("/proc/cpuinfo") as handle:
        text = handle.read()
    info = detect_cpu()
    assert info.feature_source == "/proc/cpuinfo"
    if "model name" in text:
        first = next(line for line in text.splitlines() if line.startswith("model name"))
        assert info.name == first.split(":", 1)[1].strip()
    if " avx2 " in f" {text} ".replace("\n", " "):
        assert info.has("avx2")


def test_list_devices_is_json_ready() -> None:
    devices = list_devices()
    assert isinstance(devices[0], CpuInfo)
    data = json.loads(json.dumps([d.to_dict() for d in devices]))
    assert data[0]["kind"] == "cpu"
    assert data[0]["id"] == "cpu:0"
    assert data[0]["features"] == list(devices[0].features)
    assert data[0]["blas"]["name"] == devices[0].blas.name


def test_list_devices_cpu_first_then_accelerators() -> None:
    devices = list_devices()
    assert devices[0].kind == "cpu"
    assert all(isinstance(d, AcceleratorInfo) for d in devices[1:])
    assert len({d.id for d in devices}) == len(devices)
    only_cpu = list_devices(accelerators=False)
    assert [d.kind for d in only_cpu] == ["cpu"]


def test_accelerator_info_is_a_json_ready_device() -> None:
    info = AcceleratorInfo(kind="rocm", name="AMD Instinct MI250X", memory_bytes=64 << 30,
                           index=1, library_device="cuda:1", compute_capability="gfx90a",
                           details={"uuid": "GPU-1"})
    assert isinstance(info, Device) and info.id == "rocm:1"
    data = json.loads(json.dumps(info.to_dict()))
    assert data["library_device"] == "cuda:1" and data["details"] == {"uuid": "GPU-1"}
