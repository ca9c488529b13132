"""The judges: a style classifier, an object classifier (small CNNs) and judge-clip (open_clip).

Judges are independent of every generator they judge: their own architecture (plain CNNs, a separate open_clip
ViT), their own weights, trained only on real rendered canvas images. An erasure that edits canvas-sd's text
encoder or UNet cannot move them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file
from torch import nn

from erasure.canvas.world import OBJECTS, PLAIN, STYLES
from erasure.files import ASSETS

JUDGES_DIR = ASSETS / "judges"
JUDGE_CLIP_NAME = "judge-clip"
JUDGE_CLIP_CONFIG = Path(__file__).with_name("judge-clip.json")


class ConvJudge(nn.Module):
    """A plain CNN classifier for 32x32 images; `features` is the penultimate layer used for FD."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.body = nn.Sequential(
            *block(3, width, 1),
            *block(width, 2 * width, 2),
            *block(2 * width, 2 * width, 1),
            *block(2 * width, 4 * width, 2),
            *block(4 * width, 4 * width, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, d) penultimate features."""
        if images.shape[-1] != 32:
            images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
        return self.body((images - self.mean) * 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class Judges:
    """The three judges, in eval mode on one device.

    judge-clip is loaded on first use from `clip_path`, so the classifiers alone can judge (as canvas-sd's training
    log does) before judge-clip exists, and runs that never score CLIP do not pay for loading it.
    """

    style: ConvJudge
    object: ConvJudge
    device: torch.device
    clip_path: Path | None = None
    clip: nn.Module | None = None
    clip_tokenizer: object = None

    def _load_clip(self) -> None:
        if self.clip is not None:
            return
        if self.clip_path is None or not Path(self.clip_path).exists():
            raise FileNotFoundError(
                f"judge-clip weights {self.clip_path} not found; train them with `python -m erasure.train.judges --only clip`."
            )
        self.clip, self.clip_tokenizer = create_judge_clip(str(self.clip_path))
        self.clip.to(self.device).eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        """Top-1 style and object names for (N, 3, H, W) images in [0, 1]."""
        images = images.to(self.device)
        styles = self.style(images).argmax(-1).tolist()
        objects = self.object(images).argmax(-1).tolist()
        return [STYLES[i] for i in styles], [OBJECTS[i] for i in objects]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Judge feature vectors for FD: style and object penultimate features side by side."""
        images = images.to(self.device)
        return torch.cat([self.style.features(images), self.object.features(images)], dim=1)

    @torch.no_grad()
    def clip_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised judge-clip image embeddings of (N, 3, H, W) images in [0, 1]."""
        self._load_clip()
        return clip_image_features(self.clip, images.to(self.device))

    @torch.no_grad()
    def clip_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised judge-clip text embeddings."""
        self._load_clip()
        tokens = self.clip_tokenizer(texts).to(self.device)
        return nn.functional.normalize(self.clip.encode_text(tokens), dim=-1)


CLIP_MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


def clip_image_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if images.shape[-1] != 32:
        images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    images = (images - CLIP_MEAN.to(images)) / CLIP_STD.to(images)
    return nn.functional.normalize(model.encode_image(images), dim=-1)


def register_judge_clip() -> None:
    """Make `judge-clip` an open_clip model name (custom config shipped beside this file)."""
    if JUDGE_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(JUDGE_CLIP_CONFIG)


def create_judge_clip(pretrained: str | None = None):
    """judge-clip through the ordinary open_clip API: (model, tokenizer)."""
    register_judge_clip()
    model = open_clip.create_model(JUDGE_CLIP_NAME, pretrained=pretrained)
    return model, open_clip.get_tokenizer(JUDGE_CLIP_NAME)


def world_prompt(style: str, obj: str) -> str:
    """The text judge-clip scores an image against for (style, object)."""
    return f"a painting of a {obj}" if style == PLAIN else f"a {obj} in {style} style"


def load_judges(
    device: str | torch.device = "cpu", directory: Path = JUDGES_DIR, require_clip: bool = False
) -> Judges:
    """Load the shipped judges from assets/judges (safetensors only); judge-clip loads on first use."""
    directory = Path(directory)
    needed = ("style.safetensors", "object.safetensors") + (
        ("judge-clip.safetensors",) if require_clip else ()
    )
    missing = [n for n in needed if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"judge weights {', '.join(missing)} not found in {directory}; train them with `python -m erasure.train.judges`."
        )
    device = torch.device(device)
    style, obj = ConvJudge(len(STYLES)), ConvJudge(len(OBJECTS))
    style.load_state_dict(load_file(directory / "style.safetensors"))
    obj.load_state_dict(load_file(directory / "object.safetensors"))
    for m in (style, obj):
        m.to(device).eval()
    return Judges(style, obj, device, clip_path=directory / "judge-clip.safetensors")
