"""Where the shipped models live, and writing outputs so that nothing is ever half-written.

`ASSETS` is the folder of shipped weights (judges, canvas-clip, canvas-sd, canvas-gan, the prompt bank); the
`ERASURE_ASSETS` environment variable points it elsewhere. Every output folder or file of the project is written
beside its final place under a temporary name and renamed into place only when complete (`atomic_folder`,
`write_atomic`), so an interrupted run or a mistake leaves either the old output or none.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ASSETS = Path(os.environ.get("ERASURE_ASSETS", Path(__file__).resolve().parents[1] / "assets"))


def slug(text: str) -> str:
    """A file-name form of `text`: 'Van Gogh + tree' -> 'van-gogh-tree'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "concept"


@contextmanager
def atomic_folder(out: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out`, on an exception it is removed.

    With `replace=False` an existing `out` is an error (FileExistsError) raised before anything is written.
    """
    out = Path(out)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} already exists.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes the folder private; an output is an ordinary folder
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
