"""erasure.files: outputs appear whole or not at all; ASSETS honours ERASURE_ASSETS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from erasure.files import atomic_folder, slug, write_atomic


def test_atomic_folder_replaces_on_success_and_leaves_the_old_output_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "one" and oct(out.stat().st_mode & 0o777) == "0o755"

    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with pytest.raises(FileExistsError), atomic_folder(out, replace=False):
        pass
    with atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_write_atomic_writes_text_and_bytes_readable_by_all(tmp_path):
    path = write_atomic(tmp_path / "sub" / "f.json", '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and oct(path.stat().st_mode & 0o777) == "0o644"
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and sorted(p.name for p in path.parent.iterdir()) == ["f.json"]


def test_slug():
    assert slug("Van Gogh + tree") == "van-gogh-tree" and slug("!!") == "concept"


def test_erasure_assets_moves_every_shipped_path(tmp_path):
    code = (
        "from erasure.files import ASSETS; from pipelines.loading import REGISTRY; "
        "from pipelines.canvas_clip import CANVAS_CLIP; from pipelines.stylegan import CANVAS_GAN; "
        "from eval.judges.models import JUDGES_DIR; from erasure.methods.request import TEMPLATE_BANK; "
        "print(ASSETS, REGISTRY['canvas-sd'].parent, CANVAS_CLIP.parent, CANVAS_GAN.parent, JUDGES_DIR.parent, "
        "TEMPLATE_BANK.parent.parent)"
    )
    env = {**os.environ, "ERASURE_ASSETS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path)] * 6
