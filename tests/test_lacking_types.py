"""Cells of a learned type the candidates leave out are flagged, and the note names the type."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from synthetic import CELL_TYPES, make_counts

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.candidate_route import CandidateNoteWarning
from instructcell_agent.core_model.readout import SetDepthCurve
from instructcell_agent.lacking_types import LACKING_AT, Lacking, lacking_labels, lacking_note


def test_a_type_is_lacking_unless_listed_under_or_above_a_candidate():
    labels = ["CD4T", "Memory CD4 T", "T cell", "CD8T", "NK", "B", "Ngn3 high EP", "Fibroblast"]
    # 'CD4T' names the candidate's term, 'Memory CD4 T' lies below it, 'T cell' is broader (every
    # CD4 T cell is one), 'B' and 'b cell' differ only in spelling
    assert lacking_labels(["CD4 T cell", "b cell", "fibroblast"], labels) == ["CD8T", "NK", "Ngn3 high EP"]
    assert lacking_labels(labels, labels) == []


def _annotate(tiny_model, cells, candidates):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ica.annotate(cells, model=tiny_model, candidates=candidates)
    said = [str(w.message) for w in caught if issubclass(w.category, CandidateNoteWarning)]
    return result, said


def test_cells_of_a_left_out_type_are_flagged_and_named(tiny_model):
    cells = make_counts(48, seed=3)
    cells.X = cells.X.toarray()
    cells.X[0] = 0  # no counts: left unlabelled, nothing measured
    truth = cells.obs["cell_type"].astype(str).to_numpy()
    complete, said = _annotate(tiny_model, cells, list(CELL_TYPES))
    assert not said and np.nanmax(complete.outside) < LACKING_AT
    result, said = _annotate(tiny_model, cells, [t for t in CELL_TYPES if t != "gamma"])
    outside = np.asarray(result.outside, float)
    assert np.isnan(outside[0]) and result.outside_type[0] is None
    gamma = truth == "gamma"
    gamma[0] = False
    flagged = outside > LACKING_AT
    assert flagged[gamma].mean() >= 0.9 and flagged[~gamma].mean() <= 0.1
    assert set(result.outside_type[flagged]) == {"gamma"}
    note = next(n for n in result.provenance["notes"] if "candidates lack" in n)
    assert "'gamma'" in note and said and "candidates lack" in said[-1]
    frame = result.to_frame()
    assert {"outside_candidates", "outside_type"} <= set(frame.columns)
    adata = result.to_adata(cells.copy())
    assert list(adata.obs["instructcell_outside_type"].astype(object)[flagged]) == ["gamma"] * int(flagged.sum())


def test_nothing_is_flagged_where_the_read_out_cannot_be_trusted_on_the_file(tiny_model):
    # the read-out's weight for the file (its curve over gene coverage) below MIN_WEIGHT: a file holding
    # few of the model's genes, where a linear read-out misreads cells
    weak = dataclasses.replace(tiny_model, readout=dataclasses.replace(tiny_model.readout, answer_weight=0.1))
    result, said = _annotate(weak, make_counts(24, seed=4), [t for t in CELL_TYPES if t != "gamma"])
    assert np.isnan(result.outside).all() and not any("candidates lack" in s for s in said)


@pytest.mark.parametrize("own_curve", [False, True], ids=["pooled curve", "the set's own curve"])
def test_shallow_cells_the_depth_curve_caps_are_not_measured(tiny_model, own_curve):
    cells = make_counts(24, seed=4)
    genes = np.asarray((align_to_vocab(cells, tiny_model.vocab).X > 0).sum(1)).ravel()  # as the model reads them
    cut = float(np.ceil(np.median(genes)))
    # the read-out weighs under MIN_WEIGHT in cells with fewer genes than the median, fully from there
    curve = [(cut - 1, 0.1), (cut, 1.0)]
    if own_curve:  # the pooled curve lets every cell through; the set's own caps the shallow ones
        labels = frozenset(next(iter(tiny_model.label_sets.values()))["labels"])
        capped = dataclasses.replace(tiny_model.readout, depth_curve=[(1.0, 1.0)],
                                     set_depth_curves={"tiny": SetDepthCurve(labels, curve)})
    else:
        capped = dataclasses.replace(tiny_model.readout, depth_curve=curve)
    result, _ = _annotate(dataclasses.replace(tiny_model, readout=capped), cells,
                          [t for t in CELL_TYPES if t != "gamma"])
    measured = ~np.isnan(np.asarray(result.outside, float))
    assert measured.any() and not measured[genes < cut].any()


def test_the_note_waits_for_enough_flagged_cells():
    probability = np.array([0.9, 0.9, 0.1, np.nan] + [0.0] * 96)
    label = np.array(["NK", "NK"] + [None] * 98, dtype=object)
    assert lacking_note(Lacking(probability, label)) is None  # two cells: below the three the note needs
    probability[2], label[2] = 0.7, "CD34+"
    note = lacking_note(Lacking(probability, label))
    assert note.startswith("3 of 99 cells (3%)") and "'NK' (2), 'CD34+' (1)" in note
    assert lacking_note(None) is None


def test_a_file_answered_in_chunks_gets_one_note_counted_over_all_of_it():
    from instructcell_agent.results import AnnotationResult
    from instructcell_agent.server.chunks import concat_chunks

    def part(names, outside, kinds):
        lacking = Lacking(np.asarray(outside, float), np.asarray(kinds, dtype=object))
        notes = [n for n in [lacking_note(lacking), "another note"] if n]
        return AnnotationResult(names, np.array(["B"] * len(names), dtype=object), np.full(len(names), 0.9),
                                ["B"] * len(names), provenance={"notes": notes}, outside=lacking.probability,
                                outside_type=lacking.label)

    first = part([f"a{i}" for i in range(40)], [0.9] * 3 + [0.0] * 37, ["NK"] * 3 + [None] * 37)
    second = part([f"b{i}" for i in range(40)], [0.8] * 2 + [0.0] * 38, ["NK"] * 2 + [None] * 38)
    empty = AnnotationResult(["c0"], np.array([None], dtype=object), np.array([np.nan]), [""],
                             provenance={"notes": []})  # a chunk with no cell to answer measured nothing
    whole = concat_chunks([first, second, empty])
    lacking = [n for n in whole.provenance["notes"] if "candidates lack" in n]
    assert len(lacking) == 1 and lacking[0].startswith("5 of 80 cells") and "another note" in whole.provenance["notes"]
    assert np.isnan(whole.outside[-1]) and whole.outside_type[-1] is None and len(whole.outside) == 81


# Blood sets cut the CD4 T lineage differently (kang2018 'CD4T', pbmc3k naive / memory, zheng2017 five kinds);
# every term below is one the shipped checkpoint's label sets learned.
KANG = ["B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"]
PBMC3K = ["B", "CD14+ Mono", "CD8 T", "DC", "FCGR3A+ Mono", "Memory CD4 T", "NK", "Naive CD4 T", "Platelet"]
ZHENG = ["CD14+ Monocyte", "CD19+ B", "CD34+", "CD4+ T Helper2", "CD4+/CD25 T Reg", "CD4+/CD45RA+/CD25- Naive T",
         "CD4+/CD45RO+ Memory", "CD56+ NK", "CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic"]


def _terms(*label_sets):
    from instructcell_agent.core_model.labels import ontology_id

    return {t for labels in label_sets for label in labels if (t := ontology_id(label))}


def test_another_sets_type_counts_as_lacking_only_outside_the_candidates_lineages():
    from instructcell_agent.lacking_types import learned_elsewhere

    learned = _terms(KANG, PBMC3K, ZHENG)
    # progenitors share no learned type with mature blood cells: lacking from either list
    assert learned_elsewhere(KANG, ZHENG, learned) == ["CD34+"]
    # T helper 2 and regulatory T cells are another cut of the CD4 T cells pbmc3k lists (kang2018 names the
    # lineage as one type), though lacking_labels, by terms alone, calls them lacking
    assert lacking_labels(PBMC3K, ZHENG) == ["CD34+", "CD4+ T Helper2", "CD4+/CD25 T Reg"]
    assert learned_elsewhere(PBMC3K, ZHENG, learned) == ["CD34+"]
    # with no set naming a lineage both share, nothing ties them to the candidates
    assert learned_elsewhere(PBMC3K, ZHENG, set()) == ["CD34+", "CD4+ T Helper2", "CD4+/CD25 T Reg"]
    # a label with no Cell Ontology term is lacking unless listed by name
    assert learned_elsewhere(["alpha", "beta"], ["alpha", "Ngn3 high EP"], learned) == ["Ngn3 high EP"]
    assert learned_elsewhere(["alpha", "Ngn3 high EP"], ["alpha", "Ngn3 high EP"], learned) == []


def test_cells_are_read_within_other_sets_that_learned_their_answer(tiny_model):
    from instructcell_agent.lacking_types import lacking_types

    # the answer's own (largest) set lacks gamma; a second set learned the answer and gamma
    loaded = dataclasses.replace(tiny_model, label_sets={
        "home": {"task": "annotation", "labels": ["alpha", "beta", "delta"]},
        "other": {"task": "annotation", "labels": ["alpha", "gamma", "beta"]}})
    cells = make_counts(64, seed=5)
    truth = cells.obs["cell_type"].astype(str).to_numpy()
    aligned = align_to_vocab(cells, loaded.vocab)
    answers = ["alpha"] * cells.n_obs  # every cell's answer, learned by both sets

    def flagged(across, candidates=("alpha", "beta", "delta")):
        lacking = lacking_types(loaded, aligned.X, aligned.matched, list(candidates), answers, across_sets=across)
        return lacking.probability > LACKING_AT, lacking.label

    alone, _ = flagged(False)
    assert not alone.any()  # nothing the home set learned is lacking
    across, names = flagged(True)
    gamma, mature = truth == "gamma", np.isin(truth, ["alpha", "beta"])
    assert across[gamma].mean() >= 0.9 and not across[mature].any()
    assert set(names[across]) == {"gamma"}
    listed, _ = flagged(True, ("alpha", "beta", "delta", "gamma"))
    assert not listed.any()
    # answers the other set never learned are read within their own set only
    answers = ["delta"] * cells.n_obs
    assert not flagged(True)[0].any()


def test_the_home_set_can_be_the_one_spelling_the_candidates(tiny_model):
    from instructcell_agent.lacking_types import held, lacking_types

    # 'users' spells every candidate; 'wide', larger, learned the answer and gamma but not delta
    loaded = dataclasses.replace(tiny_model, label_sets={
        "wide": {"task": "annotation", "labels": ["alpha", "beta", "gamma"]},
        "users": {"task": "annotation", "labels": ["alpha", "delta"]}})
    assert held(["Alpha", "beta", "CD4 T cell"], ["alpha", "beta", "CD4T"]) == 3  # by name or by term
    cells = make_counts(64, seed=5)
    gamma = cells.obs["cell_type"].astype(str).to_numpy() == "gamma"
    aligned = align_to_vocab(cells, loaded.vocab)
    answers = ["alpha"] * cells.n_obs

    def flagged(candidates, home_by):
        lacking = lacking_types(loaded, aligned.X, aligned.matched, candidates, answers, home_by=home_by)
        return lacking.probability > LACKING_AT

    users = ["alpha", "delta"]
    assert flagged(users, "largest")[gamma].mean() >= 0.9  # read within 'wide', which learned gamma
    assert not flagged(users, "candidates").any()  # read within 'users', which learned no type the list lacks
    # a tie in candidates spelt goes to the larger set, as by default
    assert flagged(["alpha"], "candidates")[gamma].mean() >= 0.9
    with pytest.raises(ValueError, match="home_by"):
        flagged(users, "smallest")
