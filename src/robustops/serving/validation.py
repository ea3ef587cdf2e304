"""Request bodies, checked before anything reaches the model.

A body is a JSON object with one of ``inputs`` (images: nested lists of shape ``(N, *shape)``
or one input of ``shape``), ``texts`` (a list of strings) or ``rows`` (a list of objects
``{feature: value}`` in raw units), matching the served model's modality. Every problem is a
:class:`InvalidRequest` naming its location (``["body", "inputs", 3]``) and what is wrong; the
service answers 422 with that list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustops.errors import short_repr
from robustops.serving.model import ServedModel
from robustops.text.sanitize import sanitize_many

Loc = list[str | int]


class InvalidRequest(Exception):
    """A request body the guard refuses: ``errors`` is a list of ``{"loc", "msg"}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" for e in errors))
        self.errors = errors


def _bad(loc: Loc, msg: str) -> InvalidRequest:
    return InvalidRequest([{"loc": ["body", *loc], "msg": msg}])


def _echo(name: str) -> str:
    """A client's field name as an error may name it: itself when short and valid Unicode, else
    its bounded ``repr`` (a lone surrogate cannot be encoded in the UTF-8 response, and a
    megabyte-long name is not worth echoing)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return short_repr(name, 100)
    return name if len(name) <= 100 else short_repr(name, 100)


@dataclass(frozen=True)
class Batch:
    """A validated batch: ``inputs`` as the model takes them (tensor or sanitized texts),
    ``raw`` what the client sent (for fingerprints and hashing), ``n`` its size."""

    inputs: Tensor | list[str]
    raw: Tensor | list[str]
    n: int


def parse_body(body: Any, model: ServedModel, *, max_batch: int, max_text_chars: int) -> Batch:
    """Validate ``body`` for ``model`` (see the module docstring)."""
    if not isinstance(body, dict):
        raise _bad([], "the body must be a JSON object")
    field = {"image": "inputs", "text": "texts", "table": "rows"}[model.modality]
    extra = sorted(set(body) - {field})
    if extra:
        raise _bad(
            [_echo(extra[0])], f"unexpected field; this {model.modality} model takes {field!r}"
        )
    if field not in body:
        raise _bad([field], "field required")
    if model.modality == "image":
        return _images(body[field], model, max_batch)
    if model.modality == "text":
        return _texts(body[field], max_batch, max_text_chars)
    return _rows(body[field], model, max_batch)


def request_schema(model: ServedModel, *, max_batch: int, max_text_chars: int) -> dict[str, Any]:
    """The JSON schema of a body :func:`parse_body` accepts for ``model`` (the OpenAPI request
    body of ``POST /v1/predict``): the modality's one field, the input shape as nested arrays of
    fixed length, the value bounds, the batch and text limits, each table feature's range.

    What JSON Schema cannot say is still checked by :func:`parse_body` alone: valid Unicode,
    integer grids, one-hot groups and the schema's other row constraints."""
    body: dict[str, Any]
    if model.modality == "image":
        assert model.input_shape is not None
        lo, hi = model.bounds
        one: dict[str, Any] = {"type": "number", "minimum": lo, "maximum": hi}
        for n in reversed(model.input_shape):
            one = {"type": "array", "items": one, "minItems": n, "maxItems": n}
        many = {"type": "array", "items": one, "minItems": 1, "maxItems": max_batch}
        shape = ", ".join(map(str, model.input_shape))
        body = {
            "anyOf": [many, one],
            "description": f"images in [{lo}, {hi}]: (N, {shape}) with 1 <= N <= {max_batch}, "
            f"or one input ({shape})",
        }
    elif model.modality == "text":
        body = {
            "type": "array",
            "items": {"type": "string", "maxLength": max_text_chars},
            "minItems": 1,
            "maxItems": max_batch,
            "description": f"1 to {max_batch} texts of at most {max_text_chars} characters",
        }
    else:
        assert model.schema is not None
        features = {
            f.name: {"type": "number", "minimum": f.range[0], "maximum": f.range[1]}
            for f in model.schema.features
        }
        body = {
            "type": "array",
            "items": {
                "type": "object",
                "properties": features,
                "required": list(features),
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": max_batch,
            "description": f"1 to {max_batch} rows of schema {model.schema.name!r} in raw units",
        }
    field = {"image": "inputs", "text": "texts", "table": "rows"}[model.modality]
    return {
        "type": "object",
        "title": "PredictRequest",
        "properties": {field: body},
        "required": [field],
        "additionalProperties": False,
    }


def _images(value: Any, model: ServedModel, max_batch: int) -> Batch:
    assert model.input_shape is not None
    shape = tuple(model.input_shape)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        arr = None
    # Numbers only: with dtype=float64 numpy would read "0.5" as 0.5 and true as 1, and raise
    # OverflowError on an integer past 1e308. Without it, those give a string, bool or object
    # array; a boolean among numbers reads as 0 or 1, hence the check of every value's type.
    if arr is None or arr.dtype.kind not in "iuf" or not _numbers_only(value, arr.ndim):
        raise _bad(
            ["inputs"],
            f"must be numbers nested as (N, {shape}) or {shape} "
            "(no strings, booleans, nulls or integers beyond 64 bits)",
        )
    arr = arr.astype(np.float64, copy=False)
    if arr.shape == shape:
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
        raise _bad(
            ["inputs"], f"shape {list(arr.shape)} does not fit (N, {', '.join(map(str, shape))})"
        )
    if not 1 <= arr.shape[0] <= max_batch:
        raise _bad(["inputs"], f"batch of {arr.shape[0]}; between 1 and {max_batch} inputs")
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not finite.all():
        raise _bad(["inputs", int(np.argmin(finite))], "values must be finite numbers")
    lo, hi = model.bounds
    inside = ((arr >= lo) & (arr <= hi)).reshape(arr.shape[0], -1).all(axis=1)
    if not inside.all():
        raise _bad(["inputs", int(np.argmin(inside))], f"values must lie in [{lo}, {hi}]")
    t = torch.from_numpy(arr.astype(np.float32))
    return Batch(inputs=t, raw=t, n=t.shape[0])


def _numbers_only(value: Any, depth: int) -> bool:
    """Whether ``value``, lists nested ``depth`` deep (as numpy found them), holds only JSON
    numbers (``int``/``float``, not ``bool``); flattened and typed in C, not value by value."""
    flat: Any = value if depth > 0 else [value]
    for _ in range(depth - 1):
        flat = chain.from_iterable(flat)
    return set(map(type, flat)) <= {int, float}


def _texts(value: Any, max_batch: int, max_chars: int) -> Batch:
    if not isinstance(value, list) or not 1 <= len(value) <= max_batch:
        raise _bad(["texts"], f"must be a list of 1 to {max_batch} strings")
    for i, t in enumerate(value):
        if not isinstance(t, str):
            raise _bad(["texts", i], "must be a string")
        if len(t) > max_chars:
            raise _bad(["texts", i], f"{len(t)} characters; at most {max_chars}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(["texts", i], "is not valid Unicode (lone surrogate)") from None
    return Batch(inputs=sanitize_many(value), raw=list(value), n=len(value))


def _rows(value: Any, model: ServedModel, max_batch: int) -> Batch:
    schema = model.schema
    assert schema is not None
    if not isinstance(value, list) or not 1 <= len(value) <= max_batch:
        raise _bad(["rows"], f"must be a list of 1 to {max_batch} objects")
    names = schema.names
    table = np.empty((len(value), len(names)), dtype=np.float64)
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise _bad(["rows", i], "must be an object {feature: value}")
        missing = [n for n in names if n not in row]
        unknown = sorted(set(row) - set(names))
        if missing or unknown:
            name = missing[0] if missing else unknown[0]
            loc: Loc = ["rows", i, name if missing else _echo(name)]
            raise _bad(loc, "missing feature" if missing else "unknown feature")
        for j, n in enumerate(names):
            v = row[n]
            try:  # float() of an integer past 1e308 overflows
                f = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
            except OverflowError:
                f = math.nan
            if not math.isfinite(f):
                raise _bad(["rows", i, n], "must be a finite number")
            table[i, j] = f
    violations = schema.validate(table, raw=True, limit=1)
    if violations:
        v = violations[0]
        raise _bad(["rows", v.row, v.feature], v.reason)
    scaled = schema.scale(table).float()
    return Batch(inputs=scaled, raw=scaled, n=len(value))
