"""The generator's files in a checkpoint directory: generator.safetensors + generator.json.

They sit beside the model's own files and are optional: a checkpoint without them annotates as
before and says, when asked to generate, how to add them (`instructcell train-generator`).
Weights are fp16 (loaded as fp32); the JSON holds the config, the table of training conditions,
the vocabulary hash and the weights' hash, so a mismatched pair of files is refused.

What the signal token reads through decides what the generator is bound to. With the LoRA
adapters off (the default since they are tuned for annotation and drug response, and read
generation requests worse) the reader is the backbone as its package ships it plus the prompt
format: the generator stays valid when the cell model is retrained, and is refused only on
another backbone build or system prompt. With the adapters on (or a fine-tuned backbone) it is
bound to the exact weights file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import LoadedModel
from ..config import ModelConfig
from ..errors import CheckpointError
from ..io import atomic_target, file_sha256, vocab_sha256, write_json_atomic
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
    lm_adapters: bool = True  # whether the signal token reads instructions through the LoRA adapters

    @property
    def table_vectors(self) -> torch.Tensor:
        """(n_conditions, cond_dim): the stage-1 vector of each training condition."""
        return self.head.table

    def nearest(self, vectors: torch.Tensor) -> list[int]:
        """Index of the training condition whose vector is closest to each of `vectors`."""
        dist = torch.cdist(vectors.float(), self.table_vectors.to(vectors.device).float())
        return dist.argmin(1).tolist()


def reader_sha256(model_cfg: ModelConfig) -> str:
    """Hash of what reads a generation prompt when the adapters are off: the backbone build
    (its file hash where known, else its name and size settings) and the system prompt. The
    backbone's path is left out, so a moved model directory still matches."""
    backbone = {k: v for k, v in dataclasses.asdict(model_cfg.backbone).items() if k != "path"}
    key = {"backbone": backbone, "system_prompt": model_cfg.system_prompt}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _bound_to_backbone(lm_adapters: bool, model_cfg: ModelConfig) -> bool:
    """Whether the generator depends on the backbone only, not on the cell model's weights file."""
    return not lm_adapters and not model_cfg.lm_trained


def has_generator(path: str | os.PathLike | None) -> bool:
    """Whether a checkpoint directory holds generator files."""
    return path is not None and all((Path(path) / f).is_file() for f in (WEIGHTS_FILE, META_FILE))


def rebind_model_weights(checkpoint_dir: str | os.PathLike, old_sha256: str) -> bool:
    """After the cell model's weights file was rewritten without retraining (stored in another
    precision), point generator.json at the new file. Refuses when the generator was trained
    against other weights than `old_sha256`. Returns False when there is no generator."""
    root = Path(checkpoint_dir)
    if not has_generator(root):
        return False
    meta = json.loads((root / META_FILE).read_text())
    if meta.get("bound_to") == "backbone":  # any weights file will do; keep the record current
        meta["model_weights_sha256"] = file_sha256(root / MODEL_WEIGHTS)
        write_json_atomic(meta, root / META_FILE)
        return True
    if meta.get("model_weights_sha256") != old_sha256:
        raise CheckpointError(f"{root}: the generator was not trained with the weights being replaced; retrain it")
    meta["model_weights_sha256"] = file_sha256(root / MODEL_WEIGHTS)
    meta["model_weights_trained_with_sha256"] = old_sha256
    write_json_atomic(meta, root / META_FILE)
    return True


def save_generator(loaded: LoadedModel, gen: Generator) -> Path:
    """Write the generator files into a checkpoint's directory, each atomically (temp + rename).

    Parameters
    ----------
    loaded
        The checkpoint the generator was trained on (must have a directory).
    gen
        The trained generator.

    Returns
    -------
    pathlib.Path
        The path of generator.json.
    """
    if loaded.path is None:
        raise ValueError("the checkpoint has no directory to add the generator to")
    root = Path(loaded.path)
    bound = "backbone" if _bound_to_backbone(gen.lm_adapters, loaded.model.cfg) else "model_weights"
    weights_tmp, meta_tmp = atomic_target(root, WEIGHTS_FILE), atomic_target(root, META_FILE)
    try:
        save_file(generation_state(gen.vae, gen.head), str(weights_tmp))
        meta = {"format_version": FORMAT_VERSION, "config": gen.cfg.to_dict(), "conditions": gen.table.to_list(),
                "vocab_sha256": vocab_sha256(loaded.vocab), "weights_sha256": file_sha256(weights_tmp),
                "lm_adapters": gen.lm_adapters, "bound_to": bound, "reader_sha256": reader_sha256(loaded.model.cfg),
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
    if meta.get("bound_to") == "backbone":  # (files without "bound_to" read through the adapters)
        if meta.get("reader_sha256") != reader_sha256(loaded.model.cfg):
            raise CheckpointError(f"{root}: the generator was trained on another backbone or system prompt; its "
                                  "condition vectors would not match: retrain the generator")
    elif meta.get("model_weights_sha256") != file_sha256(root / MODEL_WEIGHTS):
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
    return Generator(cfg, vae.to(device).eval(), head.to(device).eval(), table, info,
                     lm_adapters=bool(meta.get("lm_adapters", True)))
