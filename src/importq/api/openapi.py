"""The OpenAPI document at ``/openapi.json``, made to tell the whole truth.

FastAPI builds the document from the routes; :func:`install` finishes it:

- Every error a route can answer with is listed with the body it really has,
  :class:`~importq.api.schemas.ErrorBody` (``{"detail", "code", …}``), FastAPI's
  validation array included: the 422 is ours too. A route behind the bearer token also
  answers 401 (``WWW-Authenticate``) and 503 while the database is away
  (``Retry-After``).
- ``import-rows`` is one operation per dataset (``/api/v1/entrances/import-rows``…),
  since each dataset has its own columns: its JSON body's schema names them, says which
  are mandatory, and carries the upload limits in force. CSV, TSV and XLSX bodies and
  the multipart form are listed by media type. ``preview`` takes the same bodies, so it
  is one operation per dataset too (``/api/v1/entrances/preview``…).

Routes name their own errors with :func:`errors`; the rest is added here, once, so that
a new route cannot forget the statuses every route shares.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from importq.api.imports import BODY_TYPES, FILE_EXTENSIONS
from importq.api.schemas import ERROR_MEANINGS
from importq.ingest.limits import UploadLimits
from importq.rules.datasets import Column, Dataset

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
    "required": True,
}
_STATUS_HEADERS: Mapping[str, dict[str, Any]] = {
    "401": {
        "WWW-Authenticate": {
            "description": "Always ``Bearer``",
            "schema": {"type": "string"},
            "required": True,
        }
    },
    "429": {"Retry-After": _RETRY_AFTER},
    "503": {"Retry-After": _RETRY_AFTER},
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
IMPORT_ROWS = "/api/v1/{dataset}/import-rows"
PREVIEW = "/api/v1/{dataset}/preview"
# The routes that take an upload's body: their operation id and summary per dataset.
_PER_DATASET = {
    IMPORT_ROWS: ("import_rows_{name}", "Import rows into {label}"),
    PREVIEW: ("preview_{name}", "Preview a file for {label}: nothing is staged"),
}
DESCRIPTION = (
    "Bulk import of rows into PostgreSQL: post rows, get a batch id at once, follow the "
    'batch to its reports. Every error answers `{"detail", "code", …}`: `detail` '
    "for a person, `code` for a program, and extra keys where they help (`line`, "
    "`columns`, `limit`)."
)


def install(
    app: FastAPI,
    datasets: Callable[[], Mapping[str, Dataset]],
    limits: UploadLimits,
) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) build the finished document,
    again only when the datasets' versions differ from the last document's.

    ``datasets`` gives the datasets the service serves (their current versions).
    """
    built_for: list[object] = [None]

    def openapi() -> dict[str, Any]:
        served = datasets()
        versions = sorted((name, d.version) for name, d in served.items())
        if app.openapi_schema is None or built_for[0] != versions:
            document = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=DESCRIPTION
            )
            _complete_errors(document)
            _paths_per_dataset(document, served, limits)
            app.openapi_schema = document
            built_for[0] = versions
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(document: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for operations in document["paths"].values():
        yield from operations.values()


def _complete_errors(document: dict[str, Any]) -> None:
    """Give every operation the errors all routes share, every error its real body and
    headers, and drop FastAPI's validation schemas (no answer has that shape)."""
    for operation in _operations(document):
        responses: dict[str, Any] = operation["responses"]
        if operation.get("security"):
            for status in ("401", "503"):
                responses.setdefault(status, _error_response(int(status)))
        if "422" in responses:
            responses["422"] = _error_response(422)
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            responses.setdefault("400", _error_response(400))
        for status, response in responses.items():
            content = response.get("content", {}).get("application/json", {})
            if status in _STATUS_HEADERS and content.get("schema") == _ERROR_REF:
                response["headers"] = _STATUS_HEADERS[status]
    schemas = document["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_MEANINGS[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }


def _paths_per_dataset(
    document: dict[str, Any], datasets: Mapping[str, Dataset], limits: UploadLimits
) -> None:
    """Replace the ``{dataset}`` path of import-rows and preview with one path per
    dataset, each with the body its columns make."""
    for generic, (operation_id, summary) in _PER_DATASET.items():
        template = document["paths"].pop(generic)["post"]
        template["parameters"] = [p for p in template["parameters"] if p["name"] != "dataset"]
        for name, dataset in sorted(datasets.items()):
            operation = copy.deepcopy(template)
            operation["operationId"] = operation_id.format(name=name)
            operation["summary"] = summary.format(label=dataset.label)
            operation["requestBody"] = _upload_body(dataset, limits)
            document["paths"][generic.replace("{dataset}", name)] = {"post": operation}


def _upload_body(dataset: Dataset, limits: UploadLimits) -> dict[str, Any]:
    """The request body of an upload into ``dataset`` (or its preview): JSON rows, or a
    file.

    The JSON schema is what is accepted: any row (a row that is not an object, or holds
    a nested value, is taken and fails in the failures report), every mandatory column
    in some row (the header is every row's keys), and the upload limits. Only one
    leniency of the service is not in it: a column's key may also be one of its aliases,
    in any case, with spaces around (the description says so).
    """
    cell = {"maxLength": limits.max_cell_chars}
    row = {
        "description": "A row: {column: value}. A missing key or null is an empty cell.",
        "properties": {c.name: {**cell, "description": _column_text(c)} for c in dataset.columns},
        "additionalProperties": cell,
        "propertyNames": cell,
        "maxProperties": limits.max_columns,
    }
    mandatory = list(dataset.mandatory_columns)
    # Each mandatory column in some row, not necessarily all in one.
    somewhere = [{"contains": {"type": "object", "required": [name]}} for name in mandatory]
    rows = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_rows,
                "items": row,
                "contains": {"type": "object", "minProperties": 1},
                **({"allOf": somewhere} if somewhere else {}),
            }
        },
    }
    files = {
        media_type: {
            "schema": {"type": "string", **({"format": "binary"} if fmt == "xlsx" else {})}
        }
        for media_type, (fmt, _) in BODY_TYPES.items()
    }
    return {
        "required": True,
        "description": (
            "JSON rows (a key may also be a column's alias, in any case, with spaces "
            "around); or a file as the body or in the multipart field `file` "
            f"({', '.join(FILE_EXTENSIONS)}). A file's header names the columns: "
            f"{', '.join(c.name for c in dataset.columns)}; mandatory: "
            f"{', '.join(mandatory) or 'none'}."
        ),
        "content": {
            "application/json": {"schema": rows},
            **files,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }


def _column_text(column: Column) -> str:
    """A column's rules, for a person reading the document."""
    parts = [column.type.value, *(["mandatory"] if column.required else [])]
    parts += column.rules_in_words()
    if column.aliases:
        parts.append("also headed " + ", ".join(column.aliases))
    return "; ".join(parts)
