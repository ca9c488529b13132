"""The UNet's text conditioning, for SD 1.x/2.x and SDXL alike: what every erasure method feeds the UNet.

    cond = encode_prompts(pipe, ["a tree in the style of van gogh"], device)
    eps = noise_prediction(pipe.unet, x_t, t, cond[k])

SD 1.x/2.x: the text encoder's last hidden state (N, 77, D), as StableDiffusionPipeline.encode_prompt gives it.
SDXL: the penultimate hidden states of both text encoders side by side (N, 77, 768 + 1280), the second encoder's
pooled projection (`text_embeds`) and the micro-conditioning `time_ids` (original size, crop corner, target size:
the UNet's native size, no crop), as StableDiffusionXLPipeline.encode_prompt and _get_add_time_ids compute them;
the empty prompt is all zeros when the pipeline forces zeros for it (its unconditional branch at sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.diffusion import tokenize

ENCODE_BATCH = 64


def is_sdxl(pipeline) -> bool:
    """True for a pipeline with SDXL's second text encoder."""
    return getattr(pipeline, "text_encoder_2", None) is not None


def text_encoders(pipeline) -> list[torch.nn.Module]:
    """The pipeline's text encoders (one for SD, two for SDXL)."""
    return [m for m in (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)) if m is not None]


@dataclass
class TextConditioning:
    """`hidden`: the cross-attention input (N, L, D). `pooled` (N, P) and `time_ids` (N, 6): SDXL's added
    conditioning, None for SD. Rows index like a tensor: `cond[k]` for a batch of prompts."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index) -> TextConditioning:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextConditioning(*(None if x is None else x[index] for x in self._parts()))

    def _parts(self):
        return self.hidden, self.pooled, self.time_ids

    def to(self, device) -> TextConditioning:
        return TextConditioning(*(None if x is None else x.to(device) for x in self._parts()))

    def expand(self, rows: int) -> TextConditioning:
        """One row (the empty prompt's) repeated `rows` times."""
        return TextConditioning(*(None if x is None else x.expand(rows, *x.shape[1:]) for x in self._parts()))

    def with_hidden(self, hidden: torch.Tensor) -> TextConditioning:
        """The same added conditioning with other cross-attention states (soft prompts, inverted tokens)."""
        return TextConditioning(hidden, self.pooled, self.time_ids)

    @property
    def added(self) -> dict[str, torch.Tensor] | None:
        """`added_cond_kwargs` for UNet2DConditionModel: SDXL's text_embeds and time_ids, None for SD."""
        if self.pooled is None:
            return None
        return {"text_embeds": self.pooled, "time_ids": self.time_ids}

    @staticmethod
    def cat(parts: list[TextConditioning]) -> TextConditioning:
        first = parts[0]
        return TextConditioning(
            *(
                None if x is None else torch.cat([p._parts()[i] for p in parts])
                for i, x in enumerate(first._parts())
            )
        )


def noise_prediction(unet, x_t: torch.Tensor, t, cond: TextConditioning) -> torch.Tensor:
    """The UNet's output (noise, v or sample, by its scheduler) for `x_t` at `t` given `cond`, in float32."""
    return unet(x_t, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=cond.added).sample.float()


def tokenizers(pipeline) -> list:
    """The pipeline's tokenizers, one per text encoder (SDXL's second tokenizer pads differently)."""
    return [pipeline.tokenizer] + ([pipeline.tokenizer_2] if is_sdxl(pipeline) else [])


def conditioning_from_ids(pipeline, ids: list[torch.Tensor], encoders=None) -> TextConditioning:
    """The conditioning of token ids, `ids[i]` (N, L) for the i-th tokenizer, through `encoders` (default: the
    pipeline's own; robust erasers pass their trained copies), with gradients when they are enabled. The empty
    prompt is not zeroed here: `encode_prompts` does that."""
    encoders = list(encoders) if encoders is not None else text_encoders(pipeline)
    device = next(encoders[0].parameters()).device
    if not is_sdxl(pipeline):
        return TextConditioning(encoders[0](ids[0].to(device))[0].float())
    states = []
    for token_ids, encoder in zip(ids, encoders):
        out = encoder(token_ids.to(device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
    hidden, pooled = torch.cat(states, dim=-1).float(), out[0].float()  # text_encoder_2's projection of EOS
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=hidden.device)
    return TextConditioning(hidden, pooled, time_ids.expand(len(hidden), -1))


@torch.no_grad()
def prompt_token_mask(pipeline, prompts: list[str]) -> torch.Tensor:
    """(N, L) booleans: True at each prompt's own token positions (start and end tokens included), False at the
    padding after them; positions as in `encode_prompts`'s hidden states (the first tokenizer's)."""
    return tokenize(pipeline, prompts).attention_mask.bool()


def encode_prompts(pipeline, prompts: list[str], device) -> TextConditioning:
    """The conditioning of `prompts` (see the module docstring), in float32 on `device`."""
    parts = []
    for i in range(0, len(prompts), ENCODE_BATCH):
        chunk = prompts[i : i + ENCODE_BATCH]
        ids = [tokenize(pipeline, chunk, tokenizer).input_ids for tokenizer in tokenizers(pipeline)]
        parts.append(conditioning_from_ids(pipeline, ids))
    cond = TextConditioning.cat(parts).to(device)
    if is_sdxl(pipeline) and getattr(pipeline.config, "force_zeros_for_empty_prompt", False):
        empty = torch.tensor([p == "" for p in prompts], device=cond.hidden.device)
        cond.hidden = torch.where(empty.view(-1, 1, 1), torch.zeros_like(cond.hidden), cond.hidden)
        cond.pooled = torch.where(empty.view(-1, 1), torch.zeros_like(cond.pooled), cond.pooled)
    return cond
