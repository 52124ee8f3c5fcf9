"""Sample pseudo-cells: instruction -> signal token -> condition vector -> counts."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..checkpoint import LoadedModel
from ..genes import gene_annotation
from ..instructions import placeholders_in
from ..reference import ATYPICAL_BELOW, ATYPICAL_SHARE, AtypicalCellsWarning, atypical_share
from .conditions import (
    Condition,
    ConditionChoiceWarning,
    MisreadConditionWarning,
    Resolution,
    UnseenConditionError,
    compose_instruction,
)
from .generator import Generator, load_generator
from .signal import condition_vectors

log = logging.getLogger(__name__)

# Default phrasings, all of the packaged training bank; the first whose fields the resolved
# condition fills is used, and `compose_instruction` appends the condition text. They name the
# species, tissue and sequencing method because the generator reads only the instruction: with
# the cell type alone ("Generate one {cell_type}.", the default until 2026-12-05) a species or
# tissue the caller gave never reached the prompt, and 7 of the 72 training conditions were read
# as another (human 'beta' as baron2016's mouse cells, and the reverse); naming all three, each
# of the 72 was read as itself (benchmarks/results/generated_types.md).
DEFAULT_TEMPLATES = (
    "Please generate a realistic single-cell expression profile for one {cell_type} from {species} {tissue}, as it "
    "would look when measured with {sequencing_method}. The profile should show the marker genes typical of this "
    "cell type.",
    "Generate one {cell_type} transcriptome conditioned on {species} and {tissue}, matching reference marker "
    "distributions.",
    "Generate one {cell_type}.",
)
OBS_FIELDS = ("cell_type", "species", "tissue", "sequencing_method", "condition")


def sample_counts(loaded: LoadedModel, gen: Generator, instructions: Sequence[str], seed: int = 0,
                  batch_size: int = 512, sparse: bool = False) -> tuple[np.ndarray | sp.csr_matrix, list[int]]:
    """Counts (n, n_genes) for one cell per instruction, and the training condition nearest to
    each instruction's condition vector (a check of what the model understood).

    Parameters
    ----------
    loaded
        The checkpoint whose LM reads the instructions.
    gen
        Its generator.
    instructions
        Rendered instruction texts; repeated texts share one LM pass.
    seed
        Seed of all sampling (same seed and instructions -> same counts).
    batch_size
        Cells decoded at once.
    sparse
        Return float32 CSR, each batch made sparse as it is drawn. Generated cells hold counts on
        about 2% of the genes: for 20,000 cells the dense path peaked at 3.4 GB of numpy memory
        against 0.2 GB, and took 1.8x as long (benchmarks/results/generation_memory.md).

    Returns
    -------
    (np.ndarray or scipy.sparse.csr_matrix, list of int)
        Integer counts (int64, or float32 CSR with `sparse`) and nearest-condition rows.
    """
    vectors = condition_vectors(loaded.model, gen.head, list(instructions), lm_adapters=gen.lm_adapters)
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(0, len(instructions), batch_size):
        part = gen.vae.sample(vectors[i:i + batch_size], rng)
        parts.append(sp.csr_matrix(part.astype(np.float32)) if sparse else part)
    if sparse:
        counts = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, gen.cfg.n_genes), dtype=np.float32)
    else:
        counts = np.vstack(parts) if parts else np.zeros((0, gen.cfg.n_genes), dtype=np.int64)
    return counts, gen.nearest(vectors)


def resolve_request(gen: Generator, cell_type: str, species: str | None, tissue: str | None,
                    condition: str | None, sequencing_method: str | None, allow_unseen: bool) -> Resolution:
    """Check a request against the training conditions: refuse an unseen one unless allowed."""
    if not str(cell_type or "").strip():
        raise ValueError("cell_type is required to generate cells")
    res = gen.table.resolve(cell_type, species, tissue, condition, sequencing_method)
    if res.unseen:
        if not allow_unseen:
            raise UnseenConditionError(res.message)
        log.warning("generating for an unseen condition; the output is an extrapolation: %s", res.message)
    elif res.message:
        log.info("%s", res.message)
    if res.alternatives:
        warnings.warn(res.alternatives, ConditionChoiceWarning, stacklevel=4)
    return res


def generate_cells(loaded: LoadedModel, cell_type: str, n: int, *, species: str | None = None,
                   tissue: str | None = None, condition: str | None = None, sequencing_method: str | None = None,
                   instruction: str | None = None, seed: int = 0, allow_unseen: bool = False) -> ad.AnnData:
    """Generate `n` pseudo-cells of one condition.

    Parameters
    ----------
    loaded
        A checkpoint with a generator.
    cell_type
        The cell type, e.g. ``"CD14+ Monocyte"`` (required).
    n
        Number of cells.
    species, tissue, condition, sequencing_method
        Further conditions; ``condition`` is free text such as ``"IFN-beta stimulated"`` (dataset
        codes such as ``"stim"`` / ``"ctrl"`` are mapped). Fields left out are filled from the
        training conditions of that cell type and recorded in ``obs``; where the type was learned
        in more than one species or tissue, a ``ConditionChoiceWarning`` names the one generated
        and the others (also in ``uns['instructcell_generation']['alternatives']``).
    instruction
        A phrasing with placeholders (``{cell_type}``, ``{condition}``, ...); default: one of
        DEFAULT_TEMPLATES, naming every field of the resolved condition. The generator reads only
        this text: one read as another training condition than the resolved one warns
        (``MisreadConditionWarning``, ``uns[...]['misread']``).
    seed
        Sampling seed.
    allow_unseen
        Generate even when the condition was not seen in training (warns, and marks
        ``obs['unseen_condition']``); by default such a request raises.

    Returns
    -------
    anndata.AnnData
        X: integer counts (float32 CSR) over the checkpoint's gene vocabulary; obs: the
        conditions, the instruction, ``unseen_condition`` and, where the checkpoint keeps reference
        cells, ``typicality`` (core_model/reference.py; NaN for a type without any; most cells
        below -3 warn, ``AtypicalCellsWarning``); uns: provenance.

    Raises
    ------
    UnseenConditionError
        The condition was not seen in training and `allow_unseen` is False.
    CheckpointError
        The checkpoint has no generator.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    gen = load_generator(loaded)
    res = resolve_request(gen, cell_type, species, tissue, condition, sequencing_method, allow_unseen)
    template = instruction or default_template(res.condition)
    text = compose_instruction(template, res.condition)
    counts, nearest = sample_counts(loaded, gen, [text] * int(n), seed, sparse=True)
    provenance = {"checkpoint": str(loaded.path), "seed": int(seed), "instruction_template": template,
                  "resolution": res.message, "alternatives": res.alternatives or None,
                  "learned_from": gen.table.records[res.record].dataset if res.record is not None else None,
                  "generator_created": gen.info.get("created"),
                  "understood_as": gen.table.records[nearest[0]].to_dict() if nearest else None,
                  "misread": misread_note(gen, res, nearest[0]) if nearest else None}
    if provenance["misread"]:
        warnings.warn(provenance["misread"], MisreadConditionWarning, stacklevel=3)
    adata = to_anndata(counts, loaded.vocab, [res.condition] * int(n), [text] * int(n), res.unseen, provenance)
    if loaded.reference is not None:
        # How alike each cell is to the training cells of the type asked for, on the scale real
        # cells have: generated kang2018 / zheng2017 test-cell look-alikes scored much as the real
        # test cells do (medians +0.02 / +0.06 against -0.17 / +0.06; atypical_cells.md). Read on
        # the genes of the set the type was learned from, as a file of that set would be read (a
        # cell of wang2016's 219-gene panel is not compared over the other 10,898).
        genes = loaded.reference.measured.get(provenance["learned_from"], np.arange(len(loaded.vocab)))
        adata.obs["typicality"] = loaded.reference.typicality(
            adata.X, genes, [res.condition.cell_type] * int(n)).astype(np.float32)
        if (note := _atypical_note(gen, res, adata.obs["typicality"].to_numpy())) is not None:
            adata.uns["instructcell_generation"]["atypical"] = note
            warnings.warn(note, AtypicalCellsWarning, stacklevel=3)
    return adata


def default_template(cond: Condition) -> str:
    """The first of DEFAULT_TEMPLATES whose fields (the condition text aside) `cond` fills."""
    return next(t for t in DEFAULT_TEMPLATES if all(getattr(cond, f) for f in placeholders_in(t) - {"condition"}))


def misread_note(gen: Generator, res: Resolution, understood: int) -> str | None:
    """A note when the instruction was read as another training condition than the one resolved:
    the cells follow what the generator read (its signal token's nearest training condition), so
    obs, which records the request, would otherwise misdescribe them. A phrasing that leaves out
    the species or tissue can do this where a type was learned in two of them."""
    if res.record is None or understood == res.record:
        return None
    asked, read = gen.table.records[res.record].condition, gen.table.records[understood].condition
    if _what(asked) == _what(read):
        return None  # the same condition, learned from another set (another sequencing method)
    return (f"the instruction was read as {_show(read)} ({gen.table.records[understood].dataset}), not as the "
            f"{_show(asked)} asked for, and the cells are drawn for what was read; name the species and tissue "
            f"in the instruction (or leave the instruction out: the default phrasing names them)")


def _what(cond: Condition) -> tuple[str, ...]:
    """Cell type (by Cell Ontology term), species, tissue and condition text: what a request asks."""
    key = cond.key(loose=True)
    return key[:3] + key[4:]


def _show(cond: Condition) -> str:
    return f"{cond.species} / {cond.tissue} {cond.cell_type!r}" + (f" ({cond.condition})" if cond.condition else "")


def _atypical_note(gen: Generator, res: Resolution, typicality: np.ndarray) -> str | None:
    """A note when most generated cells are unlike the training cells of their type, as the
    annotation side notes it of a file. Why: the generator renders some types far worse than
    others (puram2017's, learned from 16 cells each: a median typicality of -3.38 for its
    endothelial cells against -1.1 to +1.0 for the blood types but one;
    benchmarks/results/generated_types.md)."""
    share = atypical_share(typicality)
    if share < ATYPICAL_SHARE:
        return None
    record = gen.table.records[res.record] if res.record is not None else None
    source = f", learned from {record.n_cells:,} cells of {record.dataset}" if record is not None else ""
    return (f"{share:.0%} of the generated cells are unlike the training cells of {res.condition.cell_type!r} "
            f"(typicality below {ATYPICAL_BELOW:g}): the generator renders this type poorly{source}; weigh them "
            f"accordingly")


def to_anndata(counts: np.ndarray | sp.spmatrix, vocab: Sequence[str], conditions: Sequence[Condition],
               instructions: Sequence[str], unseen: bool | Sequence[bool], provenance: dict[str, Any]) -> ad.AnnData:
    """Pack generated counts (dense or sparse) with their conditions (obs) and provenance (uns)."""
    n = counts.shape[0]
    obs = pd.DataFrame({f: [getattr(c, f) for c in conditions] for f in OBS_FIELDS},
                       index=[f"generated_{i}" for i in range(n)])
    obs["instruction"] = list(instructions)
    obs["unseen_condition"] = np.broadcast_to(np.asarray(unseen, dtype=bool), (n,)).copy()
    ids, current = gene_annotation(list(vocab))  # to join with newer files, which may name some genes otherwise
    # categorical: an .h5ad cannot hold an object column with missing values
    var = pd.DataFrame({"gene_ids": pd.Categorical(ids), "current_symbol": pd.Categorical(current)}, index=list(vocab))
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32, copy=False)), obs=obs, var=var)
    adata.uns["instructcell_generation"] = {k: v for k, v in provenance.items() if v is not None}
    return adata


def describe(gen: Generator) -> dict[str, Any]:
    """The conditions a generator knows, grouped for a user (cell types, species, tissues, conditions)."""
    return {f: sorted(gen.table.known(f)) for f in ("cell_type", "species", "tissue", "condition")}


def vectors_for(loaded: LoadedModel, instructions: Sequence[str]) -> torch.Tensor:
    """Condition vectors of instructions (for inspection and tests)."""
    gen = load_generator(loaded)
    return condition_vectors(loaded.model, gen.head, list(instructions), lm_adapters=gen.lm_adapters)
