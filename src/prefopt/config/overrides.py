"""The command line's `key=value` and `group=option` arguments, checked before Hydra composes.

Hydra answers a misspelled key (`loss.betta=0.1`) with six lines that end by advising to add
the typo with `+`, and a misspelled option of a group (`loop=onlin`) with ten that list
internal schema names (`loop_schema`) among the options; both exit 1. Here each becomes the
one-line `PrefoptError` of every other user error (exit 2), naming the closest valid names.

Keys are looked up in the typed schemas (`schema.py`), never in a composed config, so that
the check costs nothing and also holds for a `--multirun` sweep's values. Where the schema
cannot say (a section typed `Any` or `dict`: `optim.optimizer`, `trainer.callbacks`, a judge
of one's own), the key is left to Hydra and to `checks.check_known_keys` after composition.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from prefopt.config.schema import GROUP_SCHEMAS, Config
from prefopt.errors import PrefoptError

NOT_GROUPS = ("hydra", "local")
"""Folders of `conf/` that no `group=option` argument chooses: Hydra's own settings (chosen as
`hydra/launcher=...`) and site files read by them."""


def config_groups(config_dir: str | Path) -> list[str]:
    """The groups whose option a command line chooses (`loss=ipo`): `conf/`'s folders."""
    return sorted(
        p.name for p in Path(config_dir).iterdir() if p.is_dir() and p.name not in NOT_GROUPS
    )


def group_options(config_dir: str | Path, group: str) -> list[str]:
    """A group's options: its YAML files (never the `<group>_schema` entries Hydra also lists)."""
    return sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))


def check_group_option(group: str, value: str, config_dir: str | Path) -> None:
    """Every option of `group=value` (several in a sweep: `loss=dpo,ipo`) exists."""
    options = group_options(config_dir, group)
    for option in value.split(","):
        option = option.strip().strip("'\"")
        if option and option != "null" and option not in options:
            raise PrefoptError(
                f"{group}={option}: there is no such {group}; {_hint(option, options)}"
            )


def _hint(typed: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(typed, valid, n=3, cutoff=0.6)
    listed = ", ".join(valid)
    if close:
        return f"did you mean {' or '.join(close)}? (all: {listed})"
    return f"choose one of: {listed}"


# ---------------------------------------------------------------------------------------------
# Keys


def check_key(key: str, args: list[str], groups: list[str]) -> None:
    """A plain `key=value` (no `+`) overrides a key every config has: it is in its section's
    schema. `args` say which loss or judge is chosen; with none given (a sweep or experiment
    file may choose), a key of any of them passes."""
    first, *rest = key.split(".")
    if first == "hydra" or "/" in key or not first:  # hydra/launcher=…: Hydra's own
        return
    if first not in _field_names(Config) and first not in groups:
        raise PrefoptError(_top_level_message(first, key))
    schemas = _section_schemas(first, _chosen_options(args)) if rest else None
    if schemas is None:
        return
    problems = [_unknown_in(schema, rest) for schema in schemas]
    if all(problems):
        depth = max(p[0] for p in problems)
        known = sorted({name for p in problems if p[0] == depth for name in p[1]})
        section = ".".join([first, *rest[:depth]])
        raise PrefoptError(
            unknown_key_message(f"{section}.{rest[depth]}", section, rest[depth], known)
        )


def unknown_key_message(name: str, section: str, key: str, known: list[str]) -> str:
    """`name` (the dotted key as typed, up to the unknown part) is not a key of `section`."""
    close = difflib.get_close_matches(key, known, n=1)
    prefix = f"{section}." if section else ""
    if close:
        hint = f"did you mean {prefix}{close[0]}?"
    else:
        public = [k for k in known if not k.startswith("_")]
        hint = f"its keys are: {', '.join(public)}" if public else "it takes none"
    return f"{name}: {section or 'the config'} has no key {key!r}; {hint}"


def _top_level_message(first: str, key: str | None = None) -> str:
    """An unknown top-level name: the closest top-level key, else the closest key of any
    section (`betta` -> `loss.beta`)."""
    top = [name for name in _field_names(Config) if not name.startswith("_")]
    close = difflib.get_close_matches(first, top, n=1, cutoff=0.75)
    if not close:
        leaves = {
            f"{section}.{name}": name
            for section, schemas in _all_sections().items()
            for schema in schemas
            for name in _field_names(schema)
            if not name.startswith("_")
        }
        names = difflib.get_close_matches(first, sorted(set(leaves.values())), n=1, cutoff=0.75)
        close = sorted(path for path, name in leaves.items() if names and name == names[0])[:3]
    hint = f"did you mean {' or '.join(close)}?" if close else f"its keys are: {', '.join(top)}"
    return f"{key or first}: the config has no key {first!r}; {hint}"


def _unknown_in(schema: Any, parts: list[str]) -> tuple[int, list[str]] | None:
    """None when `parts` is a key of the schema (or reaches a part it cannot check); else the
    index of the first unknown part and the names valid there."""
    for depth, part in enumerate(parts):
        schema = _unwrap_optional(schema)
        if not dataclasses.is_dataclass(schema):
            return None  # Any, a dict or a leaf value: Hydra judges the rest
        hints = typing.get_type_hints(schema)
        if part not in hints:
            return depth, _field_names(schema)
        schema = hints[part]
    return None


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return hint


def _field_names(schema: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _chosen_options(args: list[str]) -> dict[str, str]:
    """`loss` and `judge` as the command line chooses them (one option, not a sweep's list)."""
    chosen = {}
    for arg in args:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key in ("loss", "judge") and "," not in value and "(" not in value:
            chosen[key] = value.strip().strip("'\"")
    return chosen


def _section_schemas(first: str, chosen: dict[str, str]) -> list[type] | None:
    """The schemas a top-level section may have (every loss's, when none is chosen); None for
    a name that is not a typed section."""
    if first in ("loss", "judge"):
        options = _store_schemas(first)
        if not options:
            return None
        if first in chosen:
            # A judge of one's own has no schema: its arguments are checked by its signature.
            return [options[chosen[first]]] if chosen[first] in options else None
        return list(options.values())
    schema = GROUP_SCHEMAS.get(first) or typing.get_type_hints(Config).get(first)
    return [schema] if dataclasses.is_dataclass(schema) else None


def _store_schemas(group: str) -> dict[str, type]:
    """{option: schema} of the losses or judges, as registered in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    suffix = "_schema.yaml" if group == "loss" else "_judge_schema.yaml"
    try:
        names = [n for n in store.list(group) if n.endswith(suffix)]
    except OSError:  # not registered (register_configs not run): nothing to check against
        return {}
    schemas = {}
    for name in names:
        node = store.load(f"{group}/{name}").node
        schemas[name.removesuffix(suffix)] = OmegaConf.get_type(node)
    return schemas


def _all_sections() -> dict[str, list[type]]:
    hints = typing.get_type_hints(Config)
    sections: dict[str, list[type]] = {
        name: [hint] for name, hint in hints.items() if dataclasses.is_dataclass(hint)
    }
    sections.update({name: [schema] for name, schema in GROUP_SCHEMAS.items()})
    for group in ("loss", "judge"):
        sections[group] = list(_store_schemas(group).values())
    return sections
