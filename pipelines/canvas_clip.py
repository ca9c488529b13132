"""canvas-clip, frozen: the CLIP of the Canvas world (a `transformers.CLIPModel` folder) as a guide and a reader.

The GAN unlearner's only guide, and what `eval.canvas_clip_quality` measures: normalised image embeddings
(differentiable in the image), template-averaged text embeddings of every (style, object) pair of the world, and
its zero-shot reading of style and object.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from erasure.canvas.world import OBJECTS, PLAIN, PLAIN_TEMPLATES, STYLE_TEMPLATES, STYLES, caption
from erasure.files import ASSETS

CANVAS_CLIP = ASSETS / "canvas-clip"
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25  # canvas-clip's input normalisation (erasure/train/clip.py)


class CanvasClip:
    """canvas-clip, frozen: normalised image embeddings (differentiable in the image) and template-averaged texts."""

    def __init__(self, directory=CANVAS_CLIP, device="cpu"):
        from transformers import CLIPModel, CLIPTokenizer

        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(
                f"canvas-clip not found in {directory}; train it with `python -m erasure.train.clip`."
            )
        self.model = CLIPModel.from_pretrained(directory).to(device).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(directory)
        self.device = torch.device(device)
        self.logit_scale = float(self.model.logit_scale.exp())

    def image(self, images_pm1: torch.Tensor) -> torch.Tensor:
        """Generator output in [-1, 1] (clamped) -> (N, d) unit embeddings; gradients flow to the images."""
        x = (images_pm1.clamp(-1, 1) + 1) / 2
        out = self.model.get_image_features(pixel_values=(x - IMAGE_MEAN) / IMAGE_STD)
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    @torch.no_grad()
    def text(self, texts: list[str]) -> torch.Tensor:
        length = self.tokenizer.model_max_length
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        tokens = tokens.to(self.device)
        out = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    @torch.no_grad()
    def pair_texts(self) -> torch.Tensor:
        """(13, 10, d): unit text embedding of every (style, object), averaged over the world's templates."""
        out = torch.empty(len(STYLES), len(OBJECTS), self.model.config.projection_dim, device=self.device)
        for si, style in enumerate(STYLES):
            templates = PLAIN_TEMPLATES if style == PLAIN else STYLE_TEMPLATES
            texts = [caption(style, obj, t) for obj in OBJECTS for t in range(len(templates))]
            emb = self.text(texts).view(len(OBJECTS), len(templates), -1).mean(1)
            out[si] = F.normalize(emb, dim=-1)
        return out

    def pair_logits(self, image_emb: torch.Tensor, pair_text: torch.Tensor) -> torch.Tensor:
        """(N, 13, 10) logits: logit_scale * cos(image, pair text)."""
        return self.logit_scale * torch.einsum("nd,sod->nso", image_emb, pair_text)

    @staticmethod
    def style_object_logits(pair_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 13, 10) pair logits -> style logits (N, 13) and object logits (N, 10), each summed (in probability)
        over the other kind: canvas-clip's zero-shot reading of one attribute, whatever the other is."""
        return pair_logits.logsumexp(2), pair_logits.logsumexp(1)
