"""The OpenAPI 3.1 description of the service (``GET /openapi.json``).

The query parameters of ``POST /segment`` come from :func:`.options.openapi_parameters`, the same
table that parses them, so the description cannot drift from what the server accepts.
"""
from __future__ import annotations

from .. import __version__
from .answers import ANSWER_TYPES
from .decode import CONTENT_TYPES
from .options import openapi_parameters

_ERROR = {"description": "One line saying what is wrong", "content": {"text/plain": {"schema": {"type": "string"}}}}
_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _answers() -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    json_answer = {"schema": {"type": "object", "properties": {
        "model": {"type": "string"}, "n_masks": {"type": "integer"}, "diameter": {"type": "number"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "timings": {"type": "object", "additionalProperties": {"type": "number"},
                    "description": "seconds per stage"},
        "masks": {"type": "object", "description": "run-length encoded labels in C order: values[i] repeated "
                                                   "lengths[i] times, reshaped to shape",
                  "properties": {"encoding": {"const": "rle"}, "order": {"const": "C"},
                                 "shape": {"type": "array", "items": {"type": "integer"}},
                                 "dtype": {"type": "string"},
                                 "values": {"type": "array", "items": {"type": "integer"}},
                                 "lengths": {"type": "array", "items": {"type": "integer"}}}}}}}
    content = {media: binary for media in ANSWER_TYPES if media != "application/json"}
    content["application/json"] = json_answer
    return content


def openapi_document(token_required: bool) -> dict:
    """The OpenAPI document; ``token_required`` adds the bearer-token security scheme."""
    errors = {str(code): _ERROR for code in (400, 406, 408, 413, 415, 504)}
    errors["503"] = {**_ERROR, "description": "Busy or shutting down: retry after the Retry-After header's "
                                              "seconds", "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
    if token_required:
        errors["401"] = _ERROR
    segment = {
        "summary": "Segment one image",
        "description": "The body is the image file's bytes (TIFF, PNG, JPEG or .npy); the answer format "
                       "follows the Accept header (default image/tiff, the label image). Settings are "
                       "query parameters with Cellpose's names.",
        "parameters": openapi_parameters(),
        "requestBody": {"required": True, "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in list(CONTENT_TYPES) + ["application/octet-stream"]}},
        "responses": {"200": {"description": "The masks", "content": _answers(),
                              "headers": {"X-Masks-Count": {"schema": {"type": "integer"}},
                                          "X-Diameter": {"schema": {"type": "number"}},
                                          "Server-Timing": {"schema": {"type": "string"}}}},
                      **errors},
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "cellflow-rt serve", "version": __version__,
                 "description": "Cellpose (3.x CPnet) segmentation with warm models, without PyTorch."},
        "paths": {
            "/segment": {"post": segment},
            "/health": {"get": {"summary": "Status, queue and limits",
                                "responses": {"200": {"description": "Serving", **_JSON},
                                              "503": {"description": "Shutting down", **_JSON}}}},
            "/models": {"get": {"summary": "The models served", "responses": {"200": {"description": "Models",
                                                                                       **_JSON}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This description",
                                      "responses": {"200": {"description": "OpenAPI 3.1", **_JSON}}}},
        },
    }
    if token_required:
        document["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
        document["security"] = [{"bearer": []}]
    return document
