"""Which dtype the backbone LM computes in: float32, or bfloat16 where the hardware makes it fast.

bfloat16 keeps float32's exponent range, so the frozen LM's activations never overflow; on CPUs
with AMX or AVX-512 BF16 units its matrix products run about 3x faster than float32, and on
GPUs it halves memory traffic. CPUs without those units convert bfloat16 in software, which
usually gains nothing, so "auto" only picks it where it pays. Measured with the shipped checkpoint on this project's CPU
(benchmarks/results/annotation.md and scoring_speed.md): 2.0x to 3.5x more cells per second, the
same answer for 98.6% to 100% of each set's test cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "float32", "bfloat16")
_FAST_BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU advertises bfloat16 matrix units (Linux /proc/cpuinfo flags)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        try:
            cpuinfo = path.read_text() if path.exists() else ""
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(_FAST_BF16_CPU_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def add_precision_argument(parser: Any, default: str) -> None:
    """`--precision` for a CLI subcommand (torch is not imported: `--help` stays fast)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help=f"LM compute dtype (default {default}; auto = bfloat16 where the CPU/GPU has fast "
                             "bfloat16 units, 2-3x faster here; float32 = identical numbers on every machine)")


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The LM dtype for `precision` ("auto", "float32", "bfloat16") on `device`."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32
