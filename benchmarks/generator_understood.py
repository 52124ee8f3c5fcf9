"""Which training condition the generator understood, per checkpoint: own held-out (valid) phrasings
and the unseen shared templates, on the zheng2017 and kang2018 test cells (no sampling, no metrics).

    python benchmarks/generator_understood.py default runs/gen_sp4608
"""
import sys, collections
from instructcell_agent.api import load_model
from instructcell_agent.core_model.datasets import load_catalog, shared_root
from instructcell_agent.core_model.generation.evaluate import load_real, requests_for, understood_rate
from instructcell_agent.core_model.generation.generator import load_generator
from instructcell_agent.core_model.generation.signal import condition_vectors
from instructcell_agent.core_model.instructions import load_bank, load_instruction_file
unseen = load_instruction_file(shared_root() / "benchmarks/instructcell/test_templates/conditional_pseudo_cell_generation/templates.json")
own = list(load_bank("generation").valid)
cat = {s.name: s for s in load_catalog()}
for ck in sys.argv[1:]:
    loaded = load_model(ck) if ck != "default" else load_model()
    gen = load_generator(loaded)
    for name in ("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb"):
        spec = cat[name]
        real = load_real(spec.path, spec.split_path, spec.label_key, "test", vocab=loaded.vocab)
        for tag, ph in (("own", own), ("unseen", unseen)):
            texts, _ = requests_for(gen, real.conditions, ph, 0)
            vec = condition_vectors(loaded.model, gen.head, texts, lm_adapters=gen.lm_adapters)
            near = gen.nearest(vec)
            r = understood_rate(gen, real.conditions, near)
            wrong = collections.Counter()
            for c, n in zip(real.conditions, near):
                want = gen.table.resolve(c.cell_type, c.species, c.tissue, c.condition, c.sequencing_method).record
                if n != want:
                    got = gen.table.records[n].condition
                    wrong[(c.label(), got.label() if hasattr(got, 'label') else str(got))] += 1
            print(ck, name, tag, round(r, 3), wrong.most_common(5), flush=True)
