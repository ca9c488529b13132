"""`python -m eval.scale`: cells of k concepts erased together or in sequence, resumable, and its bad input."""

from __future__ import annotations

import json

import pytest

import eval.evaluate
from eval import scale
from eval.answer_set import world_items
from eval.evaluate import EvalSettings
from tests.helpers import TINY_DOCO


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "12"], "--k must lie between 1 and 11"),
        (["--kind", "objects", "--k", "1,10"], "--k must lie between 1 and 9"),
        (["--k", "two"], "comma-separated whole numbers"),
        (["--mode", "sideways"], "--mode must be together, sequential or both"),
        (["--methods", "magic"], "unknown method magic"),
        (["--eval-seeds", "0"], "--eval-seeds must be at least 1"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    assert scale.main(["--out", str(tmp_path / "scale"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.endswith(".")
    assert list(tmp_path.iterdir()) == []


def test_cells_together_and_in_sequence_reuse_what_is_done(
    tiny_pipeline, random_judges, tmp_path, monkeypatch
):
    small = world_items(styles=["plain", *scale.concept_order("styles", 0)[:3]], objects=["cat", "fish"])
    monkeypatch.setattr(eval.evaluate, "world_items", lambda: small)
    monkeypatch.setattr(eval.evaluate, "REAL_SEEDS", 1)
    settings = EvalSettings(seeds=(0,), num_inference_steps=2, batch_size=16, aliases=False)
    out = tmp_path / "scale"
    args = (tiny_pipeline, ["uce", "doco"], "styles", [1, 2], list(scale.MODES), random_judges, out, settings)
    configs = {"doco": TINY_DOCO}
    records = scale.run_scale(*args, 0, "tiny", configs=configs, progress=False)
    first, second = scale.concept_order("styles", 0)[:2]

    cells = {(r["method"], r["mode"], r["k"]): r for r in records}
    assert len(cells) == 8 and all(r["concepts"] == [first, second][: r["k"]] for r in records)
    # k = 1 is one erasure for both modes; k = 2 is one run of two concepts, or two runs in a chain.
    assert sorted(p.name for p in (out / "erasures" / "uce" / "style").iterdir()) == sorted(
        [
            scale.slug(first),
            f"{scale.slug(first)}+{scale.slug(second)}",
            f"{scale.slug(first)}_then_{scale.slug(second)}",
        ]
    )
    chain = json.loads(
        (scale.chain_dir(out, "doco", "style", [[first], [second]]) / "erasure.json").read_text()
    )
    assert [e["concepts"] for e in chain["erasures"]] == [[first], [second]]
    assert cells[("doco", "sequential", 2)]["seconds"] == pytest.approx(
        sum(e["seconds"] for e in chain["erasures"])
    )
    together = json.loads(
        (scale.chain_dir(out, "doco", "style", [[first, second]]) / "erasure.json").read_text()
    )
    assert [e["concepts"] for e in together["erasures"]] == [[first, second]]
    # Every cell of k = 2 is compared with the same base numbers (the base with both styles left out).
    assert len({(r["base_ira"], r["base_cra"], r["base_fd"]) for r in records if r["k"] == 2}) == 1

    # A rerun erases and scores nothing again; the report gathers every cell.
    monkeypatch.setattr("erasure.engine.erase", lambda *a, **k: pytest.fail("an erasure ran again"))
    monkeypatch.setattr(
        eval.evaluate, "evaluate_erasure", lambda *a, **k: pytest.fail("a cell was scored again")
    )
    again = scale.run_scale(*args, 0, "tiny", configs=configs, progress=False)
    assert again == records
    scale.write_scale(out, records, {"command": "python -m eval.scale", "machine": "test"})
    saved = json.loads((out / "scale.json").read_text())
    assert len(saved["records"]) == 8 and set(saved["records"][0]) >= {
        "method",
        "mode",
        "kind",
        "k",
        "ua",
        "ira",
        "cra",
        "fd",
        "base_ira",
        "base_cra",
        "base_fd",
        "seconds",
    }
    assert (out / "plots" / "styles-sequential-ua.png").exists() and "| uce |" in (
        out / "scale.md"
    ).read_text()
