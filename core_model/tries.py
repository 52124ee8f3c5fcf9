"""Token tries over answer texts: what scoring and constrained decoding run on.

`CandidateTrie` packs candidate labels so that their shared opening tokens run once;
`AnswerTrie` says which tokens may follow a partial answer; `decisive_tokens` cuts each label
where it parts from the others. Token ids only: no model, no tokenizer.
"""

from __future__ import annotations

import torch


def decisive_tokens(sequences: list[list[int]]) -> list[list[int]]:
    """Each sequence cut after its first token that no other sequence shares at that place
    (the shortest prefix that tells it apart); a sequence that is a prefix of another keeps
    its end token, which is then what tells them apart."""
    shared: dict[tuple[int, ...], int] = {}  # how many sequences begin with each prefix
    for seq in sequences:
        for k in range(1, len(seq) + 1):
            shared[tuple(seq[:k])] = shared.get(tuple(seq[:k]), 0) + 1
    return [seq[: next((k for k in range(1, len(seq) + 1) if shared[tuple(seq[:k])] == 1), len(seq))]
            for seq in sequences]


class AnswerTrie:
    """Token-id sequences of the allowed answers, for constrained greedy decoding."""

    def __init__(self, sequences: list[list[int]]) -> None:
        self.children: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            for i, token in enumerate(seq):
                self.children.setdefault(tuple(seq[:i]), set()).add(token)
        self.depth = max(len(s) for s in sequences)

    def forced_rest(self, prefix: tuple[int, ...]) -> list[int] | None:
        """The only allowed continuation of `prefix` (through the end token), or None when the
        allowed answers still branch after it."""
        rest: list[int] = []
        while (nxt := self.children.get(prefix + tuple(rest))) is not None:
            if len(nxt) > 1:
                return None
            rest.append(next(iter(nxt)))
        return rest

    def mask(self, prefixes: list[tuple[int, ...]], vocab: int, device: torch.device) -> torch.Tensor:
        """(B, vocab) additive mask: 0 for tokens that continue an allowed answer, -inf elsewhere.
        A finished row (no continuation) gets no mask; the caller pads it with the end token."""
        out = torch.full((len(prefixes), vocab), float("-inf"), device=device)
        for row, prefix in enumerate(prefixes):
            nxt = self.children.get(prefix)
            if nxt is None:
                out[row] = 0.0
            else:
                out[row, list(nxt)] = 0.0
        return out


class CandidateTrie:
    """Candidate answers (token ids, each ending with the end token) packed as a prefix tree.

    Every proper prefix of a candidate is one input token (its last token), run once however
    many candidates share it. A candidate's log-likelihood is the first token's log-probability
    after the cell plus one term per later token: its log-probability at the node of the
    prefix before it. Index tensors (built once per candidate list):
      first_tokens (C,)           each candidate's first token
      tokens, offsets (T,)        node tokens and their depth (0 = first answer token)
      ancestors (T, T) bool       node i may attend to node j (j is i or a prefix of i)
      term_node, term_target, term_candidate (K,)  the later-token terms
    """

    def __init__(self, sequences: list[list[int]], share_prefixes: bool = True) -> None:
        # share_prefixes=False gives every candidate its own nodes (the plain packed layout)
        def key(c: int, prefix: tuple[int, ...]) -> tuple[int, ...]:
            return prefix if share_prefixes else (c, *prefix)

        node_of: dict[tuple[int, ...], int] = {}
        tokens, offsets = [], []
        term_node, term_target, term_candidate = [], [], []
        for c, seq in enumerate(sequences):
            for i in range(1, len(seq)):
                node = node_of.setdefault(key(c, tuple(seq[:i])), len(tokens))
                if node == len(tokens):
                    tokens.append(seq[i - 1])
                    offsets.append(i - 1)
                term_node.append(node)
                term_target.append(seq[i])
                term_candidate.append(c)
        ancestors = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
        for c, seq in enumerate(sequences):
            for i in range(1, len(seq)):
                for depth in range(1, i + 1):
                    ancestors[node_of[key(c, tuple(seq[:i]))], node_of[key(c, tuple(seq[:depth]))]] = True
        self.first_tokens = torch.tensor([s[0] for s in sequences], dtype=torch.long)
        self.tokens = torch.tensor(tokens, dtype=torch.long)
        self.offsets = torch.tensor(offsets, dtype=torch.long)
        self.ancestors = ancestors
        self.term_node = torch.tensor(term_node, dtype=torch.long)
        self.term_target = torch.tensor(term_target, dtype=torch.long)
        self.term_candidate = torch.tensor(term_candidate, dtype=torch.long)

    def to(self, device: torch.device) -> CandidateTrie:
        if self.tokens.device != device:
            for name, value in vars(self).items():
                setattr(self, name, value.to(device))
        return self
