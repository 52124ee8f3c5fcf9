"""Copy a checkpoint with its LoRA adapters switched off: the language model as its package ships it.

The single-task generation baseline. The generator reads instructions through the cell model's
language model, whose low-rank adapters were trained on the other tasks (annotation and drug
response). Training a generator on this copy (`instructcell train-generator --checkpoint OUT`)
gives the same generator without that multi-task tuning, for the single- vs multi-task rows of
benchmarks/results/generation.md. The adapters are zeroed (B = 0, so each adapted layer is its
base layer exactly), the rest of the checkpoint is kept, and any generator is left out.

    python benchmarks/without_adapters.py --checkpoint instructcell_agent/checkpoints/default --out runs/gen_single
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from instructcell_agent.core_model.checkpoint import load_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.out.resolve() == args.checkpoint.resolve():
        p.error("--out must differ from --checkpoint (the source is never modified)")
    loaded = load_checkpoint(args.checkpoint)
    zeroed = 0
    with torch.no_grad():
        for name, param in loaded.model.lm.named_parameters():
            if ".lora_b" in name:
                param.zero_()
                zeroed += 1
    if zeroed == 0:
        p.error(f"{args.checkpoint} has no LoRA adapters to switch off")
    loaded.info.pop("weights_storage", None)  # this copy is written in float32 again
    loaded.info["derived"] = {"from": str(args.checkpoint), "change": f"{zeroed} LoRA B matrices zeroed",
                              "command": shlex.join(["python", *sys.argv])}
    save_checkpoint(loaded, args.out)
    print(f"wrote {args.out} ({zeroed} adapters off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
