"""The Admin API's errors, in Kong's shapes (``kong/db/errors.lua``), not problem+json.

Kong's clients (decK, Terraform providers, scripts) read ``name``, ``code``
and ``fields`` of these bodies, so the Admin API answers the way Kong does:

=====================  ======  ====  ==================================================
error                  status  code  body
=====================  ======  ====  ==================================================
``SchemaViolation``    400     2     ``{"code", "name": "schema violation", "message", "fields": {...}}``
``ForeignKeyViolation``400     4     ``fields: {"@referenced_by": "routes"}`` or the missing reference
``UniqueViolation``    409     5     ``"message": "UNIQUE violation detected on '{name=\"a\"}'"``
``NotFound``           404           ``{"message": "Not found"}``
``AdminError``         any           ``{"message": ...}`` (401, 405, 413, 415, 503)
=====================  ======  ====  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AdminError",
    "ForeignKeyViolation",
    "NotFound",
    "SchemaViolation",
    "UniqueViolation",
    "schema_message",
]


class AdminError(Exception):
    """An answer other than success: a status and a JSON body."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"message": self.message}


class NotFound(AdminError):
    status = 404

    def __init__(self) -> None:
        super().__init__("Not found")


def schema_message(fields: Mapping[str, Any]) -> str:
    """Kong's summary line: ``schema violation (a: x)`` or ``2 schema violations (a: x; b.c: y)``."""
    parts: list[str] = [str(m) for m in fields.get("@entity", ())]
    for name in sorted(k for k in fields if k != "@entity"):
        value = fields[name]
        if isinstance(value, Mapping):
            parts.extend(f"{name}.{sub}: {value[sub]}" for sub in sorted(value))
        else:
            parts.append(f"{name}: {value}")
    if len(parts) == 1:
        return f"schema violation ({parts[0]})"
    return f"{len(parts)} schema violations ({'; '.join(parts)})"


class SchemaViolation(AdminError):
    """Bad fields: ``fields`` nests like the entity (``{"config": {"second": "..."}}``);
    problems not of one field are listed under ``"@entity"``."""

    status = 400
    code = 2
    name = "schema violation"

    def __init__(self, fields: Mapping[str, Any], errors: list[dict[str, str]] | None = None) -> None:
        self.fields = dict(fields)
        # gatekeep's addition: each error of the whole config with its path in the document.
        self.errors = errors or []
        super().__init__(schema_message(self.fields))

    def body(self) -> dict[str, Any]:
        body = {"code": self.code, "name": self.name, "message": self.message, "fields": self.fields}
        if self.errors:
            body["errors"] = self.errors
        return body


class UniqueViolation(AdminError):
    status = 409
    code = 5
    name = "unique constraint violation"

    def __init__(self, field: str, value: Any) -> None:
        self.fields = {field: value}
        super().__init__(f"UNIQUE violation detected on '{{{field}=\"{value}\"}}'")

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message, "fields": self.fields}


class ForeignKeyViolation(AdminError):
    status = 400
    code = 4
    name = "foreign key violation"

    def __init__(self, message: str, fields: Mapping[str, Any]) -> None:
        self.fields = dict(fields)
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message, "fields": self.fields}
