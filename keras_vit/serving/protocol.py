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
        # NaN and Infinity are not JSON (Python's parser takes them): refused.
        request = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:  # "[[[[..." nested deeper than the parser recurses
        raise RequestError(400, "JSON Parse error: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise RequestError(400, "JSON Value: the request must be a JSON object")
    signature_name = request.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise RequestError(400, f"'signature_name' must be a string, received {type(signature_name).__name__}")
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
        # Counted before anything is converted: a body of many small
        # values must not be turned into arrays first.
        if isinstance(values, list) and len(values) > max_images:
            raise RequestError(413, f"{len(values)} images in one request; the limit is {max_images}")
        dtype, shape = specs[name]
        tensors[name] = _tensor(name, values, dtype, shape)
    return signature_name, tensors, columnar


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


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
        # Without a dtype first: NumPy would turn the strings "1.5" and
        # "255" into numbers, and true into 1.0, where TF Serving refuses them.
        found = np.asarray(values)
    except (ValueError, TypeError) as error:
        raise RequestError(400, f"Input '{name}': not a numeric array of one shape: {error}") from None
    if found.dtype.kind not in "iuf":
        raise RequestError(
            400, f"Input '{name}': pixel values must be numbers, received "
                 f"{'an array of uneven shape' if found.dtype == object else found.dtype.name + ' values'}"
        )
    if array_shape_mismatch(found.shape, shape):
        raise RequestError(
            400, f"Input '{name}' has shape {list(found.shape)}; the signature expects "
                 f"{[s if s >= 0 else None for s in shape]}"
        )
    array = found.astype(np.float32)
    if not np.isfinite(array).all():
        raise RequestError(400, f"Input '{name}': values must be finite numbers")
    # keras_vit's `images` input (predict_images) takes pixels in [0, 255].
    if name == "images" and array.size and not (array.min() >= 0 and array.max() <= 255):
        raise RequestError(400, f"Input '{name}': pixel values must be in [0, 255], received values in "
                                f"[{float(array.min()):g}, {float(array.max()):g}]")
    return array


def array_shape_mismatch(found, expected):
    """Whether an array of shape `found` does not fit a signature's
    `expected` shape (-1 for any size)."""
    return len(found) != len(expected) or any(s not in (-1, a) for s, a in zip(expected, found))


def _decode_utf8(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def to_json(value):
    """A NumPy output as JSON values (strings as UTF-8 text, like TF Serving
    for outputs whose names do not end in `_bytes`)."""
    if value.dtype.kind in ("S", "O"):
        return np.frompyfunc(_decode_utf8, 1, 1)(value).tolist()
    return value.tolist()
