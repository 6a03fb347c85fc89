"""Forms generated from a connector's JSON schema (its pydantic config model), and back again.

Each property becomes one labelled input: text, password (``SecretStr`` fields), number, checkbox,
a select for enums, and a textarea for lists (one entry per line) or nested objects (JSON). The
submitted values are converted back to the schema's types; the connector's own model validates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sslclm.errors import InvalidInputError

FIELD_PREFIX = "config."


@dataclass(frozen=True, slots=True)
class SchemaField:
    name: str
    label: str
    widget: str  # text, password, number, checkbox, select, lines, json
    required: bool
    default: Any
    description: str
    choices: list[str]

    @property
    def input_name(self) -> str:
        return FIELD_PREFIX + self.name


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}))
    for key in ("anyOf", "oneOf"):
        options = [o for o in node.get(key, []) if o.get("type") != "null"]
        if options:
            merged = {**node, **_resolve(schema, options[0])}
            merged.pop(key, None)
            return merged
    return node


def _widget(node: dict[str, Any]) -> str:
    if node.get("enum"):
        return "select"
    kind = node.get("type")
    if node.get("format") == "password" or node.get("writeOnly"):
        return "password"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "checkbox"
    if kind == "array":
        return "lines"
    if kind == "object":
        return "json"
    return "text"


def form_fields(schema: dict[str, Any]) -> list[SchemaField]:
    required = set(schema.get("required", []))
    fields = []
    for name, raw in schema.get("properties", {}).items():
        node = _resolve(schema, raw)
        fields.append(
            SchemaField(
                name=name,
                label=str(raw.get("title") or node.get("title") or name.replace("_", " ").capitalize()),
                widget=_widget(node),
                required=name in required,
                default=raw.get("default", node.get("default")),
                description=str(raw.get("description") or node.get("description") or ""),
                choices=[str(c) for c in node.get("enum", [])],
            )
        )
    return fields


def _convert(field: SchemaField, text: str, node_type: str | None) -> Any:
    if field.widget == "number":
        try:
            return int(text) if node_type == "integer" else float(text)
        except ValueError:
            raise InvalidInputError(f"{field.label} must be a number", field=f"config.{field.name}") from None
    if field.widget == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if field.widget == "json":
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidInputError(f"{field.label} must be JSON", field=f"config.{field.name}") from None
    return text


def config_from_form(schema: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    """The config dict from submitted fields; empty optional fields are left out (their default applies)."""
    config: dict[str, Any] = {}
    properties = schema.get("properties", {})
    for field in form_fields(schema):
        node = _resolve(schema, properties[field.name])
        if field.widget == "checkbox":
            config[field.name] = field.input_name in form
            continue
        text = (
            form.get(field.input_name, "").strip()
            if field.widget != "password"
            else form.get(field.input_name, "")
        )
        if not text:
            continue
        config[field.name] = _convert(field, text, node.get("type"))
    return config
