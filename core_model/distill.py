"""Distillation from the starting checkpoint's answers on the replayed cells while fine-tuning.

Replay (core_model/replay.py) teaches the inherited sets' cells again with their labels, about 40
cells per label: the hard label says which answer is right, not how the start weighed the others,
and the boundary the start drew between two close labels (zheng2017's CD8 subsets, where the
default fine-tune lost most) is what a new study spelling the same labels pulls on. Here the
start, kept frozen, answers each replayed batch with the same prompts and the same augmented
cells, and the model being tuned is pulled toward its whole candidate distribution (Hinton, Vinyals
& Dean 2015, "Distilling the knowledge in a neural network"; used against forgetting by Li & Hoiem
2016, "Learning without forgetting"). `TrainConfig.distill_weight`, CLI `instructcell train
--distill-weight`; off by default: at weight 1, fine-tuned on pbmc68k_reduced, the language model
alone kept more of zheng2017 and kang2018 on both seeds tried, but the whole model's mean loss over
the two fell only from 0.0275 / 0.0295 to 0.0165 / 0.024, the study was learned 0.027 / 0.007
less, and a step took 1.54x as long (benchmarks/EXPERIMENTS.md, 2026-12-07, 21:51 onwards).

The distribution is the one inference ranks answers by: softmax over the labels' decisive-token
log-likelihoods (`CellLanguageModel.score_candidates(..., decisive=True)`), softened by
`TEMPERATURE` so that the start's second choices carry weight; the loss is scaled by T^2, as
Hinton et al. do, so its gradient does not shrink with T.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

TEMPERATURE = 2.0


def frozen_teacher(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` as it is now, in eval mode, with no weight that trains."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def kl_to_teacher(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                  temperature: float = TEMPERATURE) -> torch.Tensor:
    """T^2 * mean over cells of KL(teacher || student), each a softmax of its (B, C) scores / T."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"scores of shape {tuple(student_scores.shape)} against the teacher's "
                         f"{tuple(teacher_scores.shape)}")
    student = F.log_softmax(student_scores / temperature, dim=-1)
    teacher = F.log_softmax(teacher_scores.detach() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")


@torch.no_grad()
def teacher_scores(teacher, texts: list[str], index: torch.Tensor, expr: torch.Tensor,
                   labels: list[str]) -> torch.Tensor:
    """The teacher's decisive-token scores (B, C) of `labels` for the batch's prompts and cells.
    Its memoised prompt openings stay valid across steps: its weights never change."""
    return teacher.score_candidates(teacher.start(texts, index), expr, labels, decisive=True)
