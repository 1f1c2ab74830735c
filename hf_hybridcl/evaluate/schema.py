"""The documented schema of ``metrics.json`` (schema_version 2) and a small validator for it.

Every evaluation result (training-time or ``hybridcl evaluate``) is one JSON document::

    {
      "schema_version": 2, "library": "hf_hybridcl", "library_version": "0.1.0",
      "created": "<UTC ISO time>", "machine": "<arch, threads, torch, device>",
      "model":   {"method": ..., "backbone": ..., "class": ..., ...provenance (path, source, train_steps)},
      "dataset": {"name": ..., "num_train": int, "num_test": int, "num_classes": int},
      "protocols": {
        "<protocol>": {                       # measured
          "value": headline number or null,   # e.g. test accuracy, ECE, mean AUROC
          "values": {"<key>": number | null}, # flat; nested keys are dotted, e.g. "interp.energy.auroc"
          "settings": {...},                  # everything needed to reproduce the number
          "dataset": "<name>", "split": "test", ("train_split": "train"),
          ("source": "hybridcl evaluate" | "training run"), ("plots": ["plots/<file>.png"])
        },
        "<protocol>": {"skipped": "<reason>", "dataset": ..., "split": ...}   # not applicable / unavailable
      },
      ("plots": {"<name>": "plots/<file>.png"}), ("artifacts": ["<run-relative path>"]),
      ("evaluation": {"command": ..., "protocols_requested": [...], "settings": {...}, "source": ...})
    }

Protocol names written by the suite: ``linear_probe``, ``knn``, ``finetune``, ``calibration``, ``ood``,
``corruptions``, ``robust``, ``embedding``; methods add their own through ``extra_metrics`` (e.g. GCRL
``bits_per_dim``), and training adds ``*_random_init`` references. :data:`METRICS_SCHEMA` states this as a
JSON-Schema subset; :func:`validate_metrics` checks a document against it.
"""

from __future__ import annotations

from typing import Any

from ..errors import HybridCLError

SCHEMA_VERSION = 2

_STRING = {"type": "string"}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_MEASURED = {
    "type": "object",
    "required": ["value", "values", "settings", "dataset", "split"],
    "properties": {
        "value": _NUMBER_OR_NULL,
        "values": {"type": "object", "additionalProperties": _NUMBER_OR_NULL},
        "settings": {"type": "object"},
        "dataset": _STRING,
        "split": _STRING,
        "train_split": _STRING,
        "source": _STRING,
        "plots": {"type": "array", "items": _STRING},
    },
}
_SKIPPED = {
    "type": "object",
    "required": ["skipped"],
    "properties": {"skipped": _STRING, "dataset": _STRING, "split": _STRING, "settings": {"type": "object"}},
}
METRICS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version", "library", "library_version", "created", "machine", "model", "dataset", "protocols"],
    "properties": {
        "schema_version": {"type": "integer", "minimum": 1},
        "library": {"type": "string", "enum": ["hf_hybridcl"]},
        "library_version": _STRING,
        "created": _STRING,
        "machine": _STRING,
        "model": {"type": "object", "required": ["method", "backbone", "class"],
                  "properties": {"method": _STRING, "backbone": _STRING, "class": _STRING}},
        "dataset": {
            "type": "object",
            "required": ["name", "num_train", "num_test", "num_classes"],
            "properties": {"name": _STRING, "num_train": {"type": "integer", "minimum": 0},
                           "num_test": {"type": "integer", "minimum": 0}, "num_classes": {"type": "integer", "minimum": 0}},
        },
        "protocols": {"type": "object", "additionalProperties": {"anyOf": [_MEASURED, _SKIPPED]}},
        "plots": {"type": "object", "additionalProperties": _STRING},
        "artifacts": {"type": "array", "items": _STRING},
        "evaluation": {"type": "object"},
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Problems of ``value`` against a JSON-Schema subset (type, enum, minimum, required, properties,
    additionalProperties, items, anyOf); an empty list means valid."""
    if "anyOf" in schema:
        branches = [schema_errors(value, option, path) for option in schema["anyOf"]]
        if all(branches):
            best = min(branches, key=len)
            return [f"{path}: matches none of the allowed forms; closest: {'; '.join(best)}"]
        return []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        errors.append(f"{path}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing key {key!r}" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def validate_metrics(document: dict[str, Any]) -> None:
    """Raise :class:`HybridCLError` listing every way ``document`` departs from :data:`METRICS_SCHEMA`."""
    errors = schema_errors(document, METRICS_SCHEMA)
    if errors:
        raise HybridCLError("metrics document does not follow the metrics.json schema: " + "; ".join(errors[:20]))
