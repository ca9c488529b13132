"""pipelines.loading: shipped names, local folders and hub ids, with one-sentence errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

import pipelines
from pipelines.loading import REGISTRY, PipelineLoadError, load_pipeline, resolve_model

REPO = Path(__file__).resolve().parents[2]


def _assert_one_sentence(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message and message.endswith("."), message
    assert re.search(r"[.!?]\s", message) is None, f"more than one sentence: {message}"
    assert message[0].islower() or message[0].isdigit() or message.startswith(("'", "/")), message
    return message


def _generate(pipe, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a cat in van gogh style", num_inference_steps=2, output_type="pt", generator=generator, **kwargs
    ).images


def test_tiny_pipeline_loads_with_plain_diffusers(tiny_pipeline_dir):
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_pipeline_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    images = _generate(pipe)
    assert tuple(images.shape) == (1, 3, 32, 32)


@pytest.mark.parametrize("as_type", [str, Path])
def test_load_pipeline_from_folder(tiny_pipeline_dir, as_type):
    pipe = load_pipeline(as_type(tiny_pipeline_dir))
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None and pipe.device.type == "cpu"
    assert pipe._progress_bar_config.get("disable") is True
    images = _generate(pipe, guidance_scale=5.0, negative_prompt="a painting of a fish")
    assert tuple(images.shape) == (1, 3, 32, 32) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    no_cfg = _generate(pipe, guidance_scale=1.0)
    assert tuple(no_cfg.shape) == (1, 3, 32, 32)


def test_load_pipeline_dtype(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir, device="cpu", torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


def test_package_reexports():
    assert pipelines.load_pipeline is load_pipeline and pipelines.PipelineLoadError is PipelineLoadError
    assert pipelines.REGISTRY is REGISTRY and pipelines.resolve_model is resolve_model
    assert issubclass(PipelineLoadError, ValueError)


def test_registry_points_into_assets():
    assert REGISTRY["canvas-sd"].name == "canvas-sd"
    if "ERASURE_ASSETS" not in os.environ:
        assert REGISTRY["canvas-sd"] == REPO / "assets" / "canvas-sd"


def test_resolve_model(tiny_pipeline_dir, monkeypatch):
    assert resolve_model(tiny_pipeline_dir) == str(Path(tiny_pipeline_dir).resolve())
    assert resolve_model("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
    monkeypatch.setitem(REGISTRY, "canvas-sd", Path(tiny_pipeline_dir))
    assert resolve_model("canvas-sd") == str(tiny_pipeline_dir)
    assert isinstance(load_pipeline("canvas-sd"), StableDiffusionPipeline)


# --- errors: one sentence each ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./no-such-model", "~/no-such-model-folder", "no/such/model"])
def test_missing_relative_folder(name):
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(name)
    assert _assert_one_sentence(info.value) == f"model folder {name} does not exist."


def test_missing_absolute_folder(tmp_path):
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(tmp_path / "nope")
    assert _assert_one_sentence(info.value) == f"model folder {tmp_path / 'nope'} does not exist."


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(tmp_path)
    assert "model_index.json" in _assert_one_sentence(info.value)
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(tmp_path / "unet")
    _assert_one_sentence(info.value)


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(tmp_path / "model.safetensors")
    assert "not a diffusers pipeline folder" in _assert_one_sentence(info.value)


def test_folder_of_another_pipeline_class(tmp_path, tiny_pipeline_dir):
    folder = tmp_path / "flux"
    shutil.copytree(tiny_pipeline_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(folder)
    message = _assert_one_sentence(info.value)
    assert "FluxPipeline" in message and "StableDiffusionXLPipeline (SDXL)" in message


def test_broken_pipeline_folder(tmp_path, tiny_pipeline_dir):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline(folder)
    assert str(folder) in _assert_one_sentence(info.value)


def test_unreachable_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline("someone/not-a-model")
    message = _assert_one_sentence(info.value)
    assert "someone/not-a-model" in message and "local folder" in message


def test_not_a_name_at_all():
    for name in ["canvas_sd", "not a model", ""]:
        with pytest.raises(PipelineLoadError) as info:
            load_pipeline(name)
        assert "canvas-sd" in _assert_one_sentence(info.value)


def test_missing_shipped_model_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, "canvas-sd", tmp_path / "canvas-sd")
    for call in (resolve_model, load_pipeline):
        with pytest.raises(PipelineLoadError) as info:
            call("canvas-sd")
        message = _assert_one_sentence(info.value)
        assert "python -m erasure.train.sd" in message and str(tmp_path / "canvas-sd") in message


def test_erasure_assets_overrides_registry(tmp_path):
    """ERASURE_ASSETS moves the shipped folders (read when pipelines.loading is imported)."""
    code = (
        "from pipelines.loading import REGISTRY, PipelineLoadError, resolve_model\n"
        "print(REGISTRY['canvas-sd'])\n"
        "try:\n    resolve_model('canvas-sd')\nexcept PipelineLoadError as err:\n    print(err)\n"
    )
    env = {
        **os.environ,
        "ERASURE_ASSETS": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    folder, message = result.stdout.strip().splitlines()
    assert folder == str(tmp_path / "canvas-sd")
    assert "python -m erasure.train.sd" in message


# --- hub ids: local cache first -----------------------------------------------------------------------------


def _fake_cache(root: Path, repo_id: str, pipeline_dir: Path) -> None:
    """A Hugging Face hub cache holding `repo_id` at revision main, laid out as huggingface_hub does."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(pipeline_dir, repo / "snapshots" / commit)


@pytest.mark.parametrize("offline", ["1", "0"])
def test_hub_id_loads_from_local_cache(monkeypatch, tmp_path, tiny_pipeline_dir, offline):
    _fake_cache(tmp_path / "hub", "canvas/tiny-sd", tiny_pipeline_dir)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    pipe = load_pipeline("canvas/tiny-sd")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert tuple(_generate(pipe).shape) == (1, 3, 32, 32)


def test_hub_id_online_failure_is_one_sentence(monkeypatch):
    """When the cache misses and the Hub is allowed, a failed download is still one sentence (no network used:
    reading the model's model_index.json is replaced by a stand-in that fails like the Hub's client)."""
    import requests

    calls = []

    def fake_load_config(source, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if kwargs.get("local_files_only"):
            raise OSError("Cannot find an appropriate cached snapshot folder.\nMore lines here.")
        raise requests.ConnectionError("Name or service not known")

    monkeypatch.setattr(DiffusionPipeline, "load_config", fake_load_config)
    monkeypatch.setattr("pipelines.loading._offline", lambda: False)
    with pytest.raises(PipelineLoadError) as info:
        load_pipeline("someone/not-a-model")
    assert calls == [True, False]  # the local cache first, then the Hub
    message = _assert_one_sentence(info.value)
    assert "cannot be reached" in message and "someone/not-a-model" in message


def test_a_canvas_world_folder_is_recognised_by_its_tokenizer(tmp_path, tiny_pipeline_dir):
    """A folder with the world's tokenizer (a copy of canvas-sd, here the tiny one) is a Canvas model; a folder
    whose tokenizer has one token more, a missing folder or a hub id is not."""
    from pipelines.loading import is_canvas_folder

    assert is_canvas_folder("canvas-sd") and is_canvas_folder(tiny_pipeline_dir)
    other = tmp_path / "other"
    shutil.copytree(tiny_pipeline_dir, other)
    spec = json.loads((other / "tokenizer" / "tokenizer.json").read_text())
    spec["model"]["vocab"]["zebra</w>"] = len(spec["model"]["vocab"])
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(spec))
    assert not is_canvas_folder(other)
    assert not is_canvas_folder(tmp_path / "missing") and not is_canvas_folder("org/name")
