"""What `dlnlab-train --help` prints: the config groups and every option with its one-line description.

The descriptions are the `help` metadata of the schema's fields (dlnlab.experiments.fields.option), the
one place they are written; the help shows the first sentence of each.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dlnlab.experiments import config as _config
from dlnlab.experiments.guards import check_name
from dlnlab.experiments.task_kinds import TASKS


def field_help(f: dataclasses.Field) -> str:
    """The one-line description of a schema field: the first sentence of its `help` metadata."""
    return one_line(f.metadata.get("help", ""))


def one_line(text: str, width: int = 100) -> str:
    """The first sentence of a comment, cut to `width` characters."""
    text = re.split(r"(?<=[.:;])\s+(?=[A-Z(])", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


def _walk(cls, prefix: str, rows: list) -> None:
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        sub = getattr(_config, str(f.type), None) if isinstance(f.type, str) else f.type
        if dataclasses.is_dataclass(sub):
            _walk(sub, name + ".", rows)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        rows.append((name, _fmt(default), field_help(f)))


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def option_rows(cls=None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted option, default, description) of every leaf option of a config dataclass."""
    rows: list = []
    _walk(cls or _config.Config, prefix, rows)
    return rows


def config_groups(conf_dir: str) -> dict[str, list[str]]:
    """{group: [choices]} of the shipped configs (the internal *_schema entries are not choices)."""
    root = Path(conf_dir)
    groups: dict[str, list[str]] = {}
    for d in sorted(p for p in root.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        names = sorted(f.stem for f in d.glob("*.yaml") if not f.stem.endswith("_schema"))
        groups[str(d.relative_to(root))] = names
    return groups


def help_text(conf_dir: str, version: str) -> str:
    """The text of `dlnlab-train --help`."""
    lines = [f"dlnlab-train {version}: train deep linear networks (GD, SGD, ridge; ensembles); every record",
             "labelled from theory. Usage: dlnlab-train [-m] [GROUP=CHOICE ...] [OPTION=VALUE ...]",
             "",
             "  dlnlab-train optim=sgd optim.lr=0.01 model.ensemble=64",
             "  dlnlab-train -m optim.lr=0.002,0.005 'seed=range(0,3)'    # a sweep (multirun)",
             "  dlnlab-train --version | --cfg job (print the composed config) | --hydra-help",
             "",
             "Config groups (GROUP=CHOICE):"]
    for g, names in config_groups(conf_dir).items():
        if g == "hydra/launcher":  # the plugins' stock launchers come too
            names = [*names, "basic", "joblib", "submitit_local", "submitit_slurm"]
        lines.append(f"  {g:18s} {', '.join(names)}")
    lines.append("")
    lines.append("Options (OPTION=VALUE; default in brackets):")
    for name, default, note in option_rows():
        if name != "task":
            lines.append(f"  {name:28s} [{default}]  {note}".rstrip())
    for kind, spec in TASKS.items():
        lines += ["", f"Options of task={kind}:"]
        for name, default, note in option_rows(spec.schema, "task."):
            lines.append(f"  {name:28s} [{default}]  {note}".rstrip())
    lines += ["", "Docs: README.md; every run-table column and TensorBoard tag: docs/columns.md."]
    return "\n".join(lines)


def check_choices(choices: dict) -> None:
    """Raise ConfigError when a config group was set to an internal schema (`optim=optim_schema`)."""
    for group, choice in choices.items():
        if isinstance(choice, str) and choice.endswith("_schema"):
            raise _config.ConfigError(f"{group}={choice!r} is invalid: {choice} is an internal schema, "
                                      f"not a choice (see dlnlab-train --help for the {group} choices)")


def _parsed(overrides):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([str(o) for o in overrides])
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override itself
        return []


def check_overrides(overrides, conf_dir: str) -> None:
    """Check command-line overrides before Hydra creates any folder (ConfigError, one line naming
    the override): a config group's choice must exist (an `optional` group such as `experiment`
    would otherwise be skipped silently), `+key` may only add what the typed schema declares, and
    `name` must be a folder name, not a path."""
    groups = config_groups(conf_dir)
    for o in _parsed(overrides):
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        if key in groups:
            allowed = [c for c in groups[key]]
            for v in values:
                if v is not None and str(v) not in allowed:
                    raise _config.ConfigError(f"{key}={v!r} is invalid: allowed {' | '.join(allowed)}")
        elif o.is_add() or o.is_force_add():
            raise _config.ConfigError(f"{o.input_line}: {key} is not an option (the typed schema has no such "
                                      "key; see dlnlab-train --help for the options)")
        elif key == "name":
            for v in values:
                check_name(v)
