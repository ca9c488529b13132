"""Load a Stable Diffusion pipeline by short name, local folder or Hugging Face Hub id, offline-first.

    load_pipeline("canvas-sd")                         # a shipped model (REGISTRY), assets/canvas-sd
    load_pipeline("./erased/van-gogh")                 # any diffusers pipeline folder (model_index.json)
    load_pipeline("CompVis/stable-diffusion-v1-4")     # a hub id: the local cache first, then the Hub if online

Every user error (unknown folder, folder that is not a pipeline, a hub id that cannot be had offline) raises
PipelineLoadError whose message is one sentence, so that a CLI can print it and exit 2 without a traceback.

We load with the class that model_index.json names, and only `StableDiffusionPipeline` (SD 1.x/2.x, canvas-sd) or
`StableDiffusionXLPipeline` (SDXL), not whatever `DiffusionPipeline` returns: every erasure method works on their
parts (CLIP text encoders and tokenizers, a UNet2DConditionModel with `attn2` cross-attention, an AutoencoderKL;
pipelines/conditioning.py encodes prompts for both), and an SD3 or FLUX model would otherwise fail later, far from
the cause. A folder (or hub id) of another pipeline class is refused up front, before any weights load, and the
loaded pipeline is checked for the components of its class.
"""

from __future__ import annotations

import functools
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from erasure.files import ASSETS

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline


# Short names for the models this repository ships (and trains).
REGISTRY: dict[str, Path] = {
    "canvas-sd": ASSETS / "canvas-sd",
}

# How to (re)create each shipped model when its folder is missing.
TRAIN_COMMANDS: dict[str, str] = {
    "canvas-sd": "python -m erasure.train.sd",
}

# The pipeline classes this package erases from, with the components each must have.
SUPPORTED_CLASSES = {
    "StableDiffusionPipeline": ("unet", "text_encoder", "tokenizer", "vae"),
    "StableDiffusionXLPipeline": (
        "unet",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "vae",
    ),
}
_SUPPORTED = "StableDiffusionPipeline (SD 1.x/2.x, canvas-sd) and StableDiffusionXLPipeline (SDXL) models"
# "org/name" as the Hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class PipelineLoadError(ValueError):
    """A model name or folder that cannot be loaded; the message is one sentence, fit to print as it is."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())
        if not message.endswith("."):
            message += "."
        super().__init__(message)


def _reason(err: BaseException) -> str:
    """The first sentence of an exception's message, without its final full stop, to quote inside ours."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


def _hub_failure(err: BaseException) -> str:
    """Why a Hub download failed, in a few words, from the exception and the ones it was raised from."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    if "GatedRepoError" in names:
        return "it is a gated repository: accept its licence on the Hub and log in with `hf auth login`"
    if "RepositoryNotFoundError" in names:
        return "the Hub has no such repository, or it is private"
    if names & {
        "ConnectionError",
        "NetworkError",
        "ConnectError",
        "Timeout",
        "TimeoutException",
        "OfflineModeIsEnabled",
    }:
        return "the Hub cannot be reached from here"
    if "not fully cached locally" in str(chain[0]):  # diffusers' wrapper when the Hub look-up failed
        return "the Hub cannot be reached from here"
    return _reason(chain[0])


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or (os.altsep and name.startswith(os.altsep)):
        return True
    has_sep = os.sep in name or (os.altsep is not None and os.altsep in name)
    return has_sep and not _HUB_ID.match(name)


def _offline() -> bool:
    """True when the user asked for no network (read now, not at import, so a late `HF_HUB_OFFLINE=1` counts)."""
    truthy = {"1", "ON", "YES", "TRUE"}
    if any(os.environ.get(k, "").upper() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return False


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "could not fetch or find this model", from whichever HTTP stack is installed."""
    errors: list[type[BaseException]] = [OSError, ValueError]  # ValueError covers HFValidationError
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    except ImportError:  # pragma: no cover
        pass
    for module, name in (("requests", "RequestException"), ("httpx", "HTTPError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _class_name(index: Path, where: str) -> str:
    """The pipeline class that `index` (a model_index.json) names; refuses, in one sentence, an unsupported one."""
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as err:
        raise PipelineLoadError(f"cannot read {index}: {_reason(err)}") from err
    if class_name not in SUPPORTED_CLASSES:
        raise PipelineLoadError(f"{where} holds a {class_name}, but only {_SUPPORTED} are supported")
    return class_name


def _check_folder(folder: Path) -> str:
    """The pipeline class of `folder`; refuses, in one sentence, a folder that is not a supported pipeline's."""
    if not folder.is_dir():
        raise PipelineLoadError(f"{folder} is a file, not a diffusers pipeline folder")
    index = folder / "model_index.json"
    if not index.is_file():
        raise PipelineLoadError(
            f"folder {folder} is not a diffusers pipeline (it has no model_index.json; save one with "
            "pipe.save_pretrained(folder))"
        )
    return _class_name(index, f"folder {folder}")


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """What `load_pipeline` will load: a shipped folder, a local folder (absolute) or a hub id, as a string.

    Order: a REGISTRY name; an existing path; something that looks like a path ('.', '/', '~' or a separator,
    but not 'org/name'); a hub id 'org/name'. Raises PipelineLoadError for a registry name whose folder is
    missing, a path that does not exist, a folder without model_index.json (or of another pipeline class) and a
    name that is none of these. A hub id is returned unchanged: whether it loads is known only by loading.
    """
    name = os.fspath(name_or_path).strip()
    if not name:
        raise PipelineLoadError(
            f"empty model name; pass a shipped model ({', '.join(REGISTRY)}), a pipeline folder or a hub id"
        )
    if name in REGISTRY:
        folder = Path(REGISTRY[name])
        if not (folder / "model_index.json").is_file():
            how = TRAIN_COMMANDS.get(name)
            hint = f"train it with `OMP_WAIT_POLICY=PASSIVE {how}`" if how else "restore that folder"
            raise PipelineLoadError(f"the shipped model {name!r} is missing from {folder}; {hint}")
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        _check_folder(path)
        return str(path.resolve())
    if _looks_like_path(name):
        raise PipelineLoadError(f"model folder {name} does not exist")
    if not _HUB_ID.match(name):
        raise PipelineLoadError(
            f"model {name!r} is neither a shipped model ({', '.join(REGISTRY)}), an existing folder, "
            "nor a Hugging Face Hub id of the form org/name"
        )
    return name


@contextmanager
def _quiet_loading(quiet_logs: bool):
    """Silence the loading progress bars of diffusers and transformers (and, for hub look-ups, diffusers'
    'could not connect to the Hub' warnings); restore both libraries' settings afterwards."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (dlogging, tlogging)]
    level = dlogging.get_verbosity()
    for lib, _ in bars:
        lib.disable_progress_bar()
    if quiet_logs:
        dlogging.set_verbosity_error()
    try:
        yield
    finally:
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()
        dlogging.set_verbosity(level)


def load_pipeline(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A StableDiffusionPipeline or StableDiffusionXLPipeline (the class its model_index.json names) from a
    REGISTRY name, a local pipeline folder or a hub id, on `device`.

    No safety checker, progress bars disabled. A hub id is looked up in the local Hugging Face cache first and
    downloaded only when that fails and the Hub is not switched off (HF_HUB_OFFLINE); its model_index.json is read
    first, so an unsupported model is refused before its weights download. User errors raise PipelineLoadError
    with a one-sentence message.
    """
    import diffusers

    source = resolve_model(name_or_path)
    is_local = Path(source).is_dir()
    errors = _hub_errors()
    fetch = f"hf download {source} --local-dir <folder>"

    def from_hub(load):
        """`load(local_files_only)`: the local cache first, then the Hub when it may be used."""
        try:
            return load(True)
        except errors as cached_err:
            if _offline():
                raise PipelineLoadError(
                    f"model {source!r} is not in the local Hugging Face cache and the Hub is offline here; "
                    f"download it where the Hub is reachable ({fetch}) and pass that local folder instead"
                ) from cached_err
            try:
                return load(False)
            except errors as err:
                raise PipelineLoadError(
                    f"model {source!r} is not in the local Hugging Face cache and cannot be fetched "
                    f"({_hub_failure(err)}); download it where the Hub is reachable ({fetch}) and pass that "
                    "local folder instead"
                ) from err

    if is_local:
        class_name = _check_folder(Path(source))
    else:
        index = from_hub(
            lambda local: diffusers.DiffusionPipeline.load_config(source, local_files_only=local)
        )
        class_name = index.get("_class_name")
        if class_name not in SUPPORTED_CLASSES:
            raise PipelineLoadError(
                f"model {source!r} is a {class_name}, but only {_SUPPORTED} are supported"
            )
    pipeline_class = getattr(diffusers, class_name)
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if class_name == "StableDiffusionXLPipeline":
        kwargs = {"add_watermarker": False}
    if torch_dtype is not None:
        # diffusers renamed `torch_dtype` to `dtype` (the old name warns); older releases know only `torch_dtype`.
        from diffusers import utils as diffusers_utils

        kwargs["dtype" if hasattr(diffusers_utils, "_resolve_dtype") else "torch_dtype"] = torch_dtype

    with _quiet_loading(quiet_logs=not is_local):
        if is_local:
            try:
                pipe = pipeline_class.from_pretrained(source, local_files_only=True, **kwargs)
            except errors as err:
                raise PipelineLoadError(f"cannot load the pipeline in {source}: {_reason(err)}") from err
        else:
            pipe = from_hub(
                lambda local: pipeline_class.from_pretrained(source, local_files_only=local, **kwargs)
            )

    missing = [c for c in SUPPORTED_CLASSES[class_name] if getattr(pipe, c, None) is None]
    if missing:
        raise PipelineLoadError(f"the pipeline from {source} lacks {', '.join(missing)}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@functools.lru_cache(maxsize=1)
def _canvas_vocab() -> dict[str, int]:
    from erasure.canvas.tokenizer import learn_bpe
    from erasure.canvas.world import all_captions

    return learn_bpe(all_captions())[0]


def is_canvas_folder(name_or_path) -> bool:
    """True for canvas-sd by name or a pipeline folder whose tokenizer is exactly the Canvas world's (a copy of
    canvas-sd, an erasure of it, a model trained on the world): read from tokenizer/ alone, before any loading."""
    if str(name_or_path) == "canvas-sd":
        return True
    folder = Path(name_or_path).expanduser() / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        return False
    from transformers import AutoTokenizer

    try:
        vocab = AutoTokenizer.from_pretrained(folder, local_files_only=True).get_vocab()
    except (OSError, ValueError):
        return False
    return vocab == _canvas_vocab()


def is_canvas(pipeline) -> bool:
    """True for canvas-sd (by name) or any pipeline whose tokenizer vocabulary is exactly the Canvas world's."""
    name = str(getattr(pipeline, "name_or_path", "") or "")
    if "canvas-sd" in name:
        return True
    vocab = pipeline.tokenizer.get_vocab()
    return len(vocab) == len(_canvas_vocab()) and vocab == _canvas_vocab()
