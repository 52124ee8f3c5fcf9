"""`instructcell annotate --by-markers`: cell types from known markers alone, for types the model
never learned (instructcell_agent/interpret/marker_annotation.py); `annotate` writes and prints
these answers as it does the model's."""

from __future__ import annotations

from .interpret.marker_annotation import annotate_by_markers, markers_line, read_marker_file

__all__ = ["by_markers_result", "markers_line"]

# what the marker route has no use for: each is refused rather than silently ignored
_NOT_BY_MARKERS = {"instruction": "--instruction", "resolve_at": "--resolve-at", "free_text": "--free-text",
                   "unassigned_atypical": "--unassigned-atypical", "fast": "--fast", "no_readout": "--no-readout",
                   "marker_check": "--marker-check (markers checked against themselves)", "no_markers": "--no-markers"}


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
