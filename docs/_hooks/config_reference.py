"""MkDocs hook: the configuration reference, generated from the schemas at every build.

A page containing the marker `<!-- config-reference -->` gets it replaced by one table per
config group (key, type, default, description), read from `src/prefopt/config/schema.py` and the
loss dataclasses in `src/prefopt/losses/` (every module of the config package is read, in case
the schemas are split over several). The files are parsed with `ast`, never imported, so
the docs build needs none of prefopt's dependencies and shows annotations exactly as written.
An annotation naming an Enum class of the config package lists that Enum's members.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

MARKER = "<!-- config-reference -->"
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "src" / "prefopt" / "config" / "schema.py"
LOSSES = ROOT / "src" / "prefopt" / "losses"
CONF = ROOT / "conf"

# The top-level Config's fields that are config groups chosen from conf/<group>/*.yaml.
ROOT_CLASS = "Config"


@dataclass
class Field:
    name: str
    annotation: str
    default: str
    doc: str


@dataclass
class Schema:
    name: str
    doc: str
    fields: list[Field]


ENUM_BASES = {"Enum", "StrEnum", "IntEnum", "Flag", "IntFlag"}


def _is_enum(node: ast.ClassDef, known_enums) -> bool:
    """An Enum, directly or through an Enum class seen before (`class Scheduler(Choice)`)."""
    names = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
    return bool(names & (ENUM_BASES | set(known_enums)))


def _enum_members(node: ast.ClassDef) -> dict[str, str]:
    """Member name -> value as written (methods and private names are not members)."""
    members = {}
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name) and not target.id.startswith("_"):
                value = stmt.value
                members[target.id] = (
                    str(value.value) if isinstance(value, ast.Constant) else target.id
                )
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if stmt.value is not None and not stmt.target.id.startswith("_"):
                value = stmt.value
                members[stmt.target.id] = (
                    str(value.value) if isinstance(value, ast.Constant) else stmt.target.id
                )
    return members


def _factory_text(function: ast.FunctionDef) -> str | None:
    """What a `default_factory` function returns, in short, when it returns a dict literal."""
    returns = [stmt for stmt in function.body if isinstance(stmt, ast.Return)]
    if len(returns) != 1 or not isinstance(returns[0].value, ast.Dict):
        return None
    entries = dict(zip(returns[0].value.keys, returns[0].value.values))
    keys = [k.value for k in entries if isinstance(k, ast.Constant)]
    if "_target_" in keys:
        target = next(v for k, v in entries.items() if getattr(k, "value", None) == "_target_")
        return "{_target_: " + ast.unparse(target).strip("'\"") + ", …}"
    return "{" + ", ".join(f"{k}: …" for k in keys) + "}"


def _default_text(value: ast.expr | None, enums, factories) -> str:
    if value is None:
        return "required"
    if isinstance(value, ast.Name) and value.id == "MISSING":
        return "required"
    if isinstance(value, ast.Call) and ast.unparse(value.func).rsplit(".", 1)[-1] == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _default_text(keyword.value, enums, factories)
            if keyword.arg == "default_factory":
                factory = ast.unparse(keyword.value)
                known = {"dict": "{}", "list": "[]", **factories}
                return known.get(factory) or f"{factory}()"
        return "required"
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
        members = enums.get(value.value.id)
        if members and value.attr in members:  # an Enum member: shown as its value
            return members[value.attr]
    if isinstance(value, ast.Constant) and value.value is None:
        return "null"
    if isinstance(value, ast.Constant) and isinstance(value.value, bool):
        return str(value.value).lower()
    return ast.unparse(value)


def _docstring_after(body: list[ast.stmt], index: int) -> str:
    if index + 1 < len(body):
        nxt = body[index + 1]
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            if isinstance(nxt.value.value, str):
                return " ".join(nxt.value.value.split())
    return ""


def _is_classvar(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def parse_classes(
    path: Path, enums: dict[str, dict[str, str]] | None = None
) -> tuple[dict[str, Schema], dict[str, dict[str, str]], dict[str, dict]]:
    """Dataclass schemas, Enum members and each class's ClassVar constants found in `path`.

    `enums` holds the Enums already known from other modules (extended in place), so a field
    typed with an Enum defined elsewhere still lists its members.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    enums = {} if enums is None else enums
    factories = {
        node.name: text
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and (text := _factory_text(node)) is not None
    }
    schemas: dict[str, Schema] = {}
    constants: dict[str, dict] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if _is_enum(node, enums):
            enums[node.name] = _enum_members(node)
            continue
        fields: list[Field] = []
        consts: dict = {}
        for i, stmt in enumerate(node.body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            if _is_classvar(stmt.annotation):
                if isinstance(stmt.value, ast.Constant):
                    consts[stmt.target.id] = stmt.value.value
                continue
            fields.append(
                Field(
                    name=stmt.target.id,
                    annotation=ast.unparse(stmt.annotation),
                    default=_default_text(stmt.value, enums, factories),
                    doc=_docstring_after(node.body, i),
                )
            )
        doc = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
        schemas[node.name] = Schema(node.name, doc, fields)
        constants[node.name] = consts
    return schemas, enums, constants


def _cell(text: str) -> str:
    # The tables extension skips pipes inside code spans; an escaped one there would show its
    # backslash, so only pipes outside backticks are escaped.
    parts = text.replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _type_text(annotation: str, enums: dict[str, dict[str, str]]) -> str:
    words = annotation.replace("|", " ").replace("[", " ").replace("]", " ").replace(",", " ")
    text = f"`{annotation}`"
    for word in words.split():
        name = word.rsplit(".", 1)[-1]
        if name in enums:
            text += " (one of " + ", ".join(f"`{m}`" for m in enums[name].values()) + ")"
    return text


def _table(prefix: str, schema: Schema, schemas: dict[str, Schema], enums) -> list[str]:
    """Rows for every field of `schema`; nested schemas are flattened as `a.b.c`."""
    rows = []
    for f in schema.fields:
        key = f"{prefix}{f.name}"
        nested = f.annotation.strip("'\"")
        if nested in schemas and nested not in enums:
            rows += _table(f"{key}.", schemas[nested], schemas, enums)
            continue
        rows.append(
            f"| `{key}` | {_cell(_type_text(f.annotation, enums))} | `{_cell(f.default)}` "
            f"| {_cell(f.doc)} |"
        )
    return rows


def _options(group: str, conf: Path) -> str:
    folder = conf / group
    if not folder.is_dir():
        return ""
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    return "Options (`conf/" + group + "/`): " + ", ".join(f"`{group}={n}`" for n in names) + "."


HEADER = ["| key | type | default | description |", "| --- | --- | --- | --- |"]


def _registered_groups(paths: list[Path], schemas: dict[str, Schema]) -> dict[str, str]:
    """Group name -> schema class, from `("optim", OptimConfig)` pairs as registration lists
    them, else by name (`optim` -> `OptimConfig`)."""
    groups = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple) and len(node.elts) == 2:
                group, cls = node.elts
                if isinstance(group, ast.Constant) and isinstance(group.value, str):
                    if isinstance(cls, ast.Name) and cls.id in schemas:
                        groups[group.value] = cls.id
    for name in schemas:
        if name.endswith("Config"):
            groups.setdefault(name[: -len("Config")].lower(), name)
    return groups


def _option_schemas(paths: list[Path], schemas: dict[str, Schema]) -> dict[str, dict[str, str]]:
    """Group name -> {option: schema class} for a group with one schema per option, from a
    module-level `<GROUP>_SCHEMAS = {"option": OptionConfig, ...}` (`JUDGE_SCHEMAS` -> `judge`)."""
    groups: dict[str, dict[str, str]] = {}
    for path in paths:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            if not (isinstance(target, ast.Name) and target.id.endswith("_SCHEMAS")):
                continue
            if not isinstance(node.value, ast.Dict):
                continue
            options = {
                key.value: value.id
                for key, value in zip(node.value.keys, node.value.values)
                if isinstance(key, ast.Constant)
                and isinstance(value, ast.Name)
                and value.id in schemas
            }
            if options:
                groups[target.id.removesuffix("_SCHEMAS").lower()] = options
    return groups


def render(schema_file: Path = SCHEMA, losses_dir: Path = LOSSES, conf: Path = CONF) -> str:
    """The reference as markdown: top-level keys, one section per group, one per loss."""
    # The schemas may be split over several modules of the config package (Enums of choices in
    # one, groups in others): read them all, the named schema file last so its names win.
    schemas: dict[str, Schema] = {}
    enums: dict[str, dict[str, str]] = {}
    paths = [*sorted(schema_file.parent.glob("*.py")), schema_file]
    for path in paths:  # first pass: every Enum, wherever it is defined
        parse_classes(path, enums)
    for path in paths:
        schemas.update(parse_classes(path, enums)[0])
    group_schemas = _registered_groups(paths, schemas)
    out: list[str] = []
    root = schemas[ROOT_CLASS]

    def schema_of(f: Field) -> Schema | None:
        # A group field typed `Any` at the top (so that one option's keys never mix with
        # another's) gets its schema from the ConfigStore registration instead.
        name = f.annotation.strip("'\"")
        if name in schemas:
            return schemas[name]
        return schemas.get(group_schemas.get(f.name, ""))

    # `loss` has one schema per loss dataclass, listed at the end; a group with one schema per
    # option (`judge`) gets a table per option.
    per_option = _option_schemas(paths, schemas)
    top_level = [
        f
        for f in root.fields
        if schema_of(f) is None and f.name != "loss" and f.name not in per_option
    ]
    groups = [f for f in root.fields if schema_of(f) is not None and f.name != "loss"]

    out += ["## Top-level keys", "", *HEADER]
    out += _table("", Schema(ROOT_CLASS, "", top_level), schemas, enums)
    out.append("")
    for f in groups:
        schema = schema_of(f)
        out += [f"## `{f.name}`", ""]
        if schema.doc:
            out += [schema.doc, ""]
        options = _options(f.name, conf)
        if options:
            out += [options, ""]
        out += HEADER + _table(f"{f.name}.", schema, schemas, enums) + [""]

    for f in root.fields:
        if f.name not in per_option:
            continue
        out += [f"## `{f.name}`", ""]
        if f.doc:
            out += [f.doc, ""]
        options = _options(f.name, conf)
        if options:
            out += [options, ""]
        for option, class_name in per_option[f.name].items():
            schema = schemas[class_name]
            out += [f"### `{f.name}={option}` (`{class_name}`)", ""]
            if schema.doc:
                out += [schema.doc, ""]
            out += HEADER + _table(f"{f.name}.", schema, schemas, enums) + [""]

    out += ["## `loss`", "", _options("loss", conf), ""]
    for path in sorted(losses_dir.glob("*.py")):
        loss_schemas, _, constants = parse_classes(path, dict(enums))
        for name, schema in loss_schemas.items():
            loss_name = constants[name].get("name")
            if not loss_name or not schema.fields:
                continue
            out += [f"### `loss={loss_name}` (`{name}`)", "", *HEADER]
            out += _table("loss.", schema, loss_schemas, enums) + [""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs calls this for every page; only the page holding the marker changes."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


if __name__ == "__main__":
    print(render())
