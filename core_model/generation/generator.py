"""The generator's files in a checkpoint directory: generator.safetensors + generator.json.

They sit beside the model's own files and are optional: a checkpoint without them annotates as
before and says, when asked to generate, how to add them (`instructcell train-generator`).
Weights are fp16 (loaded as fp32); the JSON holds the config, the table of training conditions,
the vocabulary hash and the weights' hash, so a mismatched pair of files is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import LoadedModel
from ..errors import CheckpointError
from ..io import file_sha256, write_json_atomic
from .conditions import ConditionTable, condition_incidence
from .vae import CountVAE, GeneratorConfig, SignalHead, generation_state

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE, META_FILE = "generator.safetensors", "generator.json"
MODEL_WEIGHTS = "weights.safetensors"  # the cell model's trained weights (incl. LoRA): the LM the signal passes through
_CACHE: dict[tuple[str, int, int], Generator] = {}


@dataclass
class Generator:
    """A trained generator: count VAE, signal head, and the conditions it was trained on."""

    cfg: GeneratorConfig
    vae: CountVAE
    head: SignalHead
    table: ConditionTable
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def table_vectors(self) -> torch.Tensor:
        """(n_conditions, cond_dim): the stage-1 vector of each training condition."""
        return self.head.table

    def nearest(self, vectors: torch.Tensor) -> list[int]:
        """Index of the training condition whose vector is closest to each of `vectors`."""
        dist = torch.cdist(vectors.float(), self.table_vectors.to(vectors.device).float())
        return dist.argmin(1).tolist()


def vocab_sha256(vocab: list[str]) -> str:
    """Hash of a gene vocabulary (order matters: it is the decoder's output layout)."""
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()


def has_generator(path: str | os.PathLike | None) -> bool:
    """Whether a checkpoint directory holds generator files."""
    return path is not None and all((Path(path) / f).is_file() for f in (WEIGHTS_FILE, META_FILE))


def _atomic_target(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def rebind_model_weights(checkpoint_dir: str | os.PathLike, old_sha256: str) -> bool:
    """After the cell model's weights file was rewritten without retraining (stored in another
    precision), point generator.json at the new file. Refuses when the generator was trained
    against other weights than `old_sha256`. Returns False when there is no generator."""
    root = Path(checkpoint_dir)
    if not has_generator(root):
        return False
    meta = json.loads((root / META_FILE).read_text())
    if meta.get("model_weights_sha256") != old_sha256:
        raise CheckpointError(f"{root}: the generator was not trained with the weights being replaced; retrain it")
    meta["model_weights_sha256"] = file_sha256(root / MODEL_WEIGHTS)
    meta["model_weights_trained_with_sha256"] = old_sha256
    write_json_atomic(meta, root / META_FILE)
    return True


def save_generator(checkpoint_dir: str | os.PathLike, gen: Generator, vocab: list[str]) -> Path:
    """Write the generator files into a checkpoint directory, each atomically (temp + rename).

    Parameters
    ----------
    checkpoint_dir
        An existing checkpoint directory.
    gen
        The trained generator.
    vocab
        The checkpoint's gene vocabulary (its hash is recorded).

    Returns
    -------
    pathlib.Path
        The path of generator.json.
    """
    root = Path(checkpoint_dir)
    weights_tmp, meta_tmp = _atomic_target(root, WEIGHTS_FILE), _atomic_target(root, META_FILE)
    try:
        save_file(generation_state(gen.vae, gen.head), str(weights_tmp))
        meta = {"format_version": FORMAT_VERSION, "config": gen.cfg.to_dict(), "conditions": gen.table.to_list(),
                "vocab_sha256": vocab_sha256(vocab), "weights_sha256": file_sha256(weights_tmp),
                "model_weights_sha256": file_sha256(root / MODEL_WEIGHTS), **gen.info}
        meta_tmp.write_text(json.dumps(meta, indent=1))
        for tmp in (weights_tmp, meta_tmp):
            tmp.chmod(0o644)  # mkstemp creates 0600; match the checkpoint's other files
        os.replace(weights_tmp, root / WEIGHTS_FILE)
        os.replace(meta_tmp, root / META_FILE)
    finally:
        for tmp in (weights_tmp, meta_tmp):
            tmp.unlink(missing_ok=True)
    log.info("wrote %s and %s in %s", WEIGHTS_FILE, META_FILE, root)
    return root / META_FILE


def load_generator(loaded: LoadedModel) -> Generator:
    """The generator stored with a loaded checkpoint (read once, then cached).

    Raises
    ------
    CheckpointError
        The checkpoint has no generator files, or they do not fit it (other vocabulary, other
        backbone width, weights that are not the ones the JSON describes).
    """
    if not has_generator(loaded.path):
        raise CheckpointError(
            f"checkpoint {loaded.path} has no generator ({WEIGHTS_FILE} + {META_FILE}); add one with "
            "`instructcell train-generator --checkpoint DIR`")
    root = Path(loaded.path)  # type: ignore[arg-type]
    key = (str(root.resolve()), (root / META_FILE).stat().st_mtime_ns, id(loaded.model))
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _read(root, loaded)
    return _CACHE[key]


def _read(root: Path, loaded: LoadedModel) -> Generator:
    meta = json.loads((root / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{root}/{META_FILE}: format {meta.get('format_version')} is not {FORMAT_VERSION}")
    if meta.get("vocab_sha256") != vocab_sha256(loaded.vocab):
        raise CheckpointError(f"{root}: the generator was trained on another gene vocabulary; retrain it")
    if meta.get("model_weights_sha256") != file_sha256(root / MODEL_WEIGHTS):
        raise CheckpointError(f"{root}: the generator was trained with other model weights (the checkpoint was "
                              "retrained since); its condition vectors would not match: retrain the generator")
    if meta.get("weights_sha256") != file_sha256(root / WEIGHTS_FILE):
        raise CheckpointError(f"{root}: {WEIGHTS_FILE} does not match {META_FILE} (interrupted write?); retrain it")
    cfg = GeneratorConfig(**meta["config"])
    if cfg.lm_hidden != loaded.model.backbone.hidden_size:
        raise CheckpointError(f"{root}: generator expects an LM width of {cfg.lm_hidden}, "
                              f"the backbone has {loaded.model.backbone.hidden_size}")
    state = {k: v.float() for k, v in load_file(str(root / WEIGHTS_FILE)).items()}
    table = ConditionTable.from_list(meta["conditions"])
    incidence = torch.tensor(condition_incidence(table)) if cfg.factorized_signal else None
    vae, head = CountVAE(cfg), SignalHead(cfg.lm_hidden, torch.zeros(cfg.n_conditions, cfg.cond_dim), incidence=incidence)
    vae_state = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    result = vae.load_state_dict(vae_state, strict=False)
    if result.unexpected_keys or any(not k.startswith("encoder.") for k in result.missing_keys):
        raise CheckpointError(f"{root}/{WEIGHTS_FILE} does not fit the generator config: {result}")
    head.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("signal.")})
    device = loaded.model.device
    info = {k: v for k, v in meta.items() if k not in ("config", "conditions")}
    return Generator(cfg, vae.to(device).eval(), head.to(device).eval(), table, info)
