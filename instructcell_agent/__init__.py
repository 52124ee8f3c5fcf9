"""instructcell-agent: an instruction-following single-cell language model, served to agents.

    import instructcell_agent as ica
    model = ica.load_model()
    result = ica.annotate(adata, model=model)

Public names are imported lazily so `import instructcell_agent` stays cheap (no torch import).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["annotate", "predict_drug_response", "load_model", "default_checkpoint_path", "AnnotationResult", "explain"]
_WHERE = {
    "annotate": ".api", "predict_drug_response": ".api", "load_model": ".api", "default_checkpoint_path": ".api",
    "AnnotationResult": ".results", "explain": ".interpret.api",
}
__all__ += ["generate_cells"]
_WHERE["generate_cells"] = ".api"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'instructcell_agent' has no attribute {name!r}")
