"""Which training condition the generator understood, per checkpoint.

For the zheng2017 and kang2018 test cells, each cell's generation request (one phrasing drawn per
cell, as in `generation_benchmark.py`) is read by the signal token; the share mapped to the condition
asked for is printed for our held-out (valid) phrasings and for the unseen shared templates, with
the most common confusions. No cells are sampled, so this takes minutes, not the benchmark's tens.

    python benchmarks/generator_understood.py default runs/gen_sp4608
"""

from __future__ import annotations

import sys
from collections import Counter

from instructcell_agent.api import load_model
from instructcell_agent.core_model.datasets import load_catalog, shared_root
from instructcell_agent.core_model.generation.evaluate import load_real, requests_for
from instructcell_agent.core_model.generation.generator import load_generator
from instructcell_agent.core_model.generation.signal import condition_vectors
from instructcell_agent.core_model.instructions import load_bank, load_instruction_file

DATASETS = ("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb")
TEMPLATES = "benchmarks/instructcell/test_templates/conditional_pseudo_cell_generation/templates.json"


def main(checkpoints: list[str]) -> None:
    phrasings = {"own": list(load_bank("generation").valid),
                 "unseen": load_instruction_file(shared_root() / TEMPLATES)}
    specs = {s.name: s for s in load_catalog()}
    for ck in checkpoints:
        loaded = load_model(None if ck == "default" else ck, precision="float32")  # the rates on record are float32
        gen = load_generator(loaded)
        for name in DATASETS:
            spec = specs[name]
            real = load_real(spec.path, spec.split_path, spec.label_key, "test", vocab=loaded.vocab)
            intended = [gen.table.resolve(c.cell_type, c.species, c.tissue, c.condition, c.sequencing_method).record
                        for c in real.conditions]
            for tag, bank in phrasings.items():
                texts, _ = requests_for(gen, real.conditions, bank, 0)
                nearest = gen.nearest(condition_vectors(loaded.model, gen.head, texts, lm_adapters=gen.lm_adapters))
                rate = sum(n == i for n, i in zip(nearest, intended)) / len(intended)
                confused = Counter((c.label(), gen.table.records[n].condition.label())
                                   for c, n, i in zip(real.conditions, nearest, intended) if n != i)
                print(ck, name, tag, round(rate, 3), confused.most_common(5), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["default"])
