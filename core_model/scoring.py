"""How candidate answers are scored: on every token, or on their decisive tokens only.

A candidate's decisive tokens are those up to and including the first one no other candidate
shares (see `CellLanguageModel.score_candidates`). For labels the model learned to write, the
tokens after that are near-certain once it has committed, so skipping them changes few answers
and saves most of the language model's work per cell; for strings it never learned they are
not near-certain, so "auto" scores those in full. Torch-free, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

from typing import Any

SCORINGS = ("auto", "decisive", "full")


def check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")


def use_decisive(scoring: str, learned_only: bool) -> bool:
    """Whether to score decisive tokens only, given whether every answer scored is a learned label."""
    check_scoring(scoring)
    return scoring == "decisive" or (scoring == "auto" and learned_only)


def scoring_name(decisive: bool) -> str:
    """What provenance and metrics record."""
    return "decisive tokens" if decisive else "full"


def add_scoring_argument(parser: Any) -> None:
    parser.add_argument("--scoring", choices=SCORINGS, default="auto",
                        help="auto (default): labels the checkpoint learned are scored on their decisive tokens "
                             "(the ones that tell them apart; several times faster), other strings on every token; "
                             "full: every token; decisive: decisive tokens always")
