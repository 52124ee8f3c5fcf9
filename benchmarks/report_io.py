"""What every benchmark report records about its run, and how it is written (JSON + Markdown)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from instructcell_agent.core_model.io import write_json_atomic, write_text_atomic


def run_meta(command: str) -> dict[str, Any]:
    """Command, UTC date, cores, load average and torch threads: timings mean little without them."""
    import torch

    return {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "torch_threads": torch.get_num_threads()}


def meta_lines(meta: dict[str, Any]) -> list[str]:
    """A report's command, date and machine as Markdown list items (from `run_meta`)."""
    return [f"- command: `{meta['command']}`", f"- date: {meta['date']}",
            f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}, torch threads "
            f"{meta['torch_threads']}"]


def write_report(report: dict[str, Any], markdown: str, out_dir: Path, stem: str) -> Path:
    """`out_dir/stem.json` and `out_dir/stem.md`, each written atomically; returns the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, out_dir / f"{stem}.json")
    write_text_atomic(markdown, out_dir / f"{stem}.md")
    return out_dir / f"{stem}.md"
