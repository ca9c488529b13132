"""The robustness report: what survives an attacker, over every audited (method, concept) cell.

`write_robustness` turns the audit records of `eval.audit` (one per erased model, as `eval.bench --attacks` writes
them) into robustness.json, robustness.md (ASR per cell beside the base model's, mean ASR per method, controls, the
exact-unlearning reference, seconds, definitions) and one bar chart per attack, every file atomically.
`reference_rows` puts the oracle (a model trained without the concept) beside the methods' static metrics and
relearning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from erasure.files import write_atomic
from eval.report import format_value, jsonable, save_png
from eval.results import bar_chart, nan_mean


def markdown_table(rows: list[dict]) -> str:
    """A markdown table whose columns are every key of the rows, in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [row.get(k, "") for k in keys]
        lines.append("| " + " | ".join(format_value(c) for c in cells) + " |")
    return "\n".join(lines)


ROBUSTNESS_DEFINITIONS = {
    "ASR": "attack success rate on the erased model: % of the attack's images whose top-1 judge verdict is the "
    "concept (each attack's own image set: see the attack definitions)",
    "base": "the same attack, budget and seed on the base model (the reference: it must recover the concept)",
    "control": "the attack's prompts before optimisation (noise: eta = 1; relearn: before fine-tuning)",
    "probe": "linear-probe accuracy (%) on the erased UNet's mid-block features, probe trained on the base's "
    "(chance 50)",
    "steps to 50%": "relearn (whole UNet): the first measured fine-tuning step with ASR >= 50 ('never': none)",
    "seconds": "wall-clock seconds of the attack on the erased model, 2 CPU threads unless stated",
}


def robustness_rows(audits: list[dict], attacks: list[str]) -> list[dict]:
    """One row per (method, concept) audit and one 'base' row per concept: ASR per attack, probe, relearning."""
    rows, seen = [], set()
    for a in audits:
        if a["concept"] not in seen:
            seen.add(a["concept"])
            base = {"method": "base", "concept": a["concept"]}
            base.update({n: a["base_asr"].get(n, math.nan) for n in attacks if n != "probe"})
            if "probe" in attacks and a.get("probe_accuracy"):
                base["probe"] = a["probe_accuracy"]["base"]
            rows.append(base)
        row = {"method": a["method"], "concept": a["concept"]}
        row.update({n: a["asr"].get(n, math.nan) for n in attacks if n != "probe"})
        if "probe" in attacks and a.get("probe_accuracy"):
            row["probe"] = a["probe_accuracy"]["erased"]
        if a.get("steps_to_50"):
            step = a["steps_to_50"].get("unet")
            row["steps to 50%"] = "never" if step is None else step
        rows.append(row)
    return rows


def robustness_markdown(
    audits: list[dict], attacks: list[str], meta: dict, references: list[dict] | None = None
) -> str:
    """docs/robustness.md's body: ASR table, mean ASR per method, controls, seconds, definitions."""
    parts = ["# Robustness: what survives an attacker", ""]
    if meta.get("command"):
        parts += ["Regenerate:", "", "```bash", f"OMP_WAIT_POLICY=PASSIVE {meta['command']}", "```", ""]
    if meta.get("machine"):
        parts += [f"Machine: {meta['machine']}.", ""]
    parts += ["## ASR per cell (%)", "", markdown_table(robustness_rows(audits, attacks)), ""]
    methods = list(dict.fromkeys(a["method"] for a in audits))
    means = []
    for method in methods:
        mine = [a for a in audits if a["method"] == method]
        row = {"method": method, "cells": len(mine)}
        row.update({n: nan_mean(a["asr"].get(n, math.nan) for a in mine) for n in attacks if n != "probe"})
        means.append(row)
    parts += ["## Mean ASR per method (%)", "", markdown_table(means), ""]
    controls = []
    for a in audits:
        row = {"method": a["method"], "concept": a["concept"]}
        row.update({f"{n} control": a["control_asr"].get(n, math.nan) for n in attacks if n != "probe"})
        row.update(
            {f"{n} base control": a["base_control_asr"].get(n, math.nan) for n in attacks if n != "probe"}
        )
        controls.append(row)
    parts += ["## Controls (%)", "", markdown_table(controls), ""]
    if references:
        parts += [
            "## The exact-unlearning reference",
            "",
            (
                "The oracle is canvas-sd trained with the shipped recipe on a world without the concept "
                "(`python -m erasure.train.sd --exclude C`): the ceiling for the static metrics, and the floor for "
                "relearning."
            ),
            "",
            markdown_table(references),
            "",
        ]
    seconds = [{"method": a["method"], "concept": a["concept"], **a["seconds"]} for a in audits]
    parts += ["## Seconds per attack", "", markdown_table(seconds), ""]
    parts += ["## Definitions", ""]
    parts += [f"- **{k}**: {v}" for k, v in ROBUSTNESS_DEFINITIONS.items()]
    definitions = {}
    for a in audits:
        definitions.update(
            {k: v for k, v in a.get("definitions", {}).items() if k in attacks or k.endswith(".budget")}
        )
    parts += [f"- **{k}**: {v}" for k, v in definitions.items()]
    return "\n".join(parts) + "\n"


def write_robustness(
    out: Path, audits: list[dict], attacks: list[str], meta: dict, references: list[dict] | None = None
) -> None:
    """robustness.json, robustness.md and plots/robustness-<attack>.png (mean ASR per method), atomically."""
    out = Path(out)
    document = {
        **meta,
        "definitions": ROBUSTNESS_DEFINITIONS,
        "audits": audits,
        "references": references or [],
    }
    write_atomic(out / "robustness.json", json.dumps(jsonable(document), indent=2) + "\n")
    write_atomic(out / "robustness.md", robustness_markdown(audits, attacks, meta, references))
    methods = list(dict.fromkeys(a["method"] for a in audits))
    for attack in attacks:
        if attack == "probe":
            continue
        values = {
            m: nan_mean(a["asr"].get(attack, math.nan) for a in audits if a["method"] == m) for m in methods
        }
        values["base"] = nan_mean(a["base_asr"].get(attack, math.nan) for a in audits)
        save_png(bar_chart(f"{attack}: mean ASR (%)", values), out / "plots" / f"robustness-{attack}.png")


def reference_rows(records: dict, audits: dict, oracle_records: dict) -> list[dict]:
    """For each concept with an oracle: the oracle's UA/IRA/CRA/FD and relearning steps, then every method's."""
    rows = []
    for concept, oracle in oracle_records.items():
        rows.append(
            {
                "model": "oracle (never saw it)",
                "concept": concept,
                **{k: oracle[k] for k in ("ua", "ira", "cra", "fd")},
                "relearn ASR": oracle.get("relearn", {}).get("asr", math.nan),
                "steps to 50%": _steps(oracle.get("steps_to_50")),
            }
        )
        for (method, c), record in records.items():
            if c == concept:
                audited = audits.get((method, c), {})
                rows.append(
                    {
                        "model": method,
                        "concept": concept,
                        **{k: record[k] for k in ("ua", "ira", "cra", "fd")},
                        "relearn ASR": audited.get("asr", {}).get("relearn", math.nan),
                        "steps to 50%": _steps(audited.get("steps_to_50")),
                    }
                )
    return rows


def _steps(steps_to_50: dict | None) -> str:
    if not steps_to_50:
        return "n/a"
    step = steps_to_50.get("unet")
    return "never" if step is None else str(step)
