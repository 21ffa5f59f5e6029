"""The chat service's API as an OpenAPI 3 document, written by hand: ``document(version)`` is what
``GET /api/openapi.json`` returns. tests/test_bot.py checks that its paths and methods are exactly
the routes the app registers, so a route added without a line here fails the tests."""
from __future__ import annotations


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def _body(schema_ref: str, example: dict) -> dict:
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema_ref}"}, "example": example}}}


_NOT_JSON = _error("the body is not a JSON object, or the message is empty or not plain text "
                   "(a lone surrogate, a control character other than tab and newline)")
_TOO_LARGE = _error("the body is over the size limit (64 KiB unless configured), or the message over "
                    "MAX_MESSAGE_CHARS (1000)")
_FAILED = _error("the server failed on this request; nothing of it was kept")

_SCHEMAS = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string", "description": "what is wrong and what to do"}}},
    "ChatRequest": {"type": "object", "required": ["message"], "properties": {
        "message": {"type": "string", "minLength": 1, "maxLength": 1000,
                    "description": "the user's message; personal data in it is replaced by placeholders "
                                   "before it is kept or searched with"},
        "session_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$",
                       "description": "the session_id of an earlier answer; absent or malformed: a new session"}}},
    "ChatReply": {"type": "object", "required": ["reply", "session_id", "candidates"], "properties": {
        "reply": {"type": "string", "description": "in the language of the message (Korean or English)"},
        "session_id": {"type": "string"},
        "candidates": {"type": "array", "maxItems": 5, "description": "the best servable candidates, for debugging",
                       "items": {"type": "object", "required": ["text", "score"], "properties": {
                           "text": {"type": "string"}, "score": {"type": "number"}}}}}},
    "ResetRequest": {"type": "object", "properties": {"session_id": {"type": "string"}}},
    "Info": {"type": "object", "required": ["version", "model", "index", "ranker"], "properties": {
        "version": {"type": "string", "description": "the dialogbert package's version"},
        "model": {"type": "object", "properties": {
            "name": {"type": ["string", "null"], "description": "the encoder's folder name (no path)"},
            "sha256": {"type": ["string", "null"], "description": "of its weights, as index_info.json records it"},
            "precision": {"type": ["string", "null"], "description": "its weights as served: bf16 or fp32"}}},
        "index": {"type": "object", "properties": {
            "size": {"type": ["integer", "null"], "description": "candidate replies"},
            "memory": {"type": ["integer", "null"], "description": "contexts in the context memory"},
            "dimension": {"type": ["integer", "null"]},
            "factory": {"type": ["string", "null"], "description": "the FAISS index type"},
            "updated": {"type": ["string", "null"], "description": "when it was last built or grown (UTC)"},
            "info_sha256": {"type": ["string", "null"],
                            "description": "sha256 of index_info.json: changes with every build and every added batch"}}},
        "ranker": {"type": "object", "properties": {
            "features": {"type": "array", "items": {"type": "string"},
                         "description": "the features the ranker weighs (retrieval.ranker)"}}},
        "reload": {"type": "object", "description": "only when the service watches its index folder", "properties": {
            "reloads": {"type": "integer", "description": "changed indexes swapped in since the start"},
            "loading": {"type": "boolean", "description": "a changed index is being loaded now"},
            "last_error": {"type": ["string", "null"], "description": "the failed load's exception type and time"},
            "loaded_at": {"type": "string", "description": "when the answering index was loaded (UTC)"}}},
        "batching": {"type": "object", "description": "only when requests are batched (SEARCH_BATCH > 1)", "properties": {
            "max_batch": {"type": "integer", "description": "most contexts searched in one call"},
            "workers": {"type": "integer", "description": "calls of the retriever run at once"},
            "batches": {"type": "integer", "description": "calls of the retriever since the start"},
            "largest": {"type": "integer", "description": "the most contexts one call has searched"}}}}},
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "failing"]},
        "reason": {"type": "string", "description": "why it is failing (only then)"}}},
}


def document(version: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "dialogbert chat service", "version": version,
                 "description": "A response-selection chat bot over anonymized messenger conversations. "
                                "Every error under /api/ is JSON {\"error\": ...}; every response carries "
                                "a Content-Security-Policy allowing only this origin."},
        "paths": {
            "/": {"get": {"summary": "the chat page", "operationId": "page",
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
            "/healthz": {"get": {
                "summary": "the retriever answers a fixed probe message", "operationId": "health",
                "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "it answered"),
                              "503": _json({"$ref": "#/components/schemas/Health"},
                                           "it failed or found nothing; reason says which")}}},
            "/api/chat": {"post": {
                "summary": "send a message, get the bot's reply", "operationId": "chat",
                "requestBody": _body("ChatRequest", {"message": "안녕, 오늘 뭐 해?"}),
                "responses": {"200": _json({"$ref": "#/components/schemas/ChatReply"}, "the reply"),
                              "400": _NOT_JSON, "413": _TOO_LARGE,
                              "429": {**_error("over the rate limit for this client address (30 per minute "
                                               "unless configured)"),
                                      "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                                  "description": "seconds to wait"}}},
                              "500": _FAILED}}},
            "/api/reset": {"post": {
                "summary": "forget a session", "operationId": "reset",
                "requestBody": _body("ResetRequest", {"session_id": "..."}),
                "responses": {"200": _json({"type": "object", "properties": {"ok": {"type": "boolean"}}},
                                           "forgotten (or never known)"),
                              "400": _NOT_JSON, "413": _TOO_LARGE}}},
            "/api/info": {"get": {
                "summary": "what is served: model, index, version, ranker (no personal data)",
                "operationId": "info",
                "responses": {"200": _json({"$ref": "#/components/schemas/Info"}, "the service")}}},
            "/api/openapi.json": {"get": {
                "summary": "this document", "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
        "components": {"schemas": _SCHEMAS},
    }
