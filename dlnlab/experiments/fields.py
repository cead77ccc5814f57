"""How a config option is declared and refused: `option(default, help)` declares a schema field with its
`--help` text in the field's metadata; `need(ok, option, allowed, value)` raises the ConfigError that
names the option and what is allowed."""
from __future__ import annotations

from dataclasses import field

__all__ = ["ConfigError", "need", "option"]


class ConfigError(ValueError):
    """An invalid option; the message names it and what is allowed."""


def need(ok: bool, option: str, allowed: str, value) -> None:
    """Raise ConfigError `option=value is invalid: allowed ...` unless `ok`."""
    if not ok:
        raise ConfigError(f"{option}={value!r} is invalid: allowed {allowed}")


def option(default, help: str):
    """A schema field with its `--help` description in the field's metadata (a list default is copied
    for every instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})
