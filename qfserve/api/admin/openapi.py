"""The admin API's OpenAPI 3.1 document, built from the route table: paths, methods, query and
path parameters, request bodies (their pydantic JSON Schemas) and the success status."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qfserve.api.admin.routes import AdminRoute

_PATH_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def openapi_path(path: str) -> str:
    """Starlette's `/apps/{app_id:int}` as OpenAPI writes it: `/apps/{app_id}`."""
    return _PATH_PARAM.sub(r"{\1}", path)


def document(routes: Iterable[AdminRoute], prefix: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "parameters": [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer" if kind == "int" else "string"},
                }
                for name, kind in _PATH_PARAM.findall(route.path)
            ]
            + [
                {
                    "name": p.name,
                    "in": "query",
                    "required": False,
                    "description": p.description,
                    "schema": {"type": p.type, **({"enum": list(p.enum)} if p.enum else {})},
                }
                for p in route.query
            ],
            "responses": {
                str(route.status): {"description": "Success"},
                "default": {
                    "description": "An error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
        if route.body is not None:
            name = route.body.__name__
            schema = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
            operation["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                },
            }
        if not route.public:
            operation["security"] = [{"session": [], "csrf": []}, {"bearer": []}]
        paths.setdefault(prefix + openapi_path(route.path), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qfserve admin API",
            "version": version,
            "description": "See docs/admin-api.md. Non-GET requests on a session send the "
            "session's CSRF token in X-CSRF-Token.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "qfserve_admin"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
