"""Which dtype the backbone LM computes in: float32, or bfloat16 where the hardware makes it fast.

bfloat16 keeps float32's exponent range, so the frozen LM's activations never overflow; on CPUs
with AMX or AVX-512 BF16 units its matrix products run about 3x faster than float32. CPUs without
those units convert bfloat16 in software, which usually gains nothing, so "auto" only picks it
where it pays. Measured with the shipped checkpoint on an Intel CPU with those units
(benchmarks/EXPERIMENTS.md, Throughput): 2.0x to 3.5x more cells per second, the same answer for
98.6% to 100% of each set's test cells.

On a GPU "auto" is float32: this 135M-parameter LM reads each cell's few tokens after a memoised
prompt, so a batch is many small kernels and the time goes to launching them (the GPU was busy
for about a tenth of an API call's wall time on an H200), not to arithmetic. There bfloat16 answered
1.4x to 2.4x fewer cells per second than float32 through the Python API at batch 64, and 1.4x to
3.7x fewer with a prompt per cell (its cuDNN attention builds a plan for every new input shape;
with that backend off it only matched float32), and float32 gives the CPU's answers exactly
(benchmarks/results/gpu_throughput.md, gpu_batch_sweep.md).
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
                        help=f"LM compute dtype (default {default}; auto = bfloat16 on a CPU with fast bfloat16 "
                             "units, 2-3x faster there, else float32, GPUs included; float32 = identical "
                             "numbers on every machine)")


def add_device_argument(parser: Any) -> None:
    """`--device` for a CLI subcommand that loads a model: the GPU when there is one, by default."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (default auto: the GPU when torch sees one, else the CPU)")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; a GPU asked for but absent is refused."""
    import torch

    from .errors import DeviceError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for, but torch {torch.__version__} sees no GPU; "
                          "use device 'auto' (the GPU when there is one) or 'cpu'")
    return device


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
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32
