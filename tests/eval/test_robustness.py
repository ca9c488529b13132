"""The robustness report by hand: the rows, the means per method and the oracle's reference rows."""

from __future__ import annotations

import math

from eval.robustness import reference_rows, robustness_markdown, robustness_rows


def audit_record(method: str, concept: str, inversion: float, relearn: float, step: int | None) -> dict:
    return {
        "method": method,
        "concept": concept,
        "asr": {"inversion": inversion, "relearn": relearn},
        "base_asr": {"inversion": 100.0},
        "control_asr": {"inversion": 0.0, "relearn": 0.0},
        "base_control_asr": {"inversion": 0.0},
        "seconds": {"inversion": 80.0, "relearn": 200.0},
        "probe_accuracy": {"base": 100.0, "erased": 90.0},
        "steps_to_50": {"unet": step},
        "definitions": {"inversion": "one word", "relearn": "fine-tuning"},
    }


AUDITS = [
    audit_record("uce", "van gogh", 100.0, 40.0, None),
    audit_record("doco", "van gogh", 80.0, 100.0, 10),
    audit_record("uce", "tree", 50.0, 60.0, 25),
]


def test_rows_put_one_base_row_before_each_concepts_methods():
    rows = robustness_rows(AUDITS, ["inversion", "relearn", "probe"])
    assert [(r["method"], r["concept"]) for r in rows] == [
        ("base", "van gogh"),
        ("uce", "van gogh"),
        ("doco", "van gogh"),
        ("base", "tree"),
        ("uce", "tree"),
    ]
    assert rows[0]["inversion"] == 100.0 and math.isnan(rows[0]["relearn"])  # relearn has no base run
    assert rows[1]["steps to 50%"] == "never" and rows[2]["steps to 50%"] == 10
    assert rows[1]["probe"] == 90.0 and rows[0]["probe"] == 100.0


def test_the_mean_per_method_is_over_its_concepts():
    text = robustness_markdown(AUDITS, ["inversion", "relearn"], {"command": "python -m eval.bench"})
    means = text.split("## Mean ASR per method (%)")[1].split("##")[0]
    # uce: inversion (100 + 50) / 2 = 75, relearn (40 + 60) / 2 = 50 over 2 cells; doco alone
    assert "| uce | 2 | 75.00 | 50.00 |" in means
    assert "| doco | 1 | 80.00 | 100.00 |" in means
    assert "OMP_WAIT_POLICY=PASSIVE python -m eval.bench" in text and "n/a" in text


def test_reference_rows_put_the_oracle_first_then_every_method_of_its_concept():
    records = {
        ("uce", "van gogh"): {"ua": 100.0, "ira": 99.0, "cra": 98.0, "fd": 3.0},
        ("uce", "tree"): {"ua": 90.0, "ira": 97.0, "cra": 96.0, "fd": 4.0},
    }
    audits = {("uce", "van gogh"): AUDITS[0]}
    oracle = {
        "ua": 95.0,
        "ira": 99.5,
        "cra": 99.6,
        "fd": 3.5,
        "relearn": {"asr": 0.0},
        "steps_to_50": {"unet": None},
    }
    rows = reference_rows(records, audits, {"van gogh": oracle})
    assert [r["model"] for r in rows] == ["oracle (never saw it)", "uce"]
    assert rows[0]["relearn ASR"] == 0.0 and rows[0]["steps to 50%"] == "never"
    assert rows[1]["relearn ASR"] == 40.0 and rows[1]["steps to 50%"] == "never" and rows[1]["ua"] == 100.0
