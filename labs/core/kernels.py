"""The same bits on every Intel CPU generation: pin the CPU kernels' code paths before torch loads.

PyTorch's vectorized kernels (ATen), MKL and oneDNN each pick a code path by CPU generation on first use
(AVX2; AVX-512; AVX-512 with AMX), and the paths round differently: the same training on two machines gave
different weights, and a headline metric moved with them. Pinned to their AVX2 paths, Intel CPUs of every
generation compute the same bits, for somewhat more time on newer ones. MKL honours its pin on Intel CPUs
only, so AMD and Intel still differ (README, Reproducibility); the run block of every metrics file records
the CPU and what was in force. `LAB_FAST_KERNELS=1` leaves each library its own choice: faster, and exact
only against runs on the same CPU generation.

No library offers one switch for all three, so this module sets their documented variables itself.
"""

from __future__ import annotations

import os
from pathlib import Path

FAST_SWITCH = "LAB_FAST_KERNELS"
PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorized kernels (elementwise, reductions, softmax)
    # MKL's conditional numerical reproducibility: its AVX2 code path on any CPU that has one; STRICT makes its
    # matrix products (gemm) give the same bits whatever the thread count
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (mkldnn) primitives: no AVX-512 or AMX kernels
}
# The CPU features that decide which paths exist; the test suite prints them, the run block records them.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def pin() -> None:
    """Set the pins unless the fast switch is on; a pin the caller set already is kept (and recorded)."""
    if fast():
        return
    for name, value in PINS.items():
        os.environ.setdefault(name, value)


def fast() -> bool:
    return os.environ.get(FAST_SWITCH, "0") == "1"


def cpu() -> dict:
    """The processor's model name and which of FLAGS it has (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": "unknown", "flags": []}
    first = info.split("\n\n", 1)[0]  # the first processor's block
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    present = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", "unknown"), "flags": [f for f in FLAGS if f in present]}


def in_force() -> dict:
    """What this process computes with: torch's kernel capability, the pins' values, the CPU (for metrics)."""
    import torch

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "pinned": not fast(),
        "pins": {name: os.environ.get(name) for name in PINS},
        "cpu": cpu(),
    }
