"""Schemathesis hooks for eval/http_fuzz/run.py (loaded through the `hooks` entry of its config).

Some of the server's rules cannot be stated in its OpenAPI schema, so nearly every generated
body would stop at them and the code behind them would go unfuzzed:
- POST /query takes exactly one of `texts`, `images_base64`, `vectors` (a model validator),
  and vectors must have the query model's dimension (it depends on the gallery);
- POST /items needs an image in every item of an image gallery (`image_base64` is optional in
  the schema because text galleries take text instead).
For two thirds of the bodies schemathesis generates to fit the schema (positive mode; chosen by a hash of the body, so a seed reproduces the
run) these hooks keep one kind of query input, stretch each vector row to the gallery's
dimension ($HTTP_FUZZ_DIM) by cycling its own generated numbers (zeros, huge, tiny and negative
values still arrive, now at the search itself), give half of the image queries images from the
image dictionary (every entry of the list, not just some), and give items without an image one
from that dictionary ($HTTP_FUZZ_IMAGES: a JSON list of base64 strings: real digits and
adversarial files). The other third is sent as generated, so the refusal paths stay fuzzed.
Everything else (k, model, payload, ids, metadata, titles, extra fields, types) is as
schemathesis generated it, and every check still runs on the response.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode

DIM = int(os.environ.get("HTTP_FUZZ_DIM", "16"))
_IMAGES_FILE = os.environ.get("HTTP_FUZZ_IMAGES")
IMAGES: list[str] = json.loads(open(_IMAGES_FILE).read()) if _IMAGES_FILE else []
MAX_FILLED_ITEMS = 64  # bodies with more items keep their (imageless) items: bounded work per request


def _hash(body: Any) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode())


def _numeric_rows(rows: Any) -> bool:
    return (isinstance(rows, list) and bool(rows)
            and all(isinstance(r, list) and r and all(type(x) in (int, float) for x in r) for r in rows))


def _positive_body(case: Any) -> bool:
    """Whether schemathesis generated this body to fit the schema (negative bodies are left alone)."""
    meta = case.meta
    component = meta.components.get(ParameterLocation.BODY) if meta is not None else None
    return component is not None and component.mode == GenerationMode.POSITIVE and isinstance(case.body, dict)


@schemathesis.hook("map_case").apply_to(method="POST", path="/query")
def one_query_kind_of_gallery_dim(context: Any, case: Any) -> Any:
    if _positive_body(case):
        case.body = _query_body(case.body)
    return case


@schemathesis.hook("map_case").apply_to(method="POST", path="/items")
def items_with_images(context: Any, case: Any) -> Any:
    if _positive_body(case):
        case.body = _items_body(case.body)
    return case


def _query_body(body: dict[str, Any]) -> dict[str, Any]:
    h = _hash(body)
    if h % 3 == 0:
        return body
    body = dict(body)
    given = [k for k in ("texts", "images_base64", "vectors") if body.get(k) is not None]
    if len(given) > 1:
        keep = given[(h // 3) % len(given)]
        for k in given:
            if k != keep:
                del body[k]
    if _numeric_rows(body.get("vectors")):
        body["vectors"] = [[r[i % len(r)] for i in range(DIM)] for r in body["vectors"]]
    images = body.get("images_base64")
    if IMAGES and isinstance(images, list) and images and (h // 9) % 2 == 0:
        body["images_base64"] = [IMAGES[(h + n) % len(IMAGES)] for n in range(len(images))]
    return body


def _items_body(body: dict[str, Any]) -> dict[str, Any]:
    if not IMAGES:
        return body
    items = body.get("items")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_FILLED_ITEMS:
        return body
    h = _hash(body)
    if h % 3 == 0:
        return body
    filled = [({**it, "image_base64": IMAGES[(h + n) % len(IMAGES)]} if isinstance(it, dict) and it.get("image_base64") is None else it)
              for n, it in enumerate(items)]
    return {**body, "items": filled}
