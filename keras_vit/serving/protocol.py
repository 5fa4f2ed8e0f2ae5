"""TF Serving's REST JSON: a predict request's body to input arrays, and
output arrays to JSON values.

Kept apart from `server` so that the request format can be read and tested
without aiohttp or a running server.
"""

import base64
import binascii
import json

import numpy as np


class RequestError(Exception):
    """A request answered with an HTTP error `status` and TF Serving's
    `{"error": message}` body."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_request(servable, body, max_images):
    """TF Serving's JSON request -> (signature name, {input: array}, columnar).

    Raises `RequestError` (HTTP status and TF Serving's message) for a
    request the servable cannot take.
    """
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"JSON Parse error: {error}")
    if not isinstance(request, dict):
        raise RequestError(400, "JSON Value: the request must be a JSON object")
    signature_name = request.get("signature_name", "serving_default")
    if signature_name not in servable.inputs:
        raise RequestError(
            400, f"Serving signature name: \"{signature_name}\" not found in signature def; "
                 f"available: {sorted(servable.inputs)}"
        )
    specs = servable.inputs[signature_name]
    if ("instances" in request) == ("inputs" in request):
        raise RequestError(400, "Missing 'inputs' or 'instances' key (exactly one is required)")
    columnar = "inputs" in request
    if columnar:
        values = request["inputs"]
        if isinstance(values, dict):
            columns = values
        elif len(specs) == 1:
            columns = {next(iter(specs)): values}
        else:
            raise RequestError(400, f"'inputs' must name each of {sorted(specs)}")
    else:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError(400, "'instances' must be a non-empty list")
        if all(isinstance(i, dict) and "b64" not in i for i in instances):
            columns = {k: [i.get(k) for i in instances] for k in {k for i in instances for k in i}}
        elif len(specs) == 1:
            columns = {next(iter(specs)): instances}
        else:
            raise RequestError(400, f"each instance must be an object with {sorted(specs)}")
    unknown, missing = set(columns) - set(specs), set(specs) - set(columns)
    if unknown or missing:
        raise RequestError(
            400, f"Input names do not match signature \"{signature_name}\": expected "
                 f"{sorted(specs)}, received {sorted(columns)}"
        )
    tensors = {}
    for name, values in columns.items():
        dtype, shape = specs[name]
        tensors[name] = _tensor(name, values, dtype, shape)
        if len(tensors[name]) > max_images:
            raise RequestError(
                413, f"{len(tensors[name])} images in one request; the limit is {max_images}"
            )
    return signature_name, tensors, columnar


def _tensor(name, values, dtype, shape):
    """One input's JSON values as the array its signature takes."""
    from tensorflow.core.framework import types_pb2

    if not isinstance(values, list) or not values:
        raise RequestError(400, f"Input '{name}' must be a non-empty list (a batch)")
    if dtype == types_pb2.DT_STRING:
        out = []
        for i, value in enumerate(values):
            if isinstance(value, dict):
                if set(value) != {"b64"} or not isinstance(value["b64"], str):
                    raise RequestError(400, f"Input '{name}'[{i}]: expected {{\"b64\": \"...\"}}")
                try:
                    out.append(base64.b64decode(value["b64"], validate=True))
                except (binascii.Error, ValueError) as error:
                    raise RequestError(400, f"Input '{name}'[{i}]: bad base64 data: {error}")
            elif isinstance(value, str):
                out.append(value.encode("utf-8"))
            else:
                raise RequestError(400, f"Input '{name}'[{i}]: expected a string or {{\"b64\": ...}}")
        return np.array(out, dtype=object)
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise RequestError(400, f"Input '{name}': not a numeric array of one shape: {error}")
    if array.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, array.shape)):
        raise RequestError(
            400, f"Input '{name}' has shape {list(array.shape)}; the signature expects "
                 f"{[s if s >= 0 else None for s in shape]}"
        )
    return array


def _decode_utf8(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def to_json(value):
    """A NumPy output as JSON values (strings as UTF-8 text, like TF Serving
    for outputs whose names do not end in `_bytes`)."""
    if value.dtype.kind in ("S", "O"):
        return np.frompyfunc(_decode_utf8, 1, 1)(value).tolist()
    return value.tolist()
