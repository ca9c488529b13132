"""The one checkpoint format (erasure/engine/checkpoint.py): what goes in comes back, nothing pickled."""

from __future__ import annotations

import json

import torch

from erasure.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_tensors,
    read_state,
    save_checkpoint,
)


def trained_adam(seed: int) -> tuple[torch.nn.Linear, torch.optim.Adam]:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, betas=(0.5, 0.9))
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
    return layer, optimizer


def test_round_trip_of_tensors_optimizers_generators_and_state(tmp_path):
    layer, optimizer = trained_adam(0)
    generator = torch.Generator().manual_seed(7)
    torch.randn(5, generator=generator)  # advance it off its seed
    expected_draw = torch.randn(3, generator=torch.Generator().set_state(generator.get_state()))

    folder = save_checkpoint(
        tmp_path,
        12,
        {"layer": layer.state_dict()},
        {"adam": optimizer},
        {"g": generator},
        state={"note": "x"},
    )
    assert folder.name == "step-000012" and latest_checkpoint(tmp_path) == folder
    assert not list(folder.glob("*.pt")), "nothing is pickled"
    state = read_state(folder)
    assert state["step"] == 12 and state["note"] == "x"
    json.dumps(state)  # plain JSON

    other_layer, other_optimizer = trained_adam(1)
    other_generator = torch.Generator().manual_seed(99)
    load_checkpoint(folder, {"adam": other_optimizer}, {"g": other_generator})
    other_layer.load_state_dict(load_tensors(folder, "layer"))
    for a, b in zip(layer.state_dict().values(), other_layer.state_dict().values()):
        assert torch.equal(a, b)
    saved, restored = optimizer.state_dict(), other_optimizer.state_dict()
    assert restored["param_groups"][0]["betas"] == (0.5, 0.9)
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, restored["state"][index][key]), key
    assert torch.equal(torch.randn(3, generator=other_generator), expected_draw)

    # The same next step from both optimizers.
    x = torch.randn(4, 3)
    for model, opt in ((layer, optimizer), (other_layer, other_optimizer)):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    assert torch.equal(layer.weight, other_layer.weight)


def test_a_newer_checkpoint_replaces_the_older_and_half_written_ones_are_ignored(tmp_path):
    layer, optimizer = trained_adam(0)
    save_checkpoint(tmp_path, 1, {"layer": layer.state_dict()}, {"adam": optimizer})
    save_checkpoint(tmp_path, 2, {"layer": layer.state_dict()}, {"adam": optimizer})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]
    (tmp_path / "step-000003").mkdir()  # interrupted before its state.json: not a checkpoint
    assert latest_checkpoint(tmp_path).name == "step-000002"
    assert latest_checkpoint(tmp_path / "none") is None
