"""Starting a training run from an existing checkpoint instead of from scratch.

Two uses: giving a trained model more language-model steps without repeating its whole run,
and fine-tuning it on a user's own labelled sets. The cell encoder,
projection and adapters come from the checkpoint, so the gene vocabulary must stay its own; only
the auxiliary head (a training-time helper that checkpoints do not store) starts fresh and is fitted
on the frozen encoder before stage 2 begins, so its first, random gradients do not push the
encoder around.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import LoadedModel, load_checkpoint
from .config import BackboneConfig
from .errors import CheckpointError
from .io import file_sha256

AUX_FIT_STEPS = 300


def load_start(path: str | Path, backbone: BackboneConfig, train_lm: bool, out: Path) -> LoadedModel:
    """The checkpoint a run starts from, checked against the run's settings; writes its vocabulary
    to `out/gene_vocab.json` (or checks the one a resumed run already has)."""
    loaded = load_checkpoint(path)
    if loaded.model.cfg.backbone.kind != backbone.kind:
        raise CheckpointError(f"{path} was trained on the {loaded.model.cfg.backbone.kind!r} backbone, "
                              f"not {backbone.kind!r}; pass --backbone {loaded.model.cfg.backbone.kind}")
    if loaded.model.cfg.lm_trained != train_lm:
        raise CheckpointError(f"{path} has lm_trained={loaded.model.cfg.lm_trained}; a run started from it "
                              "must keep the same setting")
    vocab_path = out / "gene_vocab.json"
    if vocab_path.exists() and json.loads(vocab_path.read_text()) != loaded.vocab:
        raise CheckpointError(f"{vocab_path} differs from {path}/gene_vocab.json: use a fresh run directory")
    vocab_path.write_text(json.dumps(loaded.vocab))
    loaded.model.train()
    return loaded


def provenance(loaded: LoadedModel) -> dict[str, Any]:
    """What the new checkpoint's config records about where its weights started: the starting
    checkpoint's path, weights hash and command, and its own origin, so a chain of runs can be
    followed back to the run that trained from scratch."""
    root = Path(loaded.path) if loaded.path else None
    record = {"path": str(root) if root else None,
              "weights_sha256": file_sha256(root / "weights.safetensors") if root else None,
              "command": loaded.info.get("command")}
    for key in ("started_from", "resumed_from"):
        if loaded.info.get(key):
            record[key] = loaded.info[key]
    return record


def fit_aux_head(encoder: nn.Module, aux: nn.Module, batches, steps: int = AUX_FIT_STEPS, lr: float = 1e-2) -> None:
    """Fit `aux` on the frozen encoder's outputs. `batches(step)` gives (expression, targets, mask)."""
    opt = torch.optim.AdamW(aux.parameters(), lr=lr)
    device = next(aux.parameters()).device
    was_training = encoder.training
    encoder.eval()
    for step in range(steps):
        expr, targets, mask = (t.to(device) for t in batches(step))
        with torch.no_grad():
            queries = encoder(expr)
        loss = F.cross_entropy(aux(queries) + mask, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.train(was_training)


def check_set_names(start: LoadedModel, specs) -> None:
    """Refuse, before any training, a dataset named like one of the start's label sets of another
    task: its labels would silently replace that set's (a drug set turned into cell types). The
    same name and task retrains the set, which is what fine-tuning it again means."""
    clashes = [f"{s.name!r} ({s.task}; the start's is {start.label_sets[s.name]['task']})" for s in specs
               if s.name in start.label_sets and start.label_sets[s.name]["task"] != s.task]
    if clashes:
        raise CheckpointError(f"dataset names taken by label sets of another task in {start.path}: "
                              f"{', '.join(clashes)}; rename your entries")


def merged_label_sets(start: LoadedModel, new: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The new run's label sets, plus those the starting checkpoint knew and this run did not retrain:
    the model still answers them."""
    return {**start.label_sets, **new}


def sampler(data, cfg, target_sum: float, make_batch):
    """`batches(step)` for `fit_aux_head` over the run's training data (seeded per step)."""
    probs = data.dataset_probs(cfg.dataset_alpha, cfg.replay_share)

    def batches(step: int):
        rng = np.random.default_rng([cfg.seed, 7, step])
        d = int(rng.choice(len(probs), p=probs))
        rows = data.sample(rng, d, cfg.encoder_batch)
        return make_batch(data, d, rows, target_sum, cfg, rng), data.targets(d, rows), data.mask(d)

    return batches
