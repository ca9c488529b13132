"""MethodConfig: every method's config documents each field, checks its choices and refuses what it cannot do."""

from __future__ import annotations

import dataclasses

import pytest

from erasure.gan.text_unlearn import TextUnlearnConfig
from erasure.methods import METHODS, MethodConfig
from erasure.methods.uce import UCEConfig

CONFIGS = [m.Config for m in METHODS.values()] + [TextUnlearnConfig]


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_documented_and_shared_fields_come_from_the_base(config_cls):
    assert issubclass(config_cls, MethodConfig)
    help_text = config_cls.help()
    assert all(len(text) > 10 for text in help_text.values()), {
        k: v for k, v in help_text.items() if len(v) <= 10
    }
    assert {"steps", "checkpoint_every", "divergence_factor", "mixed_precision"} <= set(help_text)
    for kind in ("style", "object"):
        for canvas in (True, False):
            config = config_cls.defaults(kind, canvas)
            assert config == (config_cls.canvas(kind) if canvas else config_cls.sd(kind))


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_choice_fields_refuse_unknown_values(config_cls):
    with pytest.raises(ValueError, match="mixed_precision must be one of 'no', 'bf16', not 'fp16'"):
        config_cls(mixed_precision="fp16")


def test_literal_fields_are_checked_by_name():
    from erasure.methods.doco import DoCoConfig
    from erasure.methods.esd import ESDConfig

    with pytest.raises(ValueError, match="surgery must be one of 'normalized', 'pcgrad', 'none'"):
        DoCoConfig(surgery="cagrad")
    with pytest.raises(ValueError, match="train_method must be one of"):
        ESDConfig(train_method="attn1")
    assert DoCoConfig(surgery="pcgrad").surgery == "pcgrad"


def test_with_steps_and_a_closed_form_that_has_none():
    from erasure.methods.ca import CAConfig

    assert CAConfig().with_steps(7).steps == 7
    with pytest.raises(ValueError, match="UCE is a closed-form edit: it has no steps to set."):
        UCEConfig().with_steps(5)
    assert not UCEConfig.has_steps and all(m.Config.has_steps for n, m in METHODS.items() if n != "uce")


def test_erase_refuses_steps_for_uce(tiny_pipeline):
    from erasure.engine import erase

    with pytest.raises(ValueError, match="no steps"):
        erase(tiny_pipeline, "van gogh", method="uce", steps=3, progress=False)


def test_fields_are_dataclass_fields_with_defaults():
    for config_cls in CONFIGS:
        for f in dataclasses.fields(config_cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (
                f.name
            )
