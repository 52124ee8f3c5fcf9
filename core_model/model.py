"""CellLanguageModel: a Q-Former cell encoder whose query outputs are spliced into a frozen causal
language model's prompt.

Prompt layout (ChatML, the backbone's own chat format)::

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{instruction}\n   <- prefix (text)
    [n_queries soft tokens from the cell encoder]                                 <- the cell
    <|im_end|>\n<|im_start|>assistant\n                                          <- suffix (text)
    {answer}<|im_end|>                                                            <- scored / generated

The cell comes after the instruction on purpose: the prefix does not depend on the cell, so one
forward pass over it serves a whole batch (its key/value cache is shared), and only the few cell,
suffix and answer tokens are run per cell. Every task (training, scoring, generation, saliency)
goes through `start`/`extend` below, so they all see exactly the same prompt.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn
from transformers import DynamicCache

from .backbone import Backbone
from .cell_encoder import CellEncoder, log_normalize
from .config import ModelConfig
from .lora import adapters_active, inject_lora
from .tries import AnswerTrie, CandidateTrie, decisive_tokens

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SUFFIX_TEXT = f"{IM_END}\n{IM_START}assistant\n"
# Distinct prompts that open with at least this many equal tokens read them once (`start`).
MIN_SHARED_TOKENS = 8


@dataclass
class Context:
    """A batch of partially read prompts: the LM's key/value cache plus mask and next positions."""

    cache: DynamicCache
    mask: torch.Tensor  # (B, L) 1 for real tokens, 0 for left padding
    next_pos: torch.Tensor  # (B,) position id of the next token
    # Set once a cell was read into it: the cache then holds that cell (and whatever followed), so
    # a second cell would be read after the first's answer. Scoring candidates on the context a
    # training step had already extended with the answers did just that (the ranking loss before
    # 2026-12-07); `read_cell` now refuses.
    holds_cell: bool = False

    def repeat_interleave(self, n: int) -> Context:
        """A copy with every row repeated `n` times (row i -> rows i*n .. i*n+n-1)."""
        cache = DynamicCache()
        for idx, layer in enumerate(self.cache.layers):
            cache.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0), idx)
        return Context(cache, self.mask.repeat_interleave(n, 0), self.next_pos.repeat_interleave(n, 0),
                       self.holds_cell)


def cache_argument(lm_model: nn.Module) -> str:
    """Name of the key/value cache in the backbone's forward call and output.

    transformers 5.24 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40);
    earlier 5.x releases know only `past_key_values`. Asking the signature works for both.
    """
    return "cache" if "cache" in inspect.signature(lm_model.forward).parameters else "past_key_values"


class CellLanguageModel(nn.Module):
    """Cell encoder + projection (trained) in front of a frozen backbone LM."""

    def __init__(self, cfg: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.lm = backbone.model
        if cfg.lora_rank:
            for param in inject_lora(self.lm, cfg.lora_rank):
                param.requires_grad_(False)  # like the backbone; training switches them on
        self.encoder = CellEncoder(cfg.encoder)
        self.proj = nn.Linear(cfg.encoder.dim, backbone.hidden_size)
        # Soft tokens are RMS-normalized to a learned per-dimension scale that starts at the
        # scale of real token embeddings: the frozen LM never sees vectors far outside what it
        # was trained on, however the projection's weights move.
        emb_rms = float(self.lm.get_input_embeddings().weight.detach().pow(2).mean().sqrt())
        self.token_scale = nn.Parameter(torch.full((backbone.hidden_size,), emb_rms))
        self._suffix_ids = self.encode_text(SUFFIX_TEXT)
        self._end_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        self._prefix_memo: dict[tuple[str, bool], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._head_memo: dict[tuple[tuple[int, ...], bool], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._trie_memo: dict[tuple[tuple[str, ...], bool, bool], CandidateTrie] = {}
        self._cache_arg = cache_argument(self.lm.model)

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    @property
    def lm_dtype(self) -> torch.dtype:
        """The backbone's compute dtype (float32, or bfloat16 after `use_lm_dtype`)."""
        return self.lm.lm_head.weight.dtype

    @property
    def precision(self) -> str:
        """`lm_dtype` as recorded in provenance: "float32" or "bfloat16"."""
        return str(self.lm_dtype).removeprefix("torch.")

    def use_lm_dtype(self, dtype: torch.dtype) -> None:
        """Run the backbone (and its adapters) in `dtype`; the cell encoder stays float32.

        bfloat16 is for inference: on CPUs with AMX or AVX-512 BF16 its matrix products run
        several times faster than float32 (on a GPU this small LM gains nothing from it; see
        core_model/precision.py). Everything that leaves the LM (log-probabilities, hidden
        states for the generator) is cast back to float32, so callers see one dtype either way.
        """
        if self.lm_dtype != torch.float32 and dtype != self.lm_dtype:
            # The cast down rounded every weight; casting back would not restore them, and every
            # later answer would differ a little from a float32 load (benchmarks that timed
            # bfloat16 between float32 runs did exactly that before `lm_dtype_as`).
            raise ValueError(f"the backbone runs in {self.lm_dtype} and its weights were rounded to it; "
                             f"reload the checkpoint in {dtype}, or switch with `lm_dtype_as` for a while")
        self.lm.to(dtype)
        self.forget_prompts()  # cached keys/values are in the old dtype

    @contextmanager
    def lm_dtype_as(self, dtype: torch.dtype) -> Iterator[CellLanguageModel]:
        """Run the backbone in `dtype` inside the block, then put back its exact weights (a copy
        of them is kept meanwhile: about 0.5 GB for the 135M backbone in float32). Buffers are
        kept too: the rotary inverse frequencies are cast with the weights but are not in the
        state dict, and rounding them alone moves every score."""
        def tensors():
            return chain(self.lm.named_parameters(), self.lm.named_buffers())

        saved = {name: t.detach().clone() for name, t in tensors()}
        old = self.lm_dtype
        self.lm.to(dtype)
        self.forget_prompts()
        try:
            yield self
        finally:
            self.lm.to(old)
            with torch.no_grad():
                for name, t in tensors():
                    t.copy_(saved[name])
            self.forget_prompts()

    def forget_prompts(self) -> None:
        """Drop the memoised prompt keys/values: they are stale once the adapters' weights change
        (training calls this after every language-model step) or the backbone's dtype does."""
        self._prefix_memo.clear()
        self._head_memo.clear()

    @property
    def end_token_id(self) -> int:
        return int(self._end_id)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights a checkpoint stores: everything except the frozen backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.") or ".lora_" in k}

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.lm.named_parameters() if ".lora_" in n]

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_text(self, instruction: str) -> str:
        return f"{IM_START}system\n{self.cfg.system_prompt}{IM_END}\n{IM_START}user\n{instruction.strip()}\n"

    def normalize(self, counts: torch.Tensor) -> torch.Tensor:
        """Count-scale expression over the vocabulary -> the model's log1p(CP10k) input."""
        return log_normalize(counts, self.cfg.target_sum)

    def cell_tokens(self, expr: torch.Tensor) -> torch.Tensor:
        """Log-normalized expression (B, n_genes) -> soft tokens (B, n_queries, hidden)."""
        tokens = self.proj(self.encoder(expr))
        return tokens * torch.rsqrt(tokens.pow(2).mean(-1, keepdim=True) + 1e-6) * self.token_scale

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    # ------------------------------------------------------------- contexts
    @torch.no_grad()
    def start(self, prefix_texts: list[str], rows: torch.Tensor | None = None) -> Context:
        """Read the prompt prefixes; row b of the result holds prefix_texts[rows[b]].

        Distinct prefixes are run once each (left-padded in one batch); rows sharing a prefix
        share its cache. A single prefix is memoised, since batches usually repeat it; so is the
        opening that distinct prefixes share (`_run_prefixes`).
        """
        if rows is None:
            rows = torch.arange(len(prefix_texts))
        rows = rows.to(self.device)
        # keyed on the adapter switch too: the same text reads differently without adapters
        memo_key = (prefix_texts[0], adapters_active()) if len(prefix_texts) == 1 else None
        if memo_key is not None and memo_key in self._prefix_memo:
            keys, values = self._prefix_memo[memo_key]
            mask = torch.ones(1, keys[0].shape[2], dtype=torch.long, device=self.device)
        else:
            keys, values, mask = self._run_prefixes(prefix_texts)
            if memo_key is not None:
                if len(self._prefix_memo) >= 16:
                    self._prefix_memo.pop(next(iter(self._prefix_memo)))
                self._prefix_memo[memo_key] = (keys, values)
        cache = DynamicCache()
        for idx, (k, v) in enumerate(zip(keys, values)):
            cache.update(k.index_select(0, rows), v.index_select(0, rows), idx)
        mask = mask.index_select(0, rows)
        return Context(cache, mask, mask.sum(1))

    def _run_prefixes(self, texts: list[str]):
        ids = [self.encode_text(t) for t in texts]
        # The tokens every prompt opens with (the system prompt and user header at least, about a
        # third of a typical prompt; the instruction's first words when one phrasing is asked with
        # per-cell option orders) are read once, memoised across batches, and each prompt's own
        # remainder runs on top of them. At least one token of each prompt is left to run.
        shared = min(len(os.path.commonprefix(ids)), min(map(len, ids)) - 1) if len(ids) > 1 else 0
        if shared < MIN_SHARED_TOKENS:
            return self._read(ids)
        return self._read([x[shared:] for x in ids], self._head(ids[0][:shared]))

    def _head(self, ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        key = (tuple(ids), adapters_active())
        if key not in self._head_memo:
            if len(self._head_memo) >= 16:
                self._head_memo.pop(next(iter(self._head_memo)))
            keys, values, _ = self._read([ids])
            self._head_memo[key] = (keys, values)
        return self._head_memo[key]

    def _read(self, ids: list[list[int]], head: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None):
        """Run token sequences, left-padded into one batch, after the shared `head`'s keys/values
        when given; the padding then sits between the head and each sequence, hidden by the mask
        and skipped by the positions. Returns every layer's keys and values and the mask."""
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        past = {}
        if head is not None:
            cache, shared = DynamicCache(), head[0][0].shape[2]
            for idx, (k, v) in enumerate(zip(*head)):
                cache.update(k.expand(len(ids), -1, -1, -1), v.expand(len(ids), -1, -1, -1), idx)
            mask = torch.cat([torch.ones(len(ids), shared, dtype=mask.dtype, device=self.device), mask], 1)
            pos, past = pos + shared, {self._cache_arg: cache}
        out = self.lm.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, **past)
        cache = getattr(out, self._cache_arg)
        return [l.keys for l in cache.layers], [l.values for l in cache.layers], mask

    def extend(self, ctx: Context, embeds: torch.Tensor) -> torch.Tensor:
        """Append `embeds` (B, T, H) to every prompt in `ctx`; returns their hidden states."""
        batch, steps = embeds.shape[:2]
        embeds = embeds.to(self.lm_dtype)
        mask = torch.cat([ctx.mask, torch.ones(batch, steps, dtype=ctx.mask.dtype, device=self.device)], 1)
        pos = ctx.next_pos[:, None] + torch.arange(steps, device=self.device)
        out = self.lm.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True,
            **{self._cache_arg: ctx.cache}
        )
        ctx.mask, ctx.next_pos = mask, ctx.next_pos + steps
        return out.last_hidden_state

    def read_cell(self, ctx: Context, expr: torch.Tensor) -> torch.Tensor:
        """Append the cell's soft tokens and the assistant header; returns the last hidden state."""
        if ctx.holds_cell:
            raise ValueError("this context already holds a cell: read each cell into a fresh `start(...)` context")
        ctx.holds_cell = True
        suffix = torch.tensor(self._suffix_ids, device=self.device)
        suffix = self.embed_ids(suffix).unsqueeze(0).expand(expr.shape[0], -1, -1)
        hidden = self.extend(ctx, torch.cat([self.cell_tokens(expr).to(suffix.dtype), suffix], 1))
        return hidden[:, -1]

    # --------------------------------------------------------------- tasks
    def pad_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer texts -> (ids, mask), each answer followed by the end-of-turn token."""
        ids = [self.encode_text(a) + [self.end_token_id] for a in answers]
        width = max(len(x) for x in ids)
        out = torch.full((len(ids), width), self.end_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), width)
        for i, x in enumerate(ids):
            out[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return out.to(self.device), mask.to(self.device)

    def answer_logprob(self, ctx: Context, expr: torch.Tensor, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probability of each row's answer: (per-token (B, A), mask (B, A))."""
        ids, mask = self.pad_answers(answers)
        last = self.read_cell(ctx, expr)
        logits = [self.lm.lm_head(last).unsqueeze(1)]
        if ids.shape[1] > 1:
            logits.append(self.lm.lm_head(self.extend(ctx, self.embed_ids(ids[:, :-1]))))
        logp = torch.log_softmax(torch.cat(logits, 1).float(), -1)
        return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask, mask

    def score_candidates(self, ctx: Context, expr: torch.Tensor, candidates: list[str],
                         share_prefixes: bool = True, decisive: bool = False) -> torch.Tensor:
        """Log-likelihood (B, C) of each candidate answer for each cell.

        The cell is read once. The candidates' tokens then run as ONE packed row per cell, laid
        out as a token trie: candidates that begin alike ('CD4+/CD45RA+ ...', 'CD4+/CD25 ...')
        share the tokens of their common start, and a custom attention mask lets each token see
        the cell's prompt and its own ancestors in the trie only. Repeating the prompt cache
        once per candidate (the obvious way) spends most of the time copying that cache;
        packing avoids it, and sharing prefixes cuts the tokens run (84 -> 60 for zheng2017's
        ten labels). `share_prefixes=False` runs every candidate's tokens on their own (same
        scores; kept to check and time the sharing against).

        `decisive=True` scores each candidate on its decisive tokens only: those up to and
        including the first one no other candidate shares ('CD4+/CD45RO+' of 'CD4+/CD45RO+
        Memory'). For labels the model learned to write, the tokens after that point are
        near-certain once it has committed (probability ~1), so they change little but cost most
        of the run: 60 -> 10 candidate tokens per cell for zheng2017's ten labels, 23 -> 1 for
        kang2018's seven (see `decisive_tokens`). For strings it never learned the rest of the
        string is not near-certain, so callers keep full scoring there.
        """
        trie = self._candidate_trie(tuple(candidates), share_prefixes, decisive)
        first = torch.log_softmax(self.lm.lm_head(self.read_cell(ctx, expr)).float(), -1)
        scores = first[:, trie.first_tokens]  # (B, C)
        if trie.tokens.numel() == 0:
            return scores
        hidden = self._extend_packed(ctx, trie.tokens, trie.ancestors, trie.offsets)  # (B, T, H)
        logits = self.lm.lm_head(hidden).float()
        norm = torch.logsumexp(logits, -1)  # (B, T)
        term_logp = logits[:, trie.term_node, trie.term_target] - norm[:, trie.term_node]  # (B, K)
        return scores.index_add(1, trie.term_candidate, term_logp)

    def _candidate_trie(self, candidates: tuple[str, ...], share_prefixes: bool = True,
                        decisive: bool = False) -> CandidateTrie:
        key = (candidates, share_prefixes, decisive)
        if key not in self._trie_memo:
            if len(self._trie_memo) >= 32:
                self._trie_memo.pop(next(iter(self._trie_memo)))
            seqs = [self.encode_text(c) + [self.end_token_id] for c in candidates]
            self._trie_memo[key] = CandidateTrie(decisive_tokens(seqs) if decisive else seqs, share_prefixes)
        return self._trie_memo[key].to(self.device)

    def _extend_packed(self, ctx: Context, tokens: torch.Tensor, inner: torch.Tensor,
                       offset: torch.Tensor) -> torch.Tensor:
        """Run T packed tokens after every prompt in `ctx` (`offset`: each token's position after
        the prompt); token i attends to the prompt and to the tokens j with inner[i, j]."""
        batch, steps = ctx.mask.shape[0], tokens.shape[0]
        allowed = torch.cat([ctx.mask.bool()[:, None, :].expand(batch, steps, -1),
                             inner[None].expand(batch, -1, -1)], -1)
        dtype = self.lm_dtype
        additive = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        additive = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # (B, 1, T, L + T)
        embeds = self.embed_ids(tokens).unsqueeze(0).expand(batch, -1, -1)
        pos = ctx.next_pos[:, None] + offset[None, :]
        out = self.lm.model(inputs_embeds=embeds, attention_mask=additive, position_ids=pos,
                            use_cache=True, **{self._cache_arg: ctx.cache})
        # The cache now holds packed tokens that later positions must not see: the context is spent.
        ctx.mask = torch.cat([ctx.mask, torch.zeros(batch, steps, dtype=ctx.mask.dtype, device=self.device)], 1)
        return out.last_hidden_state

    @torch.no_grad()
    def generate(self, ctx: Context, expr: torch.Tensor, max_new_tokens: int | None = None,
                 return_logprob: bool = False, allowed: Sequence[str] | Sequence[Sequence[str]] | None = None,
                 decisive: bool = False):
        """Greedy answer text for each cell (stops at the end-of-turn token).

        With `return_logprob`, also the log-probability of each answer (its tokens and the end
        token), i.e. the model's confidence in exactly that text. With `allowed`, decoding is
        constrained to those answers (a token trie): each step takes the most likely token that
        still leads to one of them, so the answer is always a label the model knows how to name;
        the log-probability stays the model's own (not renormalized over the allowed answers).
        `allowed` is one list of answers for every cell, or one list per cell.

        `decisive=True` (with `allowed`) stops running the LM once every row has only one allowed
        answer left: the remaining tokens are forced by the constraint, so the texts are exactly
        those of the full run, and the log-probability covers the decisive tokens only (the
        tokens the model chose between; see `score_candidates`).
        """
        steps = max_new_tokens or self.cfg.max_answer_tokens
        trie, prefixes = self._answer_trie(allowed, expr.shape[0]) if allowed else (None, [()] * expr.shape[0])
        if trie is not None:
            steps = max(steps, trie.depth)
        logits = self.lm.lm_head(self.read_cell(ctx, expr))
        done = torch.zeros(expr.shape[0], dtype=torch.bool, device=self.device)
        total = torch.zeros(expr.shape[0], device=self.device)
        out: list[torch.Tensor] = []
        forced: list[list[int]] = [[] for _ in range(expr.shape[0])]
        for _ in range(steps):
            logp = torch.log_softmax(logits.float(), -1)
            token = (logp + trie.mask(prefixes, logp.shape[1], self.device)).argmax(-1) if trie else logp.argmax(-1)
            if trie is not None:
                prefixes = [p + (t,) for p, t in zip(prefixes, token.tolist())]
            total += torch.where(done, torch.zeros_like(total), logp.gather(1, token[:, None]).squeeze(1))
            token = torch.where(done, torch.full_like(token, self.end_token_id), token)
            out.append(token)
            done |= token == self.end_token_id
            if decisive and trie is not None:
                # a decided row is finished here: its forced rest is appended below, unscored
                for r, (d, p) in enumerate(zip(done.tolist(), prefixes)):
                    if not d and (rest := trie.forced_rest(p)) is not None:
                        forced[r], done[r] = rest, True
            if bool(done.all()):
                break
            logits = self.lm.lm_head(self.extend(ctx, self.embed_ids(token[:, None]))[:, -1])
        texts = []
        for row, rest in zip(torch.stack(out, 1).tolist(), forced):
            row = (row[: row.index(self.end_token_id)] if self.end_token_id in row else row) + rest
            row = row[: row.index(self.end_token_id)] if self.end_token_id in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return (texts, total.cpu().numpy()) if return_logprob else texts

    def _answer_trie(self, allowed: Sequence[str] | Sequence[Sequence[str]], n: int):
        """One trie for all rows; with per-row lists each distinct list gets its own root, a
        negative sentinel id that no real token has, so a row only continues its own answers."""
        if isinstance(allowed[0], str):
            lists, row_group = [list(allowed)], [0] * n
        else:
            if len(allowed) != n:
                raise ValueError(f"allowed has {len(allowed)} lists for {n} cells")
            distinct = sorted({tuple(a) for a in allowed})
            lists, row_group = [list(d) for d in distinct], [distinct.index(tuple(a)) for a in allowed]
        seqs = [[-1 - g] + self.encode_text(a) + [self.end_token_id] for g, answers in enumerate(lists) for a in answers]
        trie = AnswerTrie(seqs)
        trie.depth -= 1  # the sentinel is not a decoding step
        return trie, [(-1 - g,) for g in row_group]
