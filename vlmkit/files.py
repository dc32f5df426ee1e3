"""Atomic file writes: write beside the target, then rename over it, so that a crash (or a full disk) never leaves
half a file where a whole one is expected: a config next to its weights, a report, an index, a data file, a model
folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path in `path`'s folder; when the block ends without an error it replaces `path`,
    otherwise it is deleted and `path` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """atomic_path for a folder: yields a fresh hidden folder beside `path`; when the block ends without an error
    it is renamed to `path` (which must be absent or empty), otherwise it is deleted. A folder of files that belong
    together (weights and their config) then appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; these are ordinary folders
        os.replace(tmp, path)  # rename(2) replaces an empty folder too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
