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


def parse_option(config_class, name: str, text: str):
    """The value of field `name` of `config_class` written as `text` on a command line, typed like its default:
    'true'/'false' for a bool, comma-separated items for a tuple or list, else the default's type.
    Raises ValueError with one sentence for an unknown field or a value of the wrong kind."""
    known = {f.name for f in fields(config_class)}
    if name not in known:
        raise ValueError(
            f"{config_class.__name__} has no field {name!r}; its fields are {', '.join(sorted(known))}."
        )
    default = getattr(config_class(), name)
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, tuple | list):
            kind = type(default[0]) if default else str
            return type(default)(kind(item.strip()) for item in text.split(","))
        return type(default)(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid {type(default).__name__} for {name}.") from None
