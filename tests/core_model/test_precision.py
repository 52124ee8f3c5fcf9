"""The language model's compute dtype: choice per machine, and what a bfloat16 load changes."""

from __future__ import annotations

import pytest
import torch

from instructcell_agent.core_model import precision
from instructcell_agent.core_model.checkpoint import load_checkpoint

AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n"
ZEN4_CPU = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
OLD_CPU = "flags\t\t: fpu sse2 avx2 fma\n"


def test_fast_bfloat16_is_read_from_the_cpu_flags():
    assert precision.cpu_has_fast_bf16(AMX_CPU)
    assert precision.cpu_has_fast_bf16(ZEN4_CPU)
    assert not precision.cpu_has_fast_bf16(OLD_CPU)
    assert not precision.cpu_has_fast_bf16("")  # no /proc/cpuinfo (macOS, Windows): float32


def test_auto_picks_bfloat16_only_where_it_is_fast(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == torch.bfloat16
    # On a GPU the small LM is launch-bound and bfloat16 measured slower (gpu_throughput.md).
    assert precision.resolve_precision("auto", "cuda") == torch.float32
    assert precision.resolve_precision("bfloat16", "cuda") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == torch.float32
    assert precision.resolve_precision("bfloat16", "cpu") == torch.bfloat16  # asked for: given
    assert precision.resolve_precision("float32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("float16", "cpu")


def test_bfloat16_load_keeps_the_encoder_in_float32_and_the_answers(tiny_checkpoint):
    full = load_checkpoint(tiny_checkpoint, precision="float32")
    half = load_checkpoint(tiny_checkpoint, precision="bfloat16")
    assert half.model.lm_dtype == torch.bfloat16 and full.model.lm_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in half.model.encoder.parameters())
    expr = full.model.normalize(torch.rand(4, len(full.vocab), generator=torch.Generator().manual_seed(1)) * 3)
    out = []
    for loaded in (full, half):
        model = loaded.model
        with torch.no_grad():
            ctx = model.start([model.prefix_text("Type?")], torch.zeros(4, dtype=torch.long))
            out.append(model.score_candidates(ctx, expr, ["alpha", "beta", "gamma", "delta"]))
    assert out[1].dtype == torch.float32
    torch.testing.assert_close(out[1], out[0], atol=0.15, rtol=0.05)
