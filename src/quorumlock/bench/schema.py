"""The results schema (``schema.json`` beside this file) and its validator.

``validate(doc)`` uses ``jsonschema`` when it is installed and the small
validator below otherwise (no hard dependency).  The small one implements the
keywords ``schema.json`` uses -- ``type``, ``const``, ``enum``, ``properties``,
``required``, ``additionalProperties``, ``items``, ``minItems``, ``maxItems``,
``minimum``, ``maximum``, ``exclusiveMinimum``, ``$ref`` (local ``#/$defs/...``),
``oneOf``, ``anyOf`` -- and refuses a schema with any other keyword, so the two
validators cannot silently disagree.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

__all__ = ["SCHEMA_PATH", "SchemaError", "errors", "load_schema", "mini_errors", "validate"]

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.json")

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs", "default", "examples"}
_KEYWORDS = {
    "type", "const", "enum", "properties", "required", "additionalProperties", "items", "minItems",
    "maxItems", "minimum", "maximum", "exclusiveMinimum", "$ref", "oneOf", "anyOf",
}  # fmt: skip


class SchemaError(ValueError):
    """The document does not match the schema (the message lists where)."""


def load_schema() -> Dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _is_type(value: Any, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    raise ValueError(f"unknown type {t!r} in schema")


def _resolve(root: Dict[str, Any], ref: str) -> Dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(value: Any, schema: Any, root: Dict[str, Any], path: str, out: List[str]) -> None:
    if schema is True or schema == {}:
        return
    if schema is False:
        out.append(f"{path}: not allowed")
        return
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {path} are not supported by the small validator")
    if "$ref" in schema:
        _check(value, _resolve(root, schema["$ref"]), root, path, out)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            out.append(f"{path}: {value!r:.60} is not of type {'/'.join(types)}")
            return
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: {value!r:.60} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r:.60} is not one of {schema['enum']}")
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if num and "minimum" in schema and value < schema["minimum"]:
        out.append(f"{path}: {value} < minimum {schema['minimum']}")
    if num and "maximum" in schema and value > schema["maximum"]:
        out.append(f"{path}: {value} > maximum {schema['maximum']}")
    if num and "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        out.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                out.append(f"{path}: missing required property {name!r}")
        addl = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                _check(v, props[k], root, f"{path}.{k}", out)
            elif addl is False:
                out.append(f"{path}: unexpected property {k!r}")
            elif isinstance(addl, dict):
                _check(v, addl, root, f"{path}.{k}", out)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, v in enumerate(value):
                _check(v, schema["items"], root, f"{path}[{i}]", out)
    for key, want in (("oneOf", 1), ("anyOf", None)):
        if key in schema:
            matches = 0
            for sub in schema[key]:
                sub_out: List[str] = []
                _check(value, sub, root, path, sub_out)
                matches += not sub_out
            if (want is None and matches == 0) or (want is not None and matches != want):
                out.append(f"{path}: matches {matches} of the {key} alternatives")


def mini_errors(doc: Any, schema: Optional[Dict[str, Any]] = None) -> List[str]:
    """Every mismatch the small validator finds (empty: valid)."""
    schema = load_schema() if schema is None else schema
    out: List[str] = []
    _check(doc, schema, schema, "$", out)
    return out


def errors(doc: Any, schema: Optional[Dict[str, Any]] = None, *, use_jsonschema: Optional[bool] = None) -> List[str]:
    """Mismatches, through ``jsonschema`` if installed (or ``use_jsonschema``)."""
    schema = load_schema() if schema is None else schema
    if use_jsonschema is None or use_jsonschema:
        try:
            import jsonschema
        except ImportError:
            if use_jsonschema:
                raise
        else:
            cls = jsonschema.validators.validator_for(schema)
            v = cls(schema)
            return [f"$.{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]
    return mini_errors(doc, schema)


def validate(doc: Any, schema: Optional[Dict[str, Any]] = None) -> None:
    """Raise :class:`SchemaError` if ``doc`` does not match the schema."""
    errs = errors(doc, schema)
    if errs:
        shown = "; ".join(errs[:10])
        more = f" (+{len(errs) - 10} more)" if len(errs) > 10 else ""
        raise SchemaError(f"results do not match {os.path.basename(SCHEMA_PATH)}: {shown}{more}")
