"""`instructcell annotate --by-markers`: cell types from known markers alone, for types the model
never learned (instructcell_agent/interpret/marker_annotation.py); `annotate` writes and prints
these answers as it does the model's."""

from __future__ import annotations

from .interpret.marker_annotation import annotate_by_markers, markers_line, read_marker_file

__all__ = ["by_markers_result", "markers_line", "unlearned_only_result"]

# what the marker route has no use for: each is refused rather than silently ignored
_NOT_BY_MARKERS = {"instruction": "--instruction", "resolve_at": "--resolve-at", "free_text": "--free-text",
                   "unassigned_atypical": "--unassigned-atypical", "fast": "--fast", "no_readout": "--no-readout",
                   "no_markers": "--no-markers"}


def by_markers_result(args, adata, candidates):
    """The answers of `annotate --by-markers` (refusing the options that ask a model), which `annotate`
    then writes and prints as it does its own."""
    if not args.by_markers:
        raise ValueError("--markers is read by --by-markers: add --by-markers to answer from them")
    given = [flag for name, flag in _NOT_BY_MARKERS.items() if getattr(args, name, None)]
    if given:
        raise ValueError(f"--by-markers asks no model, so {', '.join(given)} does not apply; leave it out")
    markers = read_marker_file(args.markers) if args.markers else None
    candidates = candidates or (list(markers) if markers else None)
    if not candidates:
        raise ValueError("--by-markers needs the cell types to choose from: --candidates 'Hepatocyte,Kupffer cell,...' "
                         "(the database's names or the ones your --markers file gives)")
    return annotate_by_markers(adata, candidates, markers=markers, marker_db=args.by_markers, model=args.checkpoint,
                               species=args.species or None, layer=args.layer, use_raw=args.use_raw,
                               gene_key=args.gene_key, unassigned_below=args.unassigned_below)


def unlearned_only_result(args, adata, candidates):
    """`annotate`'s answer where it would come from the candidates' known markers anyway (none of them
    is a type the checkpoint learned, and no option only the model answers was asked; see
    instructcell_agent/unlearned_candidates.py), found without loading the model, which takes seconds
    and the language model's memory; None where the model is needed, or where the markers cannot
    answer (then `annotate` scores the names as strings, with its warning)."""
    from .api import default_checkpoint_path
    from .core_model.candidate_route import route_candidates
    from .core_model.io import read_checkpoint_lists
    from .unlearned_candidates import answer_by_markers, by_markers_answer

    if args.command != "annotate" or getattr(args, "no_markers", False) or not candidates:
        return None
    if len(set(candidates)) != len(candidates) or len(candidates) < 2:
        return None  # annotate refuses these, with its own message
    checkpoint = args.checkpoint or default_checkpoint_path()
    _, label_sets = read_checkpoint_lists(checkpoint)
    route = route_candidates(candidates, label_sets)
    if not answer_by_markers(route, instruction=args.instruction, fast=args.fast, resolve_at=args.resolve_at,
                             unassigned_atypical=args.unassigned_atypical):
        return None
    return by_markers_answer(adata, checkpoint, route, species=args.species or "",
                             unassigned_below=args.unassigned_below, layer=args.layer, use_raw=args.use_raw,
                             gene_key=args.gene_key)
