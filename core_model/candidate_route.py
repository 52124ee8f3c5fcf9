"""How to score a user's candidate labels with a checkpoint that learned other spellings.

The model learned to name cells with the label strings of its training sets ('CD14+Mono',
'CD4+/CD45RO+ Memory'). Asked to choose among strings it never produced ('CD14-positive
monocyte', 'T Cell'), the likelihood of the string says more about the string than about the
cell: on the test splits, candidates renamed to their Cell Ontology names dropped accuracy from
0.888 to 0.184 (kang2018) and from 0.971 to 0.200 (baron2016)
(`benchmarks/results/renamed_candidates_test.md`).

So candidates are routed:
- `learned`: all of them are labels of one set the checkpoint learned -> scored as they are,
  listed in the prompt, the way the model was trained. Labels mixed from several sets are
  routed through the ontology: spelled as other sets do (kang2018's 'CD19+ B', 'CD8 T', 'DC'...),
  scoring the strings gave test accuracy 0.867 / 0.764 / 0.922 / 0.960 / 0.833 on kang2018 /
  pbmc3k / wang2016 / tabula muris / puram2017, the ontology 0.893 / 0.875 / 0.980 / 1.000 /
  1.000 (throwaway script, 2026-12-03). The one mix where strings did better: pbmc68k_reduced's
  ten `bulk_labels` (nine of zheng2017's plus 'Dendritic'), 0.691 against 0.679 on its 700 cells.
- `ontology`: otherwise, when candidates name Cell Ontology terms under which the checkpoint
  learned labels -> the model answers the open question, its probability
  over those learned labels is summed per candidate (each learned label to the candidate with its
  nearest term: 'CD8+ Cytotoxic T' to 'CD8 T cell' when both 'T cell' and 'CD8 T cell' are
  candidates).
  Candidates with no learned label under them (no term recorded, or a type the checkpoint never
  learned) are scored there as their own string, with a warning; by default `ica.annotate` then
  lets their known markers decide between each of them and the routed candidates, and the model
  among the routed ones (`gate`, instructcell_agent/unlearned_candidates.py). Measured against scoring every
  candidate as a string (throwaway script, 2026-12-03): 'Kupffer cell' among four routable names
  on the reference system's 20-cell liver demo, 14 right against 7; kang2018's test cells with its
  seven labels' Cell Ontology names plus 'erythrocyte', 0.893 against 0.153.
- `text`: otherwise (no candidate routable, two candidates naming one term, drug labels the
  checkpoint did not learn) -> scored as strings, with a warning saying why that is weak. Where
  no candidate is a type the checkpoint learned (`nothing_learned`), `ica.annotate` answers from
  the candidates' known markers instead (interpret/marker_annotation.py; `by_markers=False` keeps
  the strings): on eight shared sets' test cells, their labels given as Cell Ontology names and
  scored as strings, mean macro-F1 0.37 against the markers' 0.66.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .labels import normalize_label, ontology_ancestors, ontology_id


# types the model never learned can still be named from their known markers (interpret/marker_annotation.py)
BY_MARKERS_HINT = ("For cell types the model never learned, annotate_by_markers (CLI annotate --by-markers, MCP "
                   "by_markers) answers from their known markers instead.")


# benchmarks/results/marker_annotation.md: eight shared sets' test cells, their labels given as Cell
# Ontology names, scored as strings against answered from the names' known markers
BY_MARKERS_MEASURED = ("(Names scored as strings reached a mean macro-F1 of 0.37 on eight shared test sets, "
                       "their known markers 0.66.)")


class CandidateNoteWarning(UserWarning):
    """Candidates scored as plain text: the checkpoint could not route them (see the note)."""


@dataclass(frozen=True)
class CandidateRoute:
    kind: str  # "learned" | "ontology" | "text"
    candidates: tuple[str, ...]
    learned: tuple[str, ...] = ()  # ontology route: learned labels scored
    owner: tuple[int, ...] = ()  # ontology route: candidate index of each learned label
    note: str = ""
    unrouted: tuple[str, ...] = ()  # ontology route: candidates scored as their own string
    nothing_learned: bool = False  # text route: no candidate has a label the checkpoint learned at or below it

    @property
    def scores_learned_labels(self) -> bool:
        """Whether every string scored is a label the checkpoint learned to write (which is what
        makes scoring their decisive tokens only safe; see `CellLanguageModel.score_candidates`)."""
        return self.kind == "learned" or (self.kind == "ontology" and not self.unrouted)

    def pool(self, loglik: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Learned-label log-likelihoods (cells x learned) -> candidate log-probabilities (cells x
        candidates) and, per cell, the index of the learned label that carried the most mass."""
        loglik = np.asarray(loglik, dtype=np.float64)
        logp = loglik - _logsumexp(loglik, axis=1)
        pooled = np.full((loglik.shape[0], len(self.candidates)), -np.inf)
        owner = np.asarray(self.owner)
        for c in range(len(self.candidates)):
            pooled[:, c] = _logsumexp(logp[:, owner == c], axis=1)[:, 0]
        return pooled, logp.argmax(1)

    def finest(self, loglik: np.ndarray, chosen: Sequence[int]) -> list[str]:
        """Per cell, the learned label (or unrouted string) scoring highest in `loglik` (cells x
        `learned`) among those its `chosen` candidate owns: the model's own answer under it."""
        owned = np.asarray(self.owner)[None, :] == np.asarray(chosen)[:, None]
        return [self.learned[j] for j in np.where(owned, np.asarray(loglik, dtype=np.float64), -np.inf).argmax(1)]

    def gate(self, probs: np.ndarray, marker_probs: np.ndarray, typicality: np.ndarray | None = None) -> np.ndarray:
        """Candidate probabilities (cells x candidates) with the unrouted candidates decided by their
        known markers: each keeps the markers' probability, and the markers' summed probability of the
        routed candidates is shared among them as the model's `probs` share it. So the markers tell an
        unlearned type from the learned ones, and the model tells the learned ones apart. Cells the
        markers could not score (a NaN row) keep `probs`.

        `typicality` (per cell, how alike it is to the training cells of the model's own learned
        answer, a z-score; core_model/reference.py) weighs that decision: a cell as alike as its
        answer's training cells are on average (0) is half gated, half the model's `probs`; the
        markers' weight is 1 / (1 + exp(typicality)), 0.95 at -3, 0.27 at +1, and 1 where
        typicality is NaN (no reference to measure against). A cell its learned type fits stays with
        it; one that fits it badly is where an unlearned type may be. Chosen on valid among hard and
        soft cut-offs; on test (benchmarks/results/mixed_candidates_test.md) mean macro-F1 with one
        type at a time hidden 0.852 against the plain gate's 0.853, and, with three absent types
        among the candidates, 0.4% of the cells given one against 4.2%."""
        gated = self._gated(probs, marker_probs)
        if typicality is None:
            return gated
        weight = 1.0 / (1.0 + np.exp(np.clip(np.asarray(typicality, dtype=np.float64), -50.0, 50.0)))
        weight = np.where(np.isnan(weight), 1.0, weight)[:, None]
        return weight * gated + (1.0 - weight) * np.asarray(probs, dtype=np.float64)

    def _gated(self, probs: np.ndarray, marker_probs: np.ndarray) -> np.ndarray:
        routed = np.array([c not in self.unrouted for c in self.candidates])
        out = np.array(probs, dtype=np.float64)
        marker_probs = np.asarray(marker_probs, dtype=np.float64)
        ok = np.isfinite(marker_probs).all(1)
        model = out[ok][:, routed]
        total = model.sum(1, keepdims=True)
        # all of the model's mass on unrouted strings: the routed candidates share the markers' mass evenly
        share = np.where(total > 0, model / np.where(total > 0, total, 1.0), 1.0 / routed.sum())
        out[np.ix_(ok, routed)] = marker_probs[ok][:, routed].sum(1, keepdims=True) * share
        out[np.ix_(ok, ~routed)] = marker_probs[ok][:, ~routed]
        return out


def ontology_note(n_learned: int) -> str:
    """How candidates read through the Cell Ontology are scored (the first sentence of that route's note)."""
    return (f"candidates are not one label set this checkpoint learned; scored through the Cell Ontology: "
            f"the model's probability over {n_learned} labels it learned, summed per candidate.")


def route_candidates(candidates: Sequence[str], label_sets: dict[str, dict], task: str = "annotation") -> CandidateRoute:
    """Pick how to score `candidates` given a checkpoint's label sets (see the module doc)."""
    cands = tuple(candidates)
    wanted = {normalize_label(c) for c in cands}
    sets = [e for e in label_sets.values() if e["task"] == task]
    if any(wanted <= {normalize_label(label) for label in e["labels"]} for e in sets):
        return CandidateRoute("learned", cands)
    terms = {c: t for c in cands if (t := ontology_id(c))}
    learned = list(dict.fromkeys(label for e in sets for label in e["labels"]))
    problem = "they are not one label set the checkpoint learned for this task" if task != "annotation" \
        else _shared_term(cands, terms)
    owner: dict[str, int] = {}
    if not problem:
        index = {terms[c]: i for i, c in enumerate(cands) if c in terms}
        for label in learned:
            term = ontology_id(label)
            for t in ([term, *ontology_ancestors(term)] if term else []):
                if t in index:
                    owner[label] = index[t]
                    break
        if not owner:
            problem = (f"none of {', '.join(map(repr, cands))} has a Cell Ontology term with a label the "
                       f"checkpoint learned at or below it")
    nothing_learned = task == "annotation" and not owner and not _shared_term(cands, terms)
    if problem:
        note = (f"candidates scored as text ({problem}); the likelihood of a string the model never learned to "
                f"answer says little about the cell. Name the candidates as one of the checkpoint's label sets "
                f"does (`instructcell info` lists them){' or by Cell Ontology names' if task == 'annotation' else ''}."
                + (f" {BY_MARKERS_HINT} {BY_MARKERS_MEASURED}" if task == "annotation" else ""))
        return CandidateRoute("text", cands, note=note, nothing_learned=nothing_learned)
    kept = [l for l in learned if l in owner]
    note = ontology_note(len(kept))
    # A candidate with no learned label under it is scored as its own string in the open question.
    # The model seldom answers with a string it never learned, so such cells mostly go to the
    # nearest type it knows; the alternative, scoring every candidate as a string, fails for all.
    unrouted = [(i, c) for i, c in enumerate(cands) if i not in owner.values()]
    if unrouted:
        names = ", ".join(repr(c) for _, c in unrouted)
        note += (f" {names}: no label this checkpoint learned lies at or below {'it' if len(unrouted) == 1 else 'them'}"
                 f" (or no Cell Ontology term is recorded); scored as plain text in the open question, so cells of "
                 f"{'that type' if len(unrouted) == 1 else 'those types'} will mostly be given another candidate. "
                 f"{BY_MARKERS_HINT}")
    return CandidateRoute("ontology", cands, tuple(kept) + tuple(c for _, c in unrouted),
                          tuple(owner[l] for l in kept) + tuple(i for i, _ in unrouted), note,
                          tuple(c for _, c in unrouted))


def _shared_term(cands: tuple[str, ...], terms: dict[str, str]) -> str:
    seen: dict[str, str] = {}
    for c in cands:
        if c in terms and terms[c] in seen:
            return f"{seen[terms[c]]!r} and {c!r} name the same Cell Ontology term"
        if c in terms:
            seen[terms[c]] = c
    return ""


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    if x.shape[axis] == 0:
        return np.full(x.shape[:axis] + (1,), -np.inf)
    top = x.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # a group ruled out entirely (all -inf) stays -inf, not nan
    with np.errstate(divide="ignore"):  # log(0) of such a group is the -inf meant
        return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))
