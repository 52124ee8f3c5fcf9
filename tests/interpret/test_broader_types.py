"""Explaining `resolve_at`'s broader answers: a Cell Ontology type over several candidates is
explained as the log of their summed probability (interpret/targets.py, `broader_types`).

The tiny model's labels are the four islet types, all pancreatic endocrine cells; beside a fifth
candidate outside that type, 'pancreatic endocrine cell' covers four of five candidates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from synthetic import CELL_TYPES, make_counts

from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.errors import LabelKeyError
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.attribution import LabelLogProb, attribute, label_probability
from instructcell_agent.interpret.faithfulness import deletion_test

ENDOCRINE = "pancreatic endocrine cell"
WITH_OTHER = [*CELL_TYPES, "hepatocyte"]


@pytest.fixture(scope="module")
def cells():
    return make_counts(16, seed=11)


def _prefix(model, cands):
    from instructcell_agent.api import DEFAULT_INSTRUCTIONS

    return [model.model.prefix_text(DEFAULT_INSTRUCTIONS[("annotation", True)].replace("{choices}", ", ".join(cands)))]


def test_a_broader_target_is_the_gradient_of_its_summed_probability(tiny_model, cells):
    cands = list(CELL_TYPES)
    X = align_to_vocab(cells[:6], tiny_model.vocab).X
    prefix = _prefix(tiny_model, cands)
    broader = [("alpha or beta", (0, 1))]
    target = np.array([4, 4, 0, 1, 4, 2])  # index 4: the broader type, after the four candidates
    a = attribute(tiny_model.model, X, cands, prefix, method="gradient", target=target, broader=broader)
    assert a.explained == [*cands, "alpha or beta"] and a.probabilities.shape == (6, 5)
    np.testing.assert_allclose(a.probabilities[:, 4], a.probabilities[:, :2].sum(1), rtol=1e-5)
    assert (a.predicted < 4).all()  # a sum is never the predicted candidate
    f = LabelLogProb(tiny_model.model, prefix, cands)
    x = torch.from_numpy(a.inputs).requires_grad_()
    logp = f(x, torch.zeros(6, dtype=torch.long))
    wanted = torch.where(torch.from_numpy(target == 4), torch.logsumexp(logp[:, :2], 1),
                         logp.gather(1, torch.from_numpy(np.minimum(target, 3))[:, None]).squeeze(1))
    wanted.sum().backward()
    np.testing.assert_allclose(a.values, x.grad.numpy(), rtol=1e-4, atol=1e-7)
    # re-scored as the deletion test does, with nothing deleted: the same probabilities
    again = label_probability(tiny_model.model, a.inputs, cands, prefix, np.zeros(6, dtype=np.int64), target,
                              broader=[(0, 1)])
    np.testing.assert_allclose(again, a.probabilities[np.arange(6), target], rtol=1e-5)
    assert deletion_test(tiny_model.model, a, k=2, n_random=1).n_cells == 6
    with pytest.raises(ValueError, match="target indices"):
        attribute(tiny_model.model, X, cands, prefix, target=np.full(6, 5), broader=broader)


def test_explain_takes_resolved_answers_over_the_candidates_named(tiny_model, cells):
    labels = [ENDOCRINE if i % 2 else t for i, t in enumerate(cells.obs["cell_type"])]
    with warnings.catch_warnings():  # 'hepatocyte' is scored as its string, with a warning saying so
        warnings.simplefilter("ignore", UserWarning)
        result = explain(cells, model=tiny_model, labels=labels, candidates=WITH_OTHER, top_k=5)
    a = result.attributions
    assert a.explained == [*WITH_OTHER, ENDOCRINE] and a.broader == ((ENDOCRINE, (0, 1, 2, 3)),)
    np.testing.assert_allclose(a.probabilities[:, 5], a.probabilities[:, :4].sum(1), rtol=1e-5)
    assert (a.target[1::2] == 5).all() and ENDOCRINE in result.labels
    assert result.provenance["broader_types"] == {ENDOCRINE: list(CELL_TYPES)}
    assert any("explained as a broader type" in note for note in result.provenance["notes"])
    assert set(result.top_genes["label"]) >= {ENDOCRINE}
    assert result.to_adata(None).obsm["instructcell_saliency_probabilities"].shape == (16, 6)


def test_a_type_over_every_candidate_is_no_broader_type(tiny_model, cells):
    labels = [ENDOCRINE] * cells.n_obs
    # over the four islet labels the type's probability is 1 whatever the cell: nothing to explain
    with pytest.raises(LabelKeyError, match="broader Cell Ontology type"):
        explain(cells, model=tiny_model, labels=labels, dataset="planted")
