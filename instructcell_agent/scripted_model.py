"""A chat model that follows a fixed plan of tool calls: agent demos and tests without a network.

    model = ScriptedChatModel(plan=[("inspect_dataset", {"h5ad_path": "pbmc.h5ad"}),
                                    ("annotate_cells", {"h5ad_path": "pbmc.h5ad"})])
    agent = langchain.agents.create_agent(model, tools)

Each turn it issues the next planned call (arguments may be a function of the conversation so
far, to use an earlier result); when the plan is done it answers with a short summary of the
tool results it received. It never invents anything beyond that summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

Arguments = dict[str, Any] | Callable[[list[BaseMessage]], dict[str, Any]]


class ScriptedChatModel(BaseChatModel):
    plan: list[tuple[str, Arguments]]
    bound_tools: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> "ScriptedChatModel":
        names = [getattr(t, "name", None) or (t.get("name") if isinstance(t, dict) else str(t)) for t in tools]
        missing = sorted({name for name, _ in self.plan} - set(names))
        if missing:
            raise ValueError(f"the plan calls tools that were not bound: {missing}")
        return self.model_copy(update={"bound_tools": names})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        step = sum(1 for m in messages if isinstance(m, AIMessage) and m.tool_calls)
        if step < len(self.plan):
            name, arguments = self.plan[step]
            args = arguments(messages) if callable(arguments) else dict(arguments)
            message = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{step}",
                                                         "type": "tool_call"}])
        else:
            message = AIMessage(content=summarize(messages))
        return ChatResult(generations=[ChatGeneration(message=message)])


def tool_results(messages: Sequence[BaseMessage]) -> list[tuple[str, Any]]:
    """(tool name, parsed JSON or raw text) of every tool message, in order."""
    out = []
    for m in messages:
        if isinstance(m, ToolMessage):
            try:
                out.append((m.name or "", json.loads(m.content) if isinstance(m.content, str) else m.content))
            except json.JSONDecodeError:
                out.append((m.name or "", m.content))
    return out


def summarize(messages: Sequence[BaseMessage]) -> str:
    lines = []
    for name, value in tool_results(messages):
        if not isinstance(value, dict):
            lines.append(f"- {name}: {str(value)[:300]}")
            continue
        result = value.get("result", value)
        if isinstance(result, dict) and "label_counts" in result:
            top = sorted(result["label_counts"].items(), key=lambda kv: -kv[1])[:5]
            agreement = result.get("agreement") or {}
            agrees = (f"; agreement with obs['{agreement['compare_key']}'] {agreement['agreement']:.2f}"
                      if agreement.get("agreement") is not None else "")
            resolved = sorted((result.get("resolved_counts") or {}).items(), key=lambda kv: -kv[1])[:3]
            resolves = ("; resolved: " + ", ".join(f"{k} {v}" for k, v in resolved) if resolved else "") + (
                f" (right for obs['{agreement['compare_key']}'] {result['resolved_agreement']:.2f})"
                if resolved and result.get("resolved_agreement") is not None and agreement else "")
            # a reply may leave out None fields: a label with no AUROC has no "auroc"
            checked = [r for r in result.get("marker_check") or [] if r.get("auroc") is not None]
            weak = [r for r in checked if r["support"] in ("weak", "not supported")]
            markers = ("; markers do not single out: " + ", ".join(f"{r['label']} ({r['auroc']:.2f})" for r in weak)
                       if weak else "; markers support every checked label" if checked else "")
            lines.append(f"- {name}: {result['n_cells']} cells; " + ", ".join(f"{k} {v}" for k, v in top)
                         + (f"; mean confidence {result['mean_confidence']:.2f}"
                            if result.get("mean_confidence") is not None else "; no cell labelled") + agrees
                         + resolves + markers)
        elif isinstance(result, dict) and "top_genes" in result:
            genes = "; ".join(f"{label}: {', '.join(g['gene'] for g in gs[:3])}"
                              for label, gs in list(result["top_genes"].items())[:5])
            lines.append(f"- {name}: top genes {genes}")
        elif isinstance(result, dict) and "n_genes" in result and "obs_columns" in result:
            lines.append(f"- {name}: {result['n_cells']} cells x {result['n_genes']} genes, values "
                         f"{result['value_type']}, {result['overlap']['n_matched'] if result.get('overlap') else 0} "
                         "model genes matched")
        elif isinstance(result, dict) and "top_expressed_genes" in result:
            lines.append(f"- {name}: {result['n_cells']} {result['cell_type']} cells generated")
        elif value.get("job"):
            lines.append(f"- {name}: running as job {value['job']['job_id']}")
        else:
            lines.append(f"- {name}: {json.dumps(value)[:300]}")
        files = result.get("outputs") if isinstance(result, dict) else None
        if files:
            lines.append("  files: " + ", ".join(f["path"] for f in files[:3]))
    return "Results:\n" + "\n".join(lines) if lines else "No tool results."
