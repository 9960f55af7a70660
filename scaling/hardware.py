"""Device detection and peak throughput, for MFU and for a plan's cost.

MFU is measured against the detected device's dense bf16 peak, looked up by GPU name. Where the
name is unknown (or on CPU) the peak is None and MFU is omitted rather than guessed. The planner's
cost estimate (scaling.launch.cost) reads the same table, so an estimate at MFU m and a run that
reports MFU m agree on what the accelerator's peak is.
"""

from __future__ import annotations

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets. More
# specific names come first: the first substring that matches wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("A6000", 155e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def peak_entry(device_name: str | None) -> tuple[str, float] | None:
    """The table's (name, dense bf16 FLOP/s) for a device name such as "NVIDIA H100 80GB HBM3" or
    "h100", or None when unknown."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return key, flops
    return None


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None when unknown."""
    entry = peak_entry(device_name)
    return None if entry is None else entry[1]


def known_accelerators() -> list[str]:
    """The names the peak table knows, for error messages."""
    return [key for key, _ in PEAK_BF16_FLOPS]
