"""Erasure deltas (pipelines.delta): round trip, merged sequential erasures, chains across runs, refused bad
deltas."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from erasure.engine import erase
from erasure.methods.doco import DoCoConfig
from pipelines.delta import (
    DELTA_FILE,
    META_FILE,
    apply_delta,
    erasure_chain,
    load_delta,
    load_erased,
    save_delta,
)
from tests.helpers import TINY_DOCO, all_tensors, fresh


def test_delta_round_trip(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    result = erase(tiny_pipeline, "monet", config=DoCoConfig(**TINY_DOCO), progress=False)
    save_delta(result, tmp_path / "run", base_model=str(tiny_pipeline_dir))
    meta = json.loads((tmp_path / "run" / META_FILE).read_text())
    assert meta["concepts"] == ["monet"] and len(meta["delta_sha256"]) == 64
    assert [(e["method"], e["concepts"], e["anchors"]) for e in meta["erasures"]] == [
        ("doco", ["monet"], ["plain"])
    ]
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
    assert meta["concepts"] == ["monet", "moon"] and meta["base"] == "canvas-sd"
    assert [e["kind"] for e in meta["erasures"]] == ["style", "object"]
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
    assert load_delta(tmp_path / "run")[1]["concepts"] == ["monet"]
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


def test_a_run_on_top_of_another_records_the_chain_and_reproduces_from_the_base(
    tiny_pipeline, tiny_pipeline_dir, tmp_path
):
    first = erase(tiny_pipeline, "monet", config=DoCoConfig(**TINY_DOCO), progress=False)
    save_delta(first, tmp_path / "first", base_model=str(tiny_pipeline_dir))
    second = erase(first.pipeline, "moon", method="uce", erased_before=["monet"], progress=False)
    save_delta(second, tmp_path / "second", base_model="ignored", previous=load_delta(tmp_path / "first"))
    meta = json.loads((tmp_path / "second" / META_FILE).read_text())
    assert meta["base"] == str(tiny_pipeline_dir) and meta["concepts"] == ["monet", "moon"]
    assert [(e["method"], e["concepts"]) for e in meta["erasures"]] == [
        ("doco", ["monet"]),
        ("uce", ["moon"]),
    ]
    assert set(meta["tensors"]) == set(first.delta) | set(second.delta)
    assert meta["seconds"] == pytest.approx(round(first.seconds, 3) + round(second.seconds, 3), abs=2e-3)

    restored = load_erased(None, tmp_path / "second")  # the base recorded there, plus the merged delta
    want, got = all_tensors(second.pipeline), all_tensors(restored)
    assert all(torch.equal(want[n], got[n]) for n in want)


def test_older_erasure_json_reads_as_a_chain():
    one = {"method": "doco", "concept": "monet", "kind": "style", "anchor": "plain", "config": {}, "steps": 4}
    assert [(e["method"], e["concepts"], e["anchors"]) for e in erasure_chain(one)] == [
        ("doco", ["monet"], ["plain"])
    ]
    two = dict(one, concept=["monet", "moon"], kind=["style", "object"], anchor=["plain", "car"], seconds=8.0)
    steps = erasure_chain(two)
    assert [(e["concepts"], e["kind"], e["seconds"]) for e in steps] == [
        (["monet"], "style", 4.0),
        (["moon"], "object", 4.0),
    ]


def test_a_corrupt_erasure_json_is_refused_in_one_sentence(tiny_pipeline, tmp_path):
    result = erase(tiny_pipeline, "monet", method="uce", progress=False)
    save_delta(result, tmp_path / "run")
    (tmp_path / "run" / META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt"):
        load_delta(tmp_path / "run")
    (tmp_path / "run" / META_FILE).write_text('{"base": "canvas-sd"}')
    with pytest.raises(ValueError, match="is corrupt"):
        load_delta(tmp_path / "run")
