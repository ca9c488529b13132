"""Prompts with learnable slots: where an attacker's (or an adversarial eraser's) embeddings enter the text encoder.

A template such as "a cat in {slot} style" marks each learnable token position with SLOT; `slot_ids` tokenizes it,
and `encode_with_slots` runs the pipeline's own text encoder with the slots' input embeddings replaced, so the
attacks of the evaluation and the inner attack of robust erasure share one definition of a learnt token.
"""

from __future__ import annotations

import torch

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
    """The text encoder's hidden states for `ids` with the input embeddings at `mask` replaced by `vectors`.

    `vectors` is (N, k, d) for k slots per row, or (k, d) shared by every row. The replacement happens in a forward
    hook on the token embedding, so the encoder's own code (positions, causal mask, layers) runs unchanged and
    gradients reach `vectors` only.
    """
    n, k = len(ids), int(mask[0].sum())
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
        return text_encoder(ids.to(device))[0].float()
    finally:
        handle.remove()
