"""Result types returned by the task API, with tidy views and scverse-style write-back."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .agreement import Agreement, ResolvedAgreement, agreement, resolved_agreement
from .core_model.labels import UNASSIGNED, ontology_id, ontology_name
from .resolution import COLUMNS as RESOLVED_COLUMNS, resolved_line


def check_unassigned_below(threshold: float) -> None:
    """Refuse a confidence threshold outside (0, 1]."""
    if not 0 < threshold <= 1:
        raise ValueError(f"unassigned_below takes a confidence in (0, 1], got {threshold!r}")


def check_unassigned_atypical(sds: float) -> None:
    """Refuse a number of standard deviations that is not positive and finite."""
    # numpy scalars count (a threshold read from an array); True is not a number of deviations
    if isinstance(sds, bool) or not isinstance(sds, (int, float, np.number)) or not (np.isfinite(sds) and sds > 0):
        raise ValueError(f"unassigned_atypical takes a positive number of standard deviations (3, say), got {sds!r}")


# who answered a cell under `fast` (core_model/readout_first.py)
READOUT_ALONE, LANGUAGE_MODEL = "read-out alone", "language model"


@dataclass
class AnnotationResult:
    """Per-cell answers of one annotation (or drug-response) call.

    Attributes
    ----------
    labels
        Predicted label per cell (unmapped free answers keep their text); None for a cell left
        unlabelled because it has no counts on any of the model's genes; 'Unassigned' for a cell
        whose confidence fell below the threshold of `unassigned_below` or whose typicality fell
        below minus `unassigned_atypical`.
    confidence
        Probability of the predicted label (softmax over the candidates; without candidates,
        over the learned labels the answer was chosen from, or, for decoded answers, the product
        of the generated tokens' probabilities); NaN for an unlabelled cell.
    probabilities
        cells x candidates probabilities (NaN rows for unlabelled cells), or None without candidates.
    answers
        The model's answer text per cell (a sentence in chat mode).
    provenance
        Model, instruction, alignment report and versions, stored in `uns` by `to_adata`.
    typicality
        How alike the cell is to the training cells of its label (core_model/reference.py): a
        z-score, 0 as alike as those cells are on average, -3 three of their standard deviations
        less alike; NaN for an unlabelled cell or a label without reference cells. None when the
        checkpoint keeps no reference cells.
    answered_by
        With `fast`: 'read-out alone' for a cell the linear read-out answered without the language
        model, 'language model' for the others (None for an unlabelled cell); None without `fast`.
    resolved
        With `resolve_at`: per cell (rows by cell name) the finest answer reaching that probability,
        `resolved` (the label, a broader Cell Ontology type's name, or 'Unassigned'),
        `resolved_confidence`, `resolved_ontology_id` and `resolved_level` ('label' or 'broader
        type'); None without `resolve_at`. See core_model/hierarchy.py.
    outside, outside_type
        With candidates (cell types): per cell, the read-out's probability that it is a type the
        checkpoint learned but the candidates lack, and the likeliest such type (None where there
        is none); NaN / None where not measured (an unlabelled cell, a type only the markers
        gave); None without candidates or without a read-out. See instructcell_agent/lacking_types.py.
    """

    obs_names: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    answers: list[str]
    probabilities: pd.DataFrame | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    typicality: np.ndarray | None = None
    answered_by: np.ndarray | None = None
    resolved: pd.DataFrame | None = None
    outside: np.ndarray | None = None
    outside_type: np.ndarray | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: label, confidence, answer (and typicality, and with `fast` who answered,
        where there are)."""
        columns = {"label": self.labels, "confidence": self.confidence, "answer": self.answers}
        if self.typicality is not None:
            columns["typicality"] = self.typicality
        if self.answered_by is not None:
            columns["answered_by"] = self.answered_by
        if self.outside is not None:
            columns["outside_candidates"], columns["outside_type"] = self.outside, self.outside_type
        frame = pd.DataFrame(columns, index=self.obs_names)
        return frame if self.resolved is None else frame.join(self.resolved)

    def to_table(self) -> pd.DataFrame:
        """`to_frame` plus, for cell types, the Cell Ontology id and name of each label, and with
        candidates one `p_<candidate>` column per candidate: everything per cell in one flat
        table (what `annotate --table` and the MCP server's labels CSV write; a Seurat user adds
        it with AddMetaData)."""
        frame = self.to_frame()
        if self.provenance.get("task") == "annotation":
            terms = [ontology_id(str(l)) if l is not None else None for l in self.labels]
            frame["ontology_id"] = terms
            frame["ontology_name"] = [ontology_name(t) if t else None for t in terms]
        if self.probabilities is not None:
            probs = self.probabilities.set_axis([f"p_{c}" for c in self.probabilities.columns], axis=1)
            frame = frame.join(probs)
        return frame

    def agreement(self, known) -> Agreement:
        """Agreement with labels the cells already have (`adata.obs['cell_type']`, say): overall and
        per known label, answers read onto the known names through the Cell Ontology
        (`instructcell_agent/agreement.py`). A Series indexed by cell names is aligned by name."""
        return agreement(self.labels, self._by_cell(known, "known labels"))

    def resolved_agreement(self, known) -> ResolvedAgreement:
        """How often the answers of `resolve_at` are right for labels the cells already have: at a
        label as `agreement` reads it, as a broader type when the known label falls under it."""
        if self.resolved is None:
            raise ValueError("this result has no resolved answers: annotate with resolve_at (0.9, say)")
        return resolved_agreement(self.resolved, self._by_cell(known, "known labels"))

    def _by_cell(self, values, what: str):
        """`values` in the annotated cells' order: a Series indexed by cell names is aligned by name
        (a Series indexed otherwise is refused); anything else is taken as given, cell by cell."""
        if isinstance(values, pd.Series) and not values.index.equals(pd.Index(self.obs_names)):
            if not set(map(str, values.index)) >= set(self.obs_names):
                raise ValueError(f"{what}: a Series whose index does not hold the annotated cells' names")
            values = values.set_axis(values.index.map(str)).reindex(self.obs_names)
        return values

    def unassigned_below(self, threshold: float) -> AnnotationResult:
        """A copy of this result with every cell answered at a confidence below `threshold` labelled
        'Unassigned' (its answer, probabilities and confidence kept): what to do when the file may
        hold types the candidates lack. A type missing from the candidates is answered with low
        confidence: zheng2017's CD34+ test cells asked among kang2018's seven labels, 0.63 of them
        below 0.5 and 0.80 below 0.6, where 0.029 and 0.061 of in-set test cells are
        (benchmarks/results/missing_types.md)."""
        check_unassigned_below(threshold)
        low = np.asarray(self.confidence, dtype=float) < threshold  # NaN (unlabelled) compares False
        return self._unassigned(low, "unassigned_below", threshold,
                                f"cells answered with confidence below {threshold:g} are labelled {UNASSIGNED!r} "
                                "(the model's best guess stays in the answer)")

    def unassigned_atypical(self, sds: float) -> AnnotationResult:
        """A copy of this result with every cell whose typicality is below -`sds` labelled
        'Unassigned' (its answer, probabilities and confidence kept): cells less like the training
        cells of their label than `sds` of those cells' standard deviations. Unlike the confidence,
        this tells free answers apart too: on the test splits (benchmarks/results/atypical_cells.md)
        it sets aside cells of a tissue or type the model never learned, asked with or without
        candidates, at a small cost in cells of types it did learn."""
        check_unassigned_atypical(sds)
        if self.typicality is None:
            raise ValueError("this result has no typicality: the checkpoint keeps no reference cells "
                             "(`instructcell fit-reference --checkpoint DIR` keeps them)")
        low = np.asarray(self.typicality, dtype=float) < -sds  # NaN compares False: left as answered
        result = self
        if self.resolved is not None:  # unlike its label's cells: no broader answer is trusted either
            answered = self.resolved["resolved"].notna().to_numpy()
            resolved = self.resolved.copy()
            resolved.loc[low & answered, list(RESOLVED_COLUMNS)] = [UNASSIGNED, np.nan, None, None]
            result = dataclasses.replace(self, resolved=resolved)
        return result._unassigned(low, "unassigned_atypical", sds,
                                  f"cells less like their label's training cells than {sds:g} of those cells' "
                                  f"standard deviations (typicality below {-sds:g}) are labelled {UNASSIGNED!r} "
                                  "(the model's best guess stays in the answer)")

    def _unassigned(self, mask: np.ndarray, key: str, value: float, note: str) -> AnnotationResult:
        # A second call could not give back the labels the first one took (a lower threshold).
        if key in self.provenance:
            raise ValueError(f"this result already has cells unassigned by {key}; call {key} on the result "
                             "annotate returned (it is left unchanged)")
        labels = np.array([UNASSIGNED if m and label is not None else label for label, m in zip(self.labels, mask)],
                          dtype=object)
        provenance = dict(self.provenance, **{key: value}, notes=[*self.provenance.get("notes", []), note])
        return dataclasses.replace(self, labels=labels, provenance=provenance)

    def n_unassigned(self) -> int:
        """Cells labelled 'Unassigned' by `unassigned_below` or `unassigned_atypical`."""
        return sum(label == UNASSIGNED for label in self.labels)

    def label_counts(self) -> pd.Series:
        return pd.Series(self.labels).value_counts()

    def n_unlabelled(self) -> int:
        """Cells left without a label (no counts on any of the model's genes)."""
        return sum(label is None for label in self.labels)

    def summary(self) -> str:
        counts = self.label_counts()
        conf = np.asarray(self.confidence, dtype=float)
        answered = conf[~np.isnan(conf)]
        mean = f"{float(answered.mean()):.3f}" if len(answered) else "n/a"
        # with a calibrated checkpoint (core_model/temperature.py) about half the answers given
        # with confidence 0.5 are right: cells below it are worth a look before trusting them
        done = "answered" if self.provenance.get("task") == "drug_response" else "annotated"
        lines = [f"{len(answered):,} cells {done}; mean confidence {mean}; "
                 f"{int((answered < 0.5).sum()):,} below 0.5"]
        lines += [line for line in (self._genes_read(), self.fast_line(), self.resolved_line()) if line]
        if self.n_unlabelled():
            lines.append(f"{self.n_unlabelled():,} cells unlabelled: no counts on any of the model's genes")
        if self.typicality is not None:
            typ = np.asarray(self.typicality, dtype=float)
            scored = typ[~np.isnan(typ)]
            if len(scored):
                low = int((scored < -3).sum())
                lines.append(f"typicality (alike their label's training cells; 0 as those cells, in their standard "
                             f"deviations): median {float(np.median(scored)):+.2f}; "
                             f"{low:,} cell{'' if low == 1 else 's'} below -3")
        rules = []
        if "unassigned_below" in self.provenance:
            rules.append(f"confidence below {self.provenance['unassigned_below']:g}")
        if "unassigned_atypical" in self.provenance:
            rules.append(f"typicality below {-self.provenance['unassigned_atypical']:g}")
        if rules:
            lines.append(f"{self.n_unassigned():,} cells {UNASSIGNED!r}: {' or '.join(rules)}")
        if tissues := self.answer_tissues():
            lines.append("free answers name labels learned in: " + ", ".join(f"{t} {n:,}" for t, n in tissues.items()))
        lines += [f"  {label}: {n}{self._atypical_among(label)}" for label, n in counts.items()]
        lines += self._merged_synonyms(counts)
        lines += [f"Note: {note}" for note in self.provenance.get("notes", [])]
        return "\n".join(lines)

    def fast_line(self) -> str | None:
        """How many cells the read-out answered alone under `fast` (None without `fast`, or when it
        answered none: a note then says why)."""
        fast = self.provenance.get("fast")
        if not fast or not fast["cells_answered_by_readout_alone"]:
            return None
        return (f"fast: {fast['cells_answered_by_readout_alone']:,} of {fast['cells_answered']:,} cells answered by "
                f"the linear read-out alone (its probability {fast['sure_at']:g} or more), the rest by the language "
                "model")

    def resolved_line(self) -> str | None:
        """With `resolve_at`: how many cells were resolved at their label, how many as a broader type
        (the commonest named), how many 'Unassigned'; None otherwise."""
        if self.resolved is None:
            return None
        return resolved_line(self.resolved, self.provenance.get("resolve_at", float("nan")))

    @staticmethod
    def answer_tissue_record(counts: Counter) -> dict[str, list]:
        """How `answer_tissues` is stored in provenance: by column, most cells first, since an
        .h5ad would turn the '/' of a tissue such as 'immune (spleen/marrow)' in a key into groups."""
        ranked = counts.most_common()
        return {"tissue": [t for t, _ in ranked], "cells": [n for _, n in ranked]}

    def answer_tissues(self) -> dict[str, int] | None:
        """Free answers counted by the tissue of the training sets that taught each label named
        ('pancreas / peripheral blood' for a label learned in both); None with candidates."""
        found = self.provenance.get("answer_tissues")
        return None if found is None else dict(zip(map(str, found["tissue"]), map(int, found["cells"])))

    def _genes_read(self) -> str | None:
        """One line from the gene alignment report: how much of the model's vocabulary the file
        holds (answers weaken as it falls; docs/python-api.md, 'Files with few genes') and how values were read."""
        report = self.provenance.get("alignment")
        if not report:
            return None
        kind = (report.get("value_type") or {}).get("kind", "")
        source = report.get("names_from", "var_names")
        named = "" if source == "var_names" else f" (names from {source})"
        return (f"genes: {report['n_matched']:,} of the model's {report['n_vocab']:,} matched "
                f"({report['matched_fraction']:.0%}) among the file's {report['n_input_genes']:,}{named}; "
                f"values read as {kind.replace('_', ' ') or 'unknown'}; species {report.get('species') or 'unknown'}")

    def _atypical_among(self, label) -> str:
        """' (k below -3)' for a label some of whose cells fall below typicality -3, else ''."""
        if self.typicality is None:
            return ""
        k = int((np.asarray(self.typicality, dtype=float)[np.asarray(self.labels == label)] < -3).sum())
        return f" ({k} below -3)" if k else ""

    def _merged_synonyms(self, counts: pd.Series) -> list[str]:
        """Free answers range over several training sets' spellings ('NK' and 'CD56+ NK'); say which
        labels name the same Cell Ontology term, with the merged counts."""
        if self.provenance.get("task") != "annotation":
            return []
        by_term: dict[str, list[str]] = {}
        for label in counts.index:
            term = ontology_id(str(label))
            if term:
                by_term.setdefault(term, []).append(str(label))
        merged = {t: labels for t, labels in by_term.items() if len(labels) > 1}
        if not merged:
            return []
        lines = ["Same population under several training-set spellings (to_adata's obs '..._ontology_id' "
                 "holds the shared Cell Ontology id):"]
        for term, labels in sorted(merged.items(), key=lambda kv: -int(counts[kv[1]].sum())):
            lines.append(f"  {ontology_name(term)} ({term}): {int(counts[labels].sum())} = "
                         + " + ".join(f"{label} {int(counts[label])}" for label in labels))
        return lines

    def composition(self, groups, key: str = "group", resolved: bool = False):
        """What each group of cells was answered (`instructcell_agent/composition.py`): `groups`
        one value per cell (a cluster column, say; a Series indexed by cell names is aligned by
        name). Free cell-type answers are counted by Cell Ontology population, as `draw_map` colours
        them, under the population's most frequent spelling. `resolved`: the answers of
        `resolve_at` instead (a cluster of CD4+ T cells whose subsets split is one broader type)."""
        from .composition import composition

        groups = self._by_cell(groups, "groups")
        groups = groups if isinstance(groups, pd.Series) else pd.Series(groups)  # a categorical keeps its order
        if resolved:
            if self.resolved is None:
                raise ValueError("this result has no resolved answers: annotate with resolve_at (0.9, say)")
            return composition(list(self.resolved["resolved"]), self.resolved["resolved_confidence"].to_numpy(),
                               groups, key, what="resolved answers")
        return composition(self._population_labels(), self.confidence, groups, key)

    def _population_labels(self) -> list:
        """Free cell-type answers with one name per population: the model may write one population
        in several training sets' spellings ('CD14+ Mono', 'CD14+Mono'), which the Cell Ontology
        ties together; each is shown as the population's most frequent spelling here. Other labels
        as they are."""
        if self.provenance.get("task") != "annotation" or self.probabilities is not None:
            return list(self.labels)
        terms = [ontology_id(str(label)) if label is not None and label != UNASSIGNED else None
                 for label in self.labels]
        shown: dict[str, str] = {}
        for (term, label), _ in Counter(zip(terms, self.labels)).most_common():  # most frequent first
            if term is not None:
                shown.setdefault(term, label)
        return [shown[term] if term is not None else label for term, label in zip(terms, self.labels)]

    def draw_map(self, adata: ad.AnnData, path, *, layer: str | None = None, use_raw: bool = False,
                 resolved: bool = False):
        """Draw the answers and their confidence on a map of the cells, as a PNG at `path`: the
        file's own UMAP or t-SNE, else a UMAP computed from its genes (`layer` / `use_raw` as
        given to `annotate`; instructcell_agent/cell_map.py). Returns the `CellMap`;
        `cell_map.keep_coords(adata, map)` keeps computed coordinates in `obsm`. The cells must be
        the ones annotated. `resolved`: the answers of `resolve_at` and their probabilities instead."""
        from .cell_map import cell_map, plot_answers

        if list(map(str, adata.obs_names)) != list(self.obs_names):
            raise ValueError("adata's cells differ from the annotated cells (same obs_names in the same order needed)")
        if resolved and self.resolved is None:
            raise ValueError("this result has no resolved answers: annotate with resolve_at (0.9, say)")
        cmap = cell_map(adata, layer=layer, use_raw=use_raw)
        if resolved:
            plot_answers(cmap, list(self.resolved["resolved"]), self.resolved["resolved_confidence"].to_numpy(), path,
                         title=f"{len(self.obs_names):,} cells: the finest type reaching probability "
                               f"{self.provenance.get('resolve_at', float('nan')):g} (resolve_at)")
            return cmap
        what = "drug response"
        if self.provenance.get("task") == "annotation":
            # Free answers may name one population in several training sets' spellings
            # ('CD14+ Mono', 'CD14+Mono'): one colour for it, under its most frequent spelling.
            what = ("cell type" if self.probabilities is not None
                    else "cell type (free answers; a population's several spellings under its most frequent)")
        plot_answers(cmap, self._population_labels(), self.confidence, path,
                     title=f"{len(self.obs_names):,} cells: {what}")
        return cmap

    def to_adata(self, adata: ad.AnnData, key_added: str = "instructcell") -> ad.AnnData:
        """Write the result into `adata` (in memory, scverse style) and return it.

        Adds `obs['<key>_label']`, `obs['<key>_confidence']`, `obs['<key>_typicality']` (where
        the checkpoint keeps reference cells), `obs['<key>_answered_by']` (with `fast`),
        `obs['<key>_resolved']`, `_resolved_confidence`, `_resolved_ontology_id` and
        `_resolved_level` (with `resolve_at`),
        `obs['<key>_ontology_id']` and
        `obs['<key>_ontology_name']` (cell types: the label's Cell Ontology id and name, where the
        package's synonym table has one; missing elsewhere),
        `obsm['<key>_probabilities']` (with candidates) and `uns['<key>']` (provenance). The cells
        must be the ones annotated.
        """
        if list(map(str, adata.obs_names)) != list(self.obs_names):
            raise ValueError("adata's cells differ from the annotated cells (same obs_names in the same order needed)")
        adata.obs[f"{key_added}_label"] = pd.Categorical(self.labels)
        adata.obs[f"{key_added}_confidence"] = self.confidence.astype(np.float32)
        if self.typicality is not None:
            adata.obs[f"{key_added}_typicality"] = np.asarray(self.typicality, dtype=np.float32)
        if self.answered_by is not None:
            adata.obs[f"{key_added}_answered_by"] = pd.Categorical(self.answered_by)
        if self.outside is not None:
            adata.obs[f"{key_added}_outside_candidates"] = np.asarray(self.outside, dtype=np.float32)
            adata.obs[f"{key_added}_outside_type"] = pd.Categorical(self.outside_type)
        if self.resolved is not None:
            for column in RESOLVED_COLUMNS:
                values = self.resolved[column].to_numpy()
                adata.obs[f"{key_added}_{column}"] = (values.astype(np.float32) if column == "resolved_confidence"
                                                      else pd.Categorical(values))
        if self.provenance.get("task") == "annotation":
            # Cell Ontology ids (CELLxGENE's convention) let labels from different spellings be
            # merged downstream: 'CD19+ B' and 'B' are both CL:0000236. Missing where unknown.
            terms = [ontology_id(str(l)) if l is not None else None for l in self.labels]
            adata.obs[f"{key_added}_ontology_id"] = pd.Categorical(terms)
            # one name per population whatever the training set's spelling: what to colour a UMAP by
            adata.obs[f"{key_added}_ontology_name"] = pd.Categorical([ontology_name(t) if t else None for t in terms])
        uns = dict(self.provenance)
        if self.probabilities is not None:
            adata.obsm[f"{key_added}_probabilities"] = self.probabilities.to_numpy(dtype=np.float32)
            uns["candidates"] = list(map(str, self.probabilities.columns))
        adata.uns[key_added] = uns
        return adata
