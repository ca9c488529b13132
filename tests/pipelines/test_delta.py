"""Erasure deltas (pipelines.delta): round trip, merged sequential erasures, refused bad deltas."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from erasure.engine import erase
from erasure.methods.doco import DoCoConfig
from pipelines.delta import DELTA_FILE, META_FILE, apply_delta, load_delta, save_delta
from tests.helpers import TINY_DOCO, all_tensors, fresh


def test_delta_round_trip(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    result = erase(tiny_pipeline, "monet", config=DoCoConfig(**TINY_DOCO), progress=False)
    save_delta(result, tmp_path / "run", base_model=str(tiny_pipeline_dir))
    meta = json.loads((tmp_path / "run" / META_FILE).read_text())
    assert meta["method"] == "doco" and meta["concept"] == "monet" and len(meta["delta_sha256"]) == 64
    assert set(meta["tensors"]) == set(result.delta) and meta["versions"]["torch"] == torch.__version__

    restored = apply_delta(fresh(tiny_pipeline_dir), tmp_path / "run")
    want, got = all_tensors(result.pipeline), all_tensors(restored)
    assert all(torch.equal(want[n], got[n]) for n in want)

    result.pipeline.save_pretrained(tmp_path / "pipeline", safe_serialization=True)
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    assert all(torch.equal(want[n], v) for n, v in all_tensors(plain).items())


def test_sequential_erasures_merge_into_one_delta(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    first = erase(tiny_pipeline, "monet", config=DoCoConfig(**TINY_DOCO), progress=False)
    second = erase(first.pipeline, "moon", config=DoCoConfig(**TINY_DOCO), progress=False)
    save_delta([first, second], tmp_path / "run", base_model="canvas-sd")
    meta = json.loads((tmp_path / "run" / META_FILE).read_text())
    assert (
        meta["concept"] == ["monet", "moon"]
        and meta["kind"] == ["style", "object"]
        and meta["base"] == "canvas-sd"
    )
    restored = apply_delta(fresh(tiny_pipeline_dir), tmp_path / "run")
    want, got = all_tensors(second.pipeline), all_tensors(restored)
    assert all(torch.equal(want[n], got[n]) for n in want)
    assert first.memory_definition and first.peak_memory_bytes >= 0


def test_apply_delta_refuses_bad_deltas(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    result = erase(tiny_pipeline, "monet", config=DoCoConfig(**TINY_DOCO), progress=False)
    name = next(iter(result.delta))
    with pytest.raises(ValueError, match="does not exist"):
        apply_delta(tiny_pipeline, {"unet.no.such.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="has shape"):
        apply_delta(tiny_pipeline, {name: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="component"):
        apply_delta(tiny_pipeline, {"transformer.x": torch.zeros(1)})
    save_delta(result, tmp_path / "run")
    assert load_delta(tmp_path / "run")[1]["concept"] == "monet"
    (tmp_path / "run" / DELTA_FILE).write_bytes((tmp_path / "run" / DELTA_FILE).read_bytes()[:-4] + b"oops")
    with pytest.raises(ValueError, match="sha256"):
        apply_delta(tiny_pipeline, tmp_path / "run")


def test_content_hash_by_hand_and_independent_of_the_file(tmp_path):
    """delta_sha256 = sha256 over sorted names of name, dtype, shape and bytes: not the file's bytes."""
    import hashlib

    from safetensors.torch import save_file

    from pipelines.delta import content_sha256

    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3]], dtype=torch.int64)
    digest = hashlib.sha256()
    digest.update(b"a\0torch.float32\0(2,)\0" + a.numpy().tobytes())
    digest.update(b"b\0torch.int64\0(1, 1)\0" + b.numpy().tobytes())
    assert content_sha256({"b": b, "a": a}) == digest.hexdigest()
    assert content_sha256({"a": a, "b": b.float()}) != digest.hexdigest()  # the dtype counts

    # The same tensors under two metadata maps: different files, one content hash.
    save_file({"a": a}, tmp_path / "x.safetensors", metadata={"format": "erasure-delta", "concept": "x"})
    save_file(
        {"a": a}, tmp_path / "y.safetensors", metadata={"concept": "x", "format": "erasure-delta", "z": "1"}
    )
    assert (tmp_path / "x.safetensors").read_bytes() != (tmp_path / "y.safetensors").read_bytes()
    from safetensors.torch import load_file

    assert content_sha256(load_file(tmp_path / "x.safetensors")) == content_sha256(
        load_file(tmp_path / "y.safetensors")
    )


def test_a_delta_recorded_with_the_older_file_hash_still_loads_and_is_still_checked(tiny_pipeline, tmp_path):
    from pipelines.delta import file_sha256

    result = erase(tiny_pipeline, "monet", method="uce", progress=False)
    save_delta(result, tmp_path / "run")
    meta_path = tmp_path / "run" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["delta_sha256"] = file_sha256(tmp_path / "run" / DELTA_FILE)  # as erasure.json was written before
    meta_path.write_text(json.dumps(meta))
    tensors, _ = load_delta(tmp_path / "run")
    assert sorted(tensors) == sorted(result.delta)
    meta["delta_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_delta(tmp_path / "run")
