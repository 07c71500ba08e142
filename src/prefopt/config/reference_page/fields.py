"""What the schemas say about each key: its annotation as written and its docstring.

A dataclass field's docstring (the string literal right after it) is not kept at runtime, so
the class's source is read with `ast`. A schema made at runtime (each loss's, by
`config.schema.loss_schema`) has no source: its fields are read from the class its `_target_`
names, the loss dataclass itself.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import textwrap
import typing
from dataclasses import dataclass

from hydra.utils import get_class


@dataclass(frozen=True)
class FieldInfo:
    annotation: str
    """The type as written in the schema, with the Enum's values when it is a choice."""
    doc: str


def _class_source_fields(cls: type) -> dict[str, FieldInfo]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # made at runtime: no source
        return {}
    (node,) = ast.parse(source).body
    found = {}
    for i, stmt in enumerate(node.body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        doc = ""
        following = node.body[i + 1] if i + 1 < len(node.body) else None
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            if isinstance(following.value.value, str):
                doc = " ".join(following.value.value.split())
        found[stmt.target.id] = FieldInfo(ast.unparse(stmt.annotation), doc)
    return found


def _enums_in(hint) -> list[type[enum.Enum]]:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return [hint]
    return [e for arg in typing.get_args(hint) for e in _enums_in(arg)]


def _type_hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: shown as written, without choices
        return {}


def _target_class(cls: type) -> type | None:
    """The class a runtime-made schema stands for, from its `_target_` default."""
    for f in dataclasses.fields(cls):
        if f.name == "_target_" and isinstance(f.default, str):
            try:
                return get_class(f.default)
            except Exception:
                return None
    return None


def schema_fields(cls: type) -> dict[str, FieldInfo]:
    """Every field of the dataclass `cls` (its bases' first) with its annotation and docstring."""
    found: dict[str, FieldInfo] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            found.update(_class_source_fields(klass))
    hints = _type_hints(cls)
    target = _target_class(cls)
    if target is not None and dataclasses.is_dataclass(target):
        for name, info in schema_fields(target).items():
            found.setdefault(name, info)
        hints = {**_type_hints(target), **hints}
    for f in dataclasses.fields(cls):
        if f.name not in found:
            annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            found[f.name] = FieldInfo(annotation or str(f.type), "")
        if f.name == "_target_" and not found[f.name].doc:
            found[f.name] = FieldInfo(found[f.name].annotation, "The class this section builds.")
    for name, info in found.items():
        choices = [m.value for e in _enums_in(hints.get(name)) for m in e]
        if choices:
            text = f"{info.annotation} (one of " + ", ".join(map(str, choices)) + ")"
            found[name] = FieldInfo(text, info.doc)
    return found


def class_doc(cls: type | None) -> str:
    """The first paragraph of a schema's own docstring (not the one dataclass generates)."""
    if cls is None or "__doc__" not in vars(cls) or not cls.__doc__:
        return ""
    if cls.__doc__.startswith(f"{cls.__name__}("):  # dataclass's generated signature
        return ""
    return " ".join(inspect.cleandoc(cls.__doc__).split("\n\n")[0].split())
