"""Prompts with learnable slots: where an attacker's (or an adversarial eraser's) embeddings enter the text encoder.

A template such as "a cat in {slot} style" marks each learnable token position with SLOT; `slot_ids` tokenizes it,
and `encode_with_slots` runs a text encoder with the slots' input embeddings replaced, so the attacks of the
evaluation and the inner attack of robust erasure share one definition of a learnt token. `SlotPrompts` does the
same for a whole pipeline, SD or SDXL: on SDXL a learnt token is one input embedding per text encoder (their widths
side by side in one vector), and the result is the UNet's full conditioning (both encoders' states, the pooled
embedding, the time ids).
"""

from __future__ import annotations

import contextlib

import torch

from pipelines.conditioning import TextConditioning, conditioning_from_ids, text_encoders, tokenizers

# The slot marker in prompt templates: one learnable embedding takes each slot's place.
SLOT = "{slot}"


def slot_ids(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N, L) of `texts`, padded to the tokenizer's length, where each SLOT takes one token position, and
    the mask (N, L) of those positions. The id under a slot is the pad token's; `with_slots` replaces its embedding."""
    length, pad = tokenizer.model_max_length, tokenizer.pad_token_id
    rows, masks = [], []
    for text in texts:
        ids, mask = [tokenizer.bos_token_id], [False]
        for k, piece in enumerate(text.split(SLOT)):
            if k:
                ids.append(pad)
                mask.append(True)
            piece_ids = tokenizer(piece.strip(), add_special_tokens=False).input_ids if piece.strip() else []
            ids += piece_ids
            mask += [False] * len(piece_ids)
        ids.append(tokenizer.eos_token_id)
        mask.append(False)
        if len(ids) > length:
            raise ValueError(f"prompt {text!r} needs {len(ids)} tokens; the tokenizer holds {length}.")
        rows.append(ids + [pad] * (length - len(ids)))
        masks.append(mask + [False] * (length - len(mask)))
    return torch.tensor(rows), torch.tensor(masks)


def encode_with_slots(
    text_encoder, ids: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """The text encoder's last hidden states for `ids` with the input embeddings at `mask` replaced by `vectors`
    ((N, k, d) for k slots per row, or (k, d) shared by every row; see `replaced_slots`)."""
    with replaced_slots(text_encoder, mask, vectors):
        return text_encoder(ids.to(text_encoder.get_input_embeddings().weight.device))[0].float()


@contextlib.contextmanager
def replaced_slots(text_encoder, mask: torch.Tensor, vectors: torch.Tensor):
    """While open, `text_encoder`'s token embedding gives `vectors` at the positions of `mask` (N, L).

    The replacement happens in a forward hook on the token embedding, so the encoder's own code (positions, causal
    mask, layers) runs unchanged and gradients reach `vectors` only.
    """
    n, k = len(mask), int(mask[0].sum())
    if not bool((mask.sum(1) == k).all()):
        raise ValueError("every prompt must hold the same number of slots.")
    if vectors.ndim == 2:
        vectors = vectors.unsqueeze(0).expand(n, -1, -1)
    embedding = text_encoder.get_input_embeddings()
    device = embedding.weight.device

    def replace(module, inputs, output):
        output = output.clone()
        output[mask.to(device)] = vectors.reshape(-1, vectors.shape[-1]).to(output.dtype)
        return output

    handle = embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


class SlotPrompts:
    """`texts` with slots, tokenized by each of the pipeline's tokenizers, encoded into the UNet's conditioning with
    given slot vectors. A slot vector is one input embedding per text encoder, concatenated (`width` wide)."""

    def __init__(self, pipeline, texts: list[str], encoders=None):
        self.pipeline = pipeline
        self.encoders = list(encoders) if encoders is not None else text_encoders(pipeline)
        tokenized = [slot_ids(tokenizer, texts) for tokenizer in tokenizers(pipeline)]
        self.ids = [ids for ids, _ in tokenized]
        self.mask = tokenized[0][1]
        if any(not torch.equal(mask, self.mask) for _, mask in tokenized[1:]):
            raise ValueError("the pipeline's tokenizers split these prompts differently around their slots.")
        self.widths = [e.get_input_embeddings().weight.shape[1] for e in self.encoders]

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def width(self) -> int:
        return sum(self.widths)

    @property
    def slots(self) -> int:
        """Slots per prompt."""
        return int(self.mask[0].sum())

    def token_vectors(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The slot vectors of vocabulary tokens `token_ids` (any shape): each encoder's input embedding of the
        token, side by side (detached, float32)."""
        tables = [e.get_input_embeddings().weight.detach().float() for e in self.encoders]
        ids = token_ids.cpu()
        return torch.cat([table[ids.to(table.device)] for table in tables], dim=-1)

    def encode(self, vectors: torch.Tensor, rows: torch.Tensor | None = None) -> TextConditioning:
        """The conditioning of prompts `rows` (default: all) with their slots filled by `vectors` ((N, k, width)
        per row, or (k, width) shared), with gradients to `vectors` when they are enabled."""
        rows = torch.arange(len(self)) if rows is None else rows.cpu()
        mask = self.mask[rows]
        parts = torch.split(vectors, self.widths, dim=-1)
        with contextlib.ExitStack() as stack:
            for encoder, part in zip(self.encoders, parts):
                stack.enter_context(replaced_slots(encoder, mask, part))
            return conditioning_from_ids(self.pipeline, [ids[rows] for ids in self.ids], self.encoders)
