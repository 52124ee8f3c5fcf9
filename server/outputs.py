"""Result files: written into a private staging folder, moved into the output directory at the end.

A call that fails or is cancelled removes its staging folder, so the output directory only ever
holds complete results. Each file (or the explain folder) appears with one atomic rename.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from .schemas import OutputFile

log = logging.getLogger(__name__)

URI_PREFIX = "instructcell://outputs/"
STAGING_PREFIX = ".staging-"
_MIME = {".h5ad": "application/x-hdf5", ".csv": "text/csv", ".png": "image/png", ".json": "application/json"}


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe version of a stem or label."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"
    return cleaned[:max_len]


def new_id() -> str:
    return uuid.uuid4().hex[:10]


def uri_for(path: Path, output_dir: Path) -> str:
    return URI_PREFIX + path.relative_to(output_dir).as_posix()


def mime_for(path: Path) -> str:
    return _MIME.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class Staging:
    """A private folder under the output directory; `commit` publishes, `discard` forgets.

    Use as a context manager: leaving it without a commit (an error, a cancellation) discards.
    """

    def __init__(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir = output_dir
        self.dir = Path(tempfile.mkdtemp(dir=output_dir, prefix=STAGING_PREFIX))
        self.committed: list[Path] = []

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, kinds: dict[str, str]) -> list[OutputFile]:
        """Move each staged entry (file or folder, by name -> kind) into the output directory."""
        records: list[OutputFile] = []
        for name, kind in kinds.items():
            src, dst = self.dir / name, self.output_dir / name
            if dst.exists():  # ids are random; a clash means something is badly wrong
                raise FileExistsError(f"output {dst} already exists")
            os.replace(src, dst)
            self.committed.append(dst)
        for dst, kind in zip(self.committed, kinds.values()):
            files = sorted(p for p in dst.rglob("*") if p.is_file()) if dst.is_dir() else [dst]
            for f in files:
                sub_kind = kind if f == dst else f"{kind}:{f.stem}"
                records.append(OutputFile(path=str(f), uri=uri_for(f, self.output_dir), kind=sub_kind,
                                          mime_type=mime_for(f), size_bytes=f.stat().st_size))
        return records

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # after a commit the folder is empty; either way it goes


def clean_stale_staging(output_dir: Path, older_than_s: float = 3600.0) -> int:
    """Remove staging folders a killed server left behind (called at start-up).

    Only old ones: another server sharing the output directory may be writing a fresh one.
    """
    if not output_dir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    stale = [p for p in output_dir.glob(STAGING_PREFIX + "*") if p.is_dir() and p.stat().st_mtime < cutoff]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale:
        log.info("removed %d unfinished staging folder(s) from %s", len(stale), output_dir)
    return len(stale)
