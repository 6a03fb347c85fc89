"""Policy set documents in YAML or JSON, validated with errors that name the field and the line.

A document::

    name: baseline
    description: What every certificate must meet
    scope: {kind: all}            # or {kind: team|profile|tag|environment, value: payments}
    enabled: true
    checks:                       # evaluated in this order
      - check: key-algorithm
        severity: high            # optional: overrides the check's default
        params: {rsa_min_bits: 3072}
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sslclm.errors import InvalidInputError
from sslclm.policies.checks import CHECKS, Params, Severity

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ScopeKind = Literal["all", "profile", "team", "tag", "environment"]


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ScopeKind = "all"
    value: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _value_needed(self) -> Scope:
        if self.kind != "all" and not self.value:
            raise ValueError(f"scope kind '{self.kind}' needs a value")
        return self


class CheckEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str
    severity: Severity | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("check")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in CHECKS:
            raise ValueError(f"unknown check '{value}'; choose one of {', '.join(sorted(CHECKS))}")
        return value

    @model_validator(mode="after")
    def _params_valid(self) -> CheckEntry:
        try:
            CHECKS[self.check].params.model_validate(self.params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = _field_path(("params", *first["loc"]))
            raise ValueError(f"{where}: {first['msg']}") from None
        return self

    def parsed_params(self) -> Params:
        return CHECKS[self.check].params.model_validate(self.params)


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = Field(default=None, max_length=2000)
    scope: Scope = Field(default_factory=Scope)
    enabled: bool = True
    checks: list[CheckEntry] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"name must match {NAME.pattern}")
        return value


BASELINE = PolicyDocument(
    name="baseline",
    description="Built-in rules applied when no policy set is defined.",
    checks=[CheckEntry(check=name) for name, check in CHECKS.items() if not check.opt_in],
)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the node at ``loc`` (or its nearest existing parent) in the parsed YAML."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            found = node.value[part]
        else:
            found = None
        if found is None:
            break
        node = found
        line = node.start_mark.line + 1
    return line


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_document(text: str) -> PolicyDocument:
    """Parses YAML (JSON is valid YAML) into a validated document; errors name the field and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInputError(f"line {line}: {problem}", field="document", line=line) from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            "a policy document is a mapping with name and checks", field="document", line=1
        )
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = _field_path(loc) or "document"
        line = _line_of(node, loc)
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidInputError(
            f"line {line}: {field}: {message}",
            field=field,
            line=line,
            errors=[{"field": _field_path(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()],
        ) from None


def dump_document(document: PolicyDocument, fmt: Literal["yaml", "json"] = "yaml") -> str:
    data = document.model_dump(mode="json", exclude_none=True)
    if fmt == "json":
        import orjson

        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    return yaml.safe_dump(data, sort_keys=False)
