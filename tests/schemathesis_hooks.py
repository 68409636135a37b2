"""Hooks for the schemathesis run of ``tests/integration/test_openapi_fuzz.py``.

- import-rows and preview are fuzzed with JSON bodies. The document lists CSV, TSV, XLSX and the
  multipart form too, but as strings or bytes: what makes a file acceptable (a header
  naming the mandatory columns, a delimiter, quoting) is beyond JSON Schema, so random
  ones would be refused rightly. Files have their own tests (csv-spectrum, XLSX, forms).
- Each upload gets an Idempotency-Key of its own, as a client makes one per upload: a
  key the fuzzer repeats with another body is refused with 422 by design (the key made
  another batch), which is not a fault of the document.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

UPLOADS = ("/import-rows", "/preview")
KEY = "Idempotency-Key"


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    for path, operations in raw_schema["paths"].items():
        body = operations.get("post", {}).get("requestBody")
        if path.endswith(UPLOADS) and body is not None:
            body["content"] = {"application/json": body["content"]["application/json"]}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.headers and KEY in case.headers:
        case.headers[KEY] = f"{str(case.headers[KEY])[:160]}{uuid.uuid4().hex}"
