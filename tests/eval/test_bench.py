"""The benchmark end to end on the tiny pipeline (2 methods x 1 concept, random-weight judges), and its CLI errors."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

import erasure.engine
import eval.evaluate
from erasure.canvas.world import ARTIST_STYLES, OBJECTS
from erasure.methods.doco import DoCoConfig
from eval import bench
from eval.answer_set import world_items
from eval.evaluate import EvalSettings
from tests.helpers import TINY_DOCO


def test_parse_inputs():
    assert bench.parse_concepts("styles") == [(s, "style") for s in ARTIST_STYLES]
    assert len(bench.parse_concepts("all")) == len(ARTIST_STYLES) + len(OBJECTS)
    assert bench.parse_concepts("kitten, Monet,cat") == [("cat", "object"), ("monet", "style")]
    with pytest.raises(bench.UsageError, match="unknown concept 'rembrandt'"):
        bench.parse_concepts("monet,rembrandt")
    with pytest.raises(bench.UsageError, match="unknown concept 'plain'"):
        bench.parse_concepts("plain")  # the anchor, not an erasable concept
    assert bench.parse_methods("uce, doco,uce", ["doco", "uce"]) == ["uce", "doco"]
    with pytest.raises(bench.UsageError, match="unknown method 'sld'; valid methods: doco, uce"):
        bench.parse_methods("doco,sld", ["doco", "uce"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "doco,nope"], "unknown method 'nope'"),
        (["--concepts", "rembrandt"], "unknown concept 'rembrandt'"),
        (["--seeds", "0"], "--seeds"),
        (["--model", "/no/such/folder", "--concepts", "monet"], "/no/such/folder"),
        (["--device", "nonsense", "--concepts", "monet"], "--device 'nonsense' cannot be used here"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    assert bench.main([*argv, "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bench_end_to_end_and_rerun_skips_finished_cells(tiny_pipeline, random_judges, tmp_path, monkeypatch):
    small = world_items(styles=["plain", "van gogh", "monet"], objects=["cat", "fish"])
    monkeypatch.setattr(eval.evaluate, "world_items", lambda: small)
    monkeypatch.setattr(eval.evaluate, "REAL_SEEDS", 1)
    settings = EvalSettings(seeds=(0,), num_inference_steps=2, batch_size=16)
    kwargs = {
        "methods": ["doco", "uce"],
        "concepts": [("van gogh", "style")],
        "judges": random_judges,
        "out": tmp_path / "bench",
        "settings": settings,
        "configs": {"doco": DoCoConfig(**TINY_DOCO)},
        "model": "tiny",
        "progress": False,
    }
    records = bench.run_bench(tiny_pipeline, **kwargs)
    out = tmp_path / "bench"

    assert [(r["method"], r["concept"]) for r in records] == [("doco", "van gogh"), ("uce", "van gogh")]
    saved = json.loads((out / "results.json").read_text())
    assert saved["model"] == "tiny" and len(saved["records"]) == 2 and "gap_to_doco" in saved["definitions"]
    for r in saved["records"]:
        assert r["mean"] == pytest.approx((r["ua"] + r["ira"] + r["cra"]) / 3)
        assert (
            r["storage_bytes"]
            == (out / "deltas" / r["method"] / "van-gogh" / "delta.safetensors").stat().st_size
        )
        for key in ("ua", "ira", "cra", "alias_ua", "fd", "seconds", "peak_memory_bytes"):
            assert key in r
        assert {"ua", "ira", "cra", "fd", "storage_bytes"} <= set(r["definitions"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["method"] for row in rows] == ["doco", "uce"] and float(rows[1]["ua"]) == saved["records"][1][
        "ua"
    ]
    table = (out / "results.md").read_text()
    assert "## Styles: means over 1 concepts" in table and "| uce |" in table and "gap to DoCo" in table
    assert "### van gogh (style, anchor plain)" in table and "**UA**" in table
    for name in ("styles-ua.png", "styles-mean.png", "styles-storage_mb.png", "styles-ua_vs_ira.png"):
        assert Image.open(out / "plots" / name).size[0] > 100
    grid = Image.open(out / "grids" / "van-gogh.png")
    assert grid.width > 3 * 96  # original + two methods
    assert json.loads((out / "cells" / "uce" / "van-gogh.json").read_text())["method"] == "uce"
    assert not (out / "checkpoints" / "doco" / "van-gogh").exists()  # removed once the cell is saved

    def no_erasing(*args, **kwargs):
        raise AssertionError("a finished cell was erased again")

    monkeypatch.setattr(erasure.engine, "erase", no_erasing)
    again = bench.run_bench(tiny_pipeline, **kwargs)
    assert [r["ua"] for r in again] == [r["ua"] for r in records]

    with pytest.raises(bench.UsageError, match="other settings"):
        bench.run_bench(tiny_pipeline, **{**kwargs, "settings": EvalSettings(seeds=(0, 1))})


def tiny_audit_bench(monkeypatch, random_judges, tmp_path, attack_configs, styles=("van gogh",)) -> dict:
    """run_bench's arguments (all but the methods) for van gogh audited on a (plain + `styles`) x 2-object
    answer set."""
    small = world_items(styles=["plain", *styles], objects=["cat", "fish"])
    monkeypatch.setattr(eval.evaluate, "world_items", lambda: small)
    monkeypatch.setattr(eval.evaluate, "REAL_SEEDS", 1)
    return {
        "concepts": [("van gogh", "style")],
        "judges": random_judges,
        "out": tmp_path / "bench",
        "settings": EvalSettings(seeds=(0,), num_inference_steps=2, batch_size=16),
        "model": "tiny",
        "grids": False,
        "progress": False,
        "attack_configs": attack_configs,
    }


def test_bench_attacks_audit_every_cell_once(tiny_pipeline, random_judges, tmp_path, monkeypatch):
    from eval import audit
    from eval.attacks import inversion, noise

    tiny = {"eval_seeds": 1, "num_inference_steps": 2}
    attack_configs = {
        "inversion": inversion.InversionConfig(images=2, steps=1, batch_size=2, **tiny),
        "noise": noise.NoiseConfig(etas=2, **tiny),
    }
    kwargs = {
        "methods": ["uce"],
        **tiny_audit_bench(monkeypatch, random_judges, tmp_path, attack_configs),
        "oracles": {"van gogh": tiny_pipeline},  # stands in for a model trained without van gogh
    }
    bench.run_bench(tiny_pipeline, **kwargs)
    out = tmp_path / "bench"
    cell = json.loads((out / "attacks" / "uce" / "van-gogh.json").read_text())
    assert cell["method"] == "uce" and set(cell["asr"]) == set(cell["base_asr"]) == {"inversion", "noise"}
    table = (out / "robustness.md").read_text()
    assert "| base | van gogh |" in table and "| uce | van gogh |" in table and "## Controls (%)" in table
    assert json.loads((out / "robustness.json").read_text())["audits"][0]["asr"] == cell["asr"]
    assert Image.open(out / "plots" / "robustness-inversion.png").size[0] > 100
    assert "## The exact-unlearning reference" in table and "| oracle (never saw it) | van gogh |" in table
    oracle = json.loads((out / "attacks" / "oracle" / "van-gogh.json").read_text())
    assert 0 <= oracle["ua"] <= 100 and {"ua", "ira", "cra", "fd"} <= set(oracle)

    real_audit = audit.audit
    monkeypatch.setattr(audit, "audit", no_attacking)
    bench.run_bench(tiny_pipeline, **kwargs)
    # another budget for one attack reruns that attack alone, in place; the other attack's results stay
    asked = []

    def recording_audit(pipe, base, concept, kind, attacks, *args, **kw):
        asked.append(list(attacks))
        return real_audit(pipe, base, concept, kind, attacks, *args, **kw)

    monkeypatch.setattr(audit, "audit", recording_audit)
    other = {**kwargs["attack_configs"], "noise": noise.NoiseConfig(etas=3, **tiny)}
    bench.run_bench(tiny_pipeline, **{**kwargs, "attack_configs": other})
    assert asked == [["noise"]]
    rerun = json.loads((out / "attacks" / "uce" / "van-gogh.json").read_text())
    assert (
        rerun["attacks"]["noise"]["config"]["etas"] == 3
        and len(rerun["attacks"]["noise"]["details"]["asr_by_eta"]) == 3
    )
    assert (
        rerun["attacks"]["inversion"] == cell["attacks"]["inversion"]
        and rerun["asr"]["inversion"] == cell["asr"]["inversion"]
    )
    bench.run_bench(tiny_pipeline, **{**kwargs, "attack_configs": other})  # now finished: nothing reruns
    assert asked == [["noise"]]


def no_attacking(*args, **kwargs):
    raise AssertionError("a finished audit cell was attacked again")


def test_report_only_gathers_finished_cells_and_runs_nothing(
    tiny_pipeline, random_judges, tmp_path, monkeypatch
):
    from eval.attacks import noise

    noise_only = {"noise": noise.NoiseConfig(etas=2, eval_seeds=1, num_inference_steps=2)}
    kwargs = tiny_audit_bench(monkeypatch, random_judges, tmp_path, noise_only)
    bench.run_bench(tiny_pipeline, methods=["uce"], **kwargs)  # one process ran uce only

    def nothing_runs(*args, **kwargs):
        raise AssertionError("--report-only ran a cell")

    monkeypatch.setattr(bench, "run_cell", nothing_runs)
    monkeypatch.setattr(bench, "run_audit_cell", nothing_runs)
    records = bench.run_bench(tiny_pipeline, methods=["uce", "doco"], finished_only=True, **kwargs)
    assert [r["method"] for r in records] == ["uce"]
    out = tmp_path / "bench"
    assert not (out / "cells" / "doco").exists() and not (out / "attacks" / "doco").exists()
    assert [a["method"] for a in json.loads((out / "robustness.json").read_text())["audits"]] == ["uce"]


def test_launched_processes_share_the_cells_and_the_first_gathers(
    tiny_pipeline, random_judges, tmp_path, monkeypatch
):
    """`accelerate launch`: each process its own GPU and every n-th cell, no tables; then one gathering run."""
    from eval.launch import launched_shard, shard_marker, wait_for_shards

    env = {
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "MASTER_PORT": "29500",
        "CUDA_VISIBLE_DEVICES": "4,5",
    }
    assert launched_shard(env) == (1, 2) and env == {"CUDA_VISIBLE_DEVICES": "5"}
    assert launched_shard({}) == (0, 1)

    kwargs = {
        **tiny_audit_bench(monkeypatch, random_judges, tmp_path, None, styles=("van gogh", "monet")),
        "methods": ["uce"],
        "concepts": [("van gogh", "style"), ("monet", "style")],
    }
    out = tmp_path / "bench"
    second = bench.run_bench(tiny_pipeline, **kwargs, shard=(1, 2))
    assert [r["concept"] for r in second] == ["monet"] and not (out / "results.json").exists()
    first = bench.run_bench(tiny_pipeline, **kwargs, shard=(0, 2))
    assert [r["concept"] for r in first] == ["van gogh", "monet"]  # its own cell, and the other's found done
    gathered = bench.run_bench(tiny_pipeline, **kwargs, finished_only=True)
    assert len(json.loads((out / "results.json").read_text())["records"]) == 2 == len(gathered)

    shard_marker(out, 0).parent.mkdir(parents=True, exist_ok=True)
    shard_marker(out, 0).write_text(json.dumps({"rank": 0, "status": "done"}))
    shard_marker(out, 1).write_text(json.dumps({"rank": 1, "status": "failed", "error": "out of memory"}))
    with pytest.raises(RuntimeError, match="process 1 failed: out of memory"):
        wait_for_shards(out, 2, poll_seconds=0)
    shard_marker(out, 1).write_text(json.dumps({"rank": 1, "status": "done"}))
    wait_for_shards(out, 2, poll_seconds=0)  # returns once both are done
