"""docs/openapi.yaml, generated from the models the server answers with.

`python -m gateway.http.openapi > docs/openapi.yaml` (JSON, which is valid YAML 1.2); a test keeps
the file in step with the code and checks real answers against it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from gateway import __version__
from gateway.http.models import (
    LABEL_STATES,
    MAX_LIMIT,
    ORDER_STATES,
    Device,
    Event,
    Label,
    Order,
    Problem,
    StatusDocument,
)

_REF = "#/components/schemas/{model}"


def _state_parameter(states: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": "state",
        "in": "query",
        "required": False,
        "description": "only these states; several as a comma-separated list",
        "schema": {"type": "string", "pattern": f"^({'|'.join(states)})(,({'|'.join(states)}))*$"},
    }


def _limit_parameter(default: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _list_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of `/api/*`, `/healthz` and `/metrics`."""
    schemas: dict[str, Any] = {}

    def add(model: type[BaseModel]) -> None:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    for model in (StatusDocument, Device, Label, Order, Event, Problem):
        add(model)
    unauthorized = _json(_ref("Problem"), "a request from outside this machine without the bearer token")
    bad = _json(_ref("Problem"), "a query parameter that cannot be used (the message names it)")
    unavailable = _json(_ref("Problem"), "the state database cannot be read")

    def get(summary: str, ok: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok, "401": unauthorized}}
        if parameters:
            operation["parameters"] = parameters
            operation["responses"]["400"] = bad
        if ok.get("content", {}).get("application/json"):
            operation["responses"]["503"] = unavailable
        return {"get": operation}

    paths = {
        "/api/status": get(
            "the same document as `store-gateway status --json`", _json(_ref("StatusDocument"), "the status")
        ),
        "/api/devices": get("every configured device and its status", _json(_list_of("Device"), "devices")),
        "/api/labels": get(
            "shelf labels, the longest in their state first",
            _json(_list_of("Label"), "labels"),
            [_state_parameter(LABEL_STATES), _limit_parameter(MAX_LIMIT)],
        ),
        "/api/orders": get(
            "orders: open ones by deadline, then the others newest first",
            _json(_list_of("Order"), "orders"),
            [_state_parameter(ORDER_STATES), _limit_parameter(200)],
        ),
        "/api/events": get(
            "the most recent events, newest first, as event envelopes (waiting in the outbox or already "
            "acknowledged by head office's broker)",
            _json(_list_of("Event"), "events"),
            [_limit_parameter(50)],
        ),
        "/healthz": get(
            "200 `ok` while the daemon runs its loop; 503 with the reason otherwise",
            {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}},
        ),
        "/metrics": get(
            "Prometheus text format",
            {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
        ),
    }
    paths["/healthz"]["get"]["responses"]["503"] = {
        "description": "the reason the daemon is not healthy",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "store-gateway local API",
            "version": __version__,
            "description": "Read-only. Served when the config has an [http] section (docs/configuration.md). "
            "Requests from a loopback address need no token; any other needs `Authorization: Bearer <token>`.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def main() -> int:
    sys.stdout.write(json.dumps(document(), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
