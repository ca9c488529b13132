"""`option(default, help)`: a dataclass field with its one-line documentation, for every config of the project
(erasure methods' `MethodConfig`, attacks' `AttackConfig`), in the manner of PEFT's `field(metadata={"help": ...})`."""

from __future__ import annotations

from dataclasses import field, fields


def option(default, help: str):
    """A dataclass field with its default and its one-line documentation (`Config.help()` lists them)."""
    kwargs = (
        {"default_factory": lambda: default} if isinstance(default, list | dict) else {"default": default}
    )
    return field(metadata={"help": help}, **kwargs)


def options_help(config_class) -> dict[str, str]:
    """Every field's one-line documentation, by name, for a dataclass whose fields were made with `option`."""
    return {f.name: f.metadata.get("help", "") for f in fields(config_class)}
