"""MkDocs hook: the configuration reference, generated from the schemas at every build.

A page containing the marker `<!-- config-reference -->` gets it replaced by one table per
config group (key, type, default, description), read from `src/prefopt/config/schema.py` and the
loss dataclasses in `src/prefopt/losses/`. The files are parsed with `ast`, never imported, so
the docs build needs none of prefopt's dependencies and shows annotations exactly as written.
An annotation naming an Enum class of the same module lists that Enum's members.
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


def _is_enum(node: ast.ClassDef) -> bool:
    names = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
    return bool(names & {"Enum", "StrEnum", "IntEnum", "Flag", "IntFlag"})


def _enum_members(node: ast.ClassDef) -> list[str]:
    members = []
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name) and not target.id.startswith("_"):
                value = stmt.value
                if isinstance(value, ast.Constant):
                    members.append(str(value.value))
                else:
                    members.append(target.id)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if stmt.value is not None and not stmt.target.id.startswith("_"):
                value = stmt.value
                members.append(
                    str(value.value) if isinstance(value, ast.Constant) else stmt.target.id
                )
    return members


def _default_text(value: ast.expr | None) -> str:
    if value is None:
        return "required"
    if isinstance(value, ast.Name) and value.id == "MISSING":
        return "required"
    if isinstance(value, ast.Call) and ast.unparse(value.func).rsplit(".", 1)[-1] == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _default_text(keyword.value)
            if keyword.arg == "default_factory":
                factory = ast.unparse(keyword.value)
                return {"dict": "{}", "list": "[]"}.get(factory, f"{factory}()")
        return "required"
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


def parse_classes(path: Path) -> tuple[dict[str, Schema], dict[str, list[str]], dict[str, dict]]:
    """Dataclass schemas, Enum members and each class's ClassVar constants found in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    schemas: dict[str, Schema] = {}
    enums: dict[str, list[str]] = {}
    constants: dict[str, dict] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if _is_enum(node):
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
                    default=_default_text(stmt.value),
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


def _type_text(annotation: str, enums: dict[str, list[str]]) -> str:
    words = annotation.replace("|", " ").replace("[", " ").replace("]", " ").replace(",", " ")
    text = f"`{annotation}`"
    for word in words.split():
        name = word.rsplit(".", 1)[-1]
        if name in enums:
            text += " (one of " + ", ".join(f"`{m}`" for m in enums[name]) + ")"
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


def render(schema_file: Path = SCHEMA, losses_dir: Path = LOSSES, conf: Path = CONF) -> str:
    """The reference as markdown: top-level keys, one section per group, one per loss."""
    schemas, enums, _ = parse_classes(schema_file)
    out: list[str] = []
    root = schemas[ROOT_CLASS]
    # `loss` is typed Any at the top: its schema is each loss dataclass, listed at the end.
    top_level = [
        f for f in root.fields if f.annotation.strip("'\"") not in schemas and f.name != "loss"
    ]
    groups = [f for f in root.fields if f.annotation.strip("'\"") in schemas]

    out += ["## Top-level keys", "", *HEADER]
    out += _table("", Schema(ROOT_CLASS, "", top_level), schemas, enums)
    out.append("")
    for f in groups:
        schema = schemas[f.annotation.strip("'\"")]
        out += [f"## `{f.name}`", ""]
        if schema.doc:
            out += [schema.doc, ""]
        options = _options(f.name, conf)
        if options:
            out += [options, ""]
        out += HEADER + _table(f"{f.name}.", schema, schemas, enums) + [""]

    out += ["## `loss`", "", _options("loss", conf), ""]
    for path in sorted(losses_dir.glob("*.py")):
        loss_schemas, loss_enums, constants = parse_classes(path)
        for name, schema in loss_schemas.items():
            loss_name = constants[name].get("name")
            if not loss_name or not schema.fields:
                continue
            out += [f"### `loss={loss_name}` (`{name}`)", "", *HEADER]
            out += _table("loss.", schema, loss_schemas, {**enums, **loss_enums}) + [""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs' signature
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


if __name__ == "__main__":
    print(render())
