"""canvas-clip's second training stage (erasure.train.clip) on a tiny random model."""

from __future__ import annotations

import torch


def test_image_tower_tuning_leaves_the_text_tower_bit_for_bit(tiny_clip_dir, tmp_path):
    from transformers import CLIPModel

    from erasure.train.clip import tune_image_tower

    tune_image_tower(tiny_clip_dir, tmp_path, steps=2, batch=8, lr=1e-3, seed=0, seeds=range(1))
    before, after = CLIPModel.from_pretrained(tiny_clip_dir), CLIPModel.from_pretrained(tmp_path)
    after_params = dict(after.named_parameters())
    moved = {n for n, p in before.named_parameters() if not torch.equal(p, after_params[n])}
    assert moved and all(n.startswith(("vision_model.", "visual_projection.")) for n in moved)
    assert "visual_projection.weight" in moved
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (tiny_clip_dir / name).read_bytes()
