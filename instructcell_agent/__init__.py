"""instructcell-agent: an instruction-following single-cell language model, served to agents.

    import instructcell_agent as ica
    model = ica.load_model()
    result = ica.annotate(adata, model=model)

Public names are imported lazily so `import instructcell_agent` stays cheap (no torch import).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "annotate": ".api", "predict_drug_response": ".api", "generate_cells": ".api", "load_model": ".api",
    "default_checkpoint_path": ".api", "AnnotationResult": ".results", "explain": ".interpret.api",
    "marker_check": ".interpret.marker_check", "annotate_by_markers": ".interpret.marker_annotation",
    "read_cells": ".core_model.readers", "read_samples": ".core_model.samples",
    "join_obs_table": ".core_model.obs_table", "tissue_cell_types": ".interpret.tissue_types",
}
__all__ = [*_WHERE, "__version__"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instructcell-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'instructcell_agent' has no attribute {name!r}")
