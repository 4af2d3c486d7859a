"""The contract's JSON Schemas (agent/schemas/) as validators a test checks documents with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from agent import schemas

Validate = Callable[[str, dict[str, Any]], dict[str, Any]]
"""The ``validate`` fixture: ``validate(kind, doc)`` fails the test naming every broken rule, else returns ``doc``."""


def load_validators() -> dict[str, Validator]:
    """One Draft 2020-12 validator (formats checked) per schema name; each schema is checked first."""
    out: dict[str, Validator] = {}
    for name in schemas.NAMES:
        schema = schemas.load(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return out
