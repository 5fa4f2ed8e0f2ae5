"""A TF Serving REST client, and a local TF-Serving-compatible server.

Production serving is TensorFlow Serving itself, which loads what
`keras_vit.export` writes as it is:

    docker run -p 8501:8501 -v $PWD/export/vit:/models/vit -e MODEL_NAME=vit tensorflow/serving

`Server` (`keras-vit serve BASE`) is a development stand-in for machines
without Docker: the subset of TF Serving's REST API that clients of these
models use, with the same URLs and JSON:

- `GET /v1/models/NAME[/versions/N]`: version status;
- `GET /v1/models/NAME[/versions/N]/metadata`: the signatures;
- `POST /v1/models/NAME[/versions/N]:predict`: row (`instances`) or
  columnar (`inputs`) requests; `{"b64": ...}` values for string inputs.

Like TF Serving it serves the newest integer version under `BASE` and loads
a newly exported one without a restart (it polls the directory). Bad
requests get a 4xx answer with TF Serving's `{"error": "..."}` body and the
server keeps serving. It runs on aiohttp; the model runs in a worker thread
so that slow clients never block others.

`Client` sends TF Serving REST predict requests (to this server or to TF
Serving) for image files, bytes, NumPy arrays or PIL images.
"""

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import pathlib
import threading

import numpy as np

logger = logging.getLogger("keras_vit.serving")

DEFAULT_PORT = 8501
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGES = 64


class ServingError(RuntimeError):
    """An error answered by a server (`status` is the HTTP status code)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    """The answer for one image: the top-k classes, best first."""

    labels: list
    scores: list
    indices: list
    probabilities: list


def encode_image(image):
    """Bytes to send for one image: a path's file contents, bytes as they
    are, a NumPy array (pixels in [0, 255]; HxW, HxWx1, HxWx3 or HxWx4) or a
    PIL image as lossless PNG."""
    if isinstance(image, (str, os.PathLike)):
        path = pathlib.Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image not found: {path}")
        return path.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(
                f"An image array must be (height, width), (height, width, 1), (height, width, 3) "
                f"or (height, width, 4); received shape {array.shape}."
            )
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
                raise ValueError(f"An image array must hold finite numbers, received dtype {array.dtype}.")
            low, high = float(array.min(initial=0)), float(array.max(initial=0))
            if low < 0 or high > 255:
                raise ValueError(
                    f"Image pixel values must be in [0, 255], received values in [{low}, {high}]."
                )
            array = np.round(array).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(
        f"An image must be a path, bytes, a NumPy array or a PIL image, received {type(image).__name__}."
    )


class Client:
    """TF Serving REST client for models exported by `keras_vit.export`.

    Args:
        url: the server, e.g. `"http://localhost:8501"`.
        model_name: TF Serving's model name (`MODEL_NAME`).
        version: a specific version (default: the one the server serves).
        timeout: seconds to wait for a connection and for each answer.
        retries: retries of a request when the connection fails or the server
            answers 503 (busy), with exponential back-off.
        batch_size: images per request; longer lists are sent in batches.

    Example:
        >>> client = Client("http://localhost:8501", model_name="vit")  # doctest: +SKIP
        >>> client.predict(["photo.jpg"])[0].labels  # doctest: +SKIP
    """

    def __init__(self, url, model_name, version=None, timeout=30.0, retries=3, batch_size=32):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, received url={url!r}.")
        if not isinstance(model_name, str) or not model_name or "/" in model_name:
            raise ValueError(f"model_name must be a non-empty name without '/', received {model_name!r}.")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValueError(f"version must be a positive integer, received version={version!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, received batch_size={batch_size!r}.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, received retries={retries!r}.")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, received timeout={timeout!r}.")
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = float(timeout)
        self.batch_size = batch_size
        self._session = requests.Session()
        # urllib3's Retry does the retrying: connection errors (the request
        # never reached the server) and 503 answers, honouring Retry-After.
        retry = Retry(
            total=retries, connect=retries, read=0, status=retries, other=0,
            status_forcelist=(503,), allowed_methods=None, backoff_factor=0.2,
            raise_on_status=False, respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def _model_url(self):
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.url}/v1/models/{self.model_name}{version}"

    def _request(self, method, url, payload=None):
        import requests

        try:
            response = self._session.request(method, url, json=payload, timeout=self.timeout)
        except requests.exceptions.RequestException as error:
            raise ServingError(f"{method} {url} failed: {error}") from error
        if not response.ok:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text.strip() or response.reason
            raise ServingError(f"{method} {url}: HTTP {response.status_code}: {message}",
                               status=response.status_code)
        try:
            return response.json()
        except ValueError as error:
            raise ServingError(f"{method} {url}: the answer is not JSON: {response.text[:200]!r}") from error

    def status(self):
        """The model's version status (TF Serving's `GET /v1/models/NAME`)."""
        return self._request("GET", self._model_url())

    def metadata(self):
        """The served signatures (TF Serving's `GET .../metadata`)."""
        return self._request("GET", self._model_url() + "/metadata")

    def _predict(self, images, signature_name):
        images = list(images) if isinstance(images, (list, tuple)) else (
            list(images) if isinstance(images, np.ndarray) and images.ndim == 4 else [images]
        )
        encoded = [encode_image(image) for image in images]
        rows = []
        for start in range(0, len(encoded), self.batch_size):
            payload = {
                "signature_name": signature_name,
                "instances": [
                    {"b64": base64.b64encode(b).decode("ascii")}
                    for b in encoded[start:start + self.batch_size]
                ],
            }
            rows += self._request("POST", self._model_url() + ":predict", payload)["predictions"]
        return rows

    def predict(self, images):
        """Classifies images (a list of paths, bytes, arrays or PIL images,
        or one of them) with the `serving_default` signature.

        Returns:
            One `Prediction` per image.
        """
        return [
            Prediction(labels=row["top_k_labels"], scores=row["top_k_scores"],
                       indices=row["top_k_indices"], probabilities=row["probabilities"])
            for row in self._predict(images, "serving_default")
        ]

    def embeddings(self, images):
        """The class-token features of images (the `embeddings` signature),
        a float32 array `(len(images), width)`."""
        return np.asarray(self._predict(images, "embeddings"), dtype=np.float32)

    def close(self):
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------


class _RequestError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class _Servable:
    """One loaded version: its signatures and their TF Serving metadata."""

    def __init__(self, version, path):
        import tensorflow as tf
        from google.protobuf import json_format
        from tensorflow.core.protobuf import saved_model_pb2

        self.version = version
        self.path = path
        self.loaded = tf.saved_model.load(str(path))
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        defs = proto.meta_graphs[0].signature_def
        self.signature_defs = {
            name: json_format.MessageToDict(d, preserving_proto_field_name=True)
            for name, d in defs.items() if not name.startswith("__")
        }
        self.inputs = {
            name: {k: (v.dtype, [dim.size for dim in v.tensor_shape.dim]) for k, v in d.inputs.items()}
            for name, d in defs.items() if not name.startswith("__")
        }

    def run(self, signature_name, tensors):
        import tensorflow as tf

        function = self.loaded.signatures[signature_name]
        try:
            outputs = function(**{k: tf.constant(v) for k, v in tensors.items()})
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(self._explain(tensors, error)) from error
        return {k: v.numpy() for k, v in outputs.items()}

    @staticmethod
    def _explain(tensors, error):
        """The error of the first image that cannot be decoded, by position,
        else TensorFlow's message without its graph trace."""
        import tensorflow as tf

        from keras_vit import data as vit_data

        for name, values in tensors.items():
            if values.dtype != object:
                continue
            for i, value in enumerate(values):
                try:
                    # The export's own checks (size limit, formats) first:
                    # a bomb is never decoded here either.
                    vit_data.decode_image(value, (1, 1))
                except tf.errors.InvalidArgumentError as decode_error:
                    return f"Input '{name}'[{i}] is not a decodable image: {vit_data.tf_error_message(decode_error)}"
        return vit_data.tf_error_message(error)


def _decode_utf8(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _to_json(value):
    """A NumPy output as JSON values (strings as UTF-8 text, like TF Serving
    for outputs whose names do not end in `_bytes`)."""
    if value.dtype.kind in ("S", "O"):
        return np.frompyfunc(_decode_utf8, 1, 1)(value).tolist()
    return value.tolist()



def _aiohttp_web():
    """aiohttp's `web`, or an ImportError naming the extra that installs it."""
    try:
        from aiohttp import web
    except ImportError as error:
        raise ImportError(
            "keras-vit serve needs aiohttp: pip install 'keras-vision-transformer[serve]'."
        ) from error
    return web

class Server:
    """Serves the newest SavedModel version under `base_dir` over TF
    Serving's REST API (a development stand-in for TF Serving).

    Args:
        base_dir: TF Serving's model base path (integer version folders).
        model_name: the name in the URLs (default: the folder's name).
        host: interface to bind; 127.0.0.1 (this machine only) by default.
        port: TCP port (0: any free port; see `port` after `start()`).
        poll_seconds: how often to look for a new version.
        max_body_bytes: larger request bodies get HTTP 413.
        max_images: more images in one request get HTTP 413.
        max_pending: requests waiting for or in the model beyond this get
            HTTP 503 (busy, retry later).
        read_timeout: seconds a client has to send its request body (408).
    """

    def __init__(self, base_dir, model_name=None, host="127.0.0.1", port=DEFAULT_PORT,
                 poll_seconds=1.0, max_body_bytes=DEFAULT_MAX_BODY_BYTES,
                 max_images=DEFAULT_MAX_IMAGES, max_pending=32, read_timeout=30.0):
        self.base_dir = pathlib.Path(base_dir)
        if not self.base_dir.is_dir():
            raise FileNotFoundError(f"Model base directory not found: {self.base_dir}")
        self.model_name = model_name or self.base_dir.resolve().name
        for name, value, low in (("port", port, 0), ("max_body_bytes", max_body_bytes, 1),
                                 ("max_images", max_images, 1), ("max_pending", max_pending, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, received {name}={value!r}.")
        if port > 65535:
            raise ValueError(f"port must be in [0, 65535], received port={port}.")
        for name, value in (("poll_seconds", poll_seconds), ("read_timeout", read_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, received {name}={value!r}.")
        self.host, self.port = host, port
        self.poll_seconds = float(poll_seconds)
        self.max_body_bytes, self.max_images = max_body_bytes, max_images
        self.max_pending, self.read_timeout = max_pending, float(read_timeout)
        self._servable = None
        self._failed = {}  # version -> load error, not retried
        self._load_lock = threading.Lock()
        self._pending = 0
        # One model call at a time: TensorFlow already uses every core for
        # one call, and a queue keeps memory bounded.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="keras-vit-model")
        self._loop = None
        self._thread = None
        self._runner = None
        self._started = threading.Event()
        self._start_error = None

    # -- versions ---------------------------------------------------------

    def refresh(self):
        """Loads the newest version if it is not the one served; returns the
        served version (None while there is none)."""
        from keras_vit.export import list_versions

        with self._load_lock:
            current = self._servable.version if self._servable else 0
            # The newest version that loads; a broken one is remembered (not
            # retried) and the one served so far stays.
            for version in reversed(list_versions(self.base_dir)):
                if version <= current:
                    break
                if version in self._failed:
                    continue
                try:
                    servable = _Servable(version, self.base_dir / str(version))
                except Exception as error:  # a broken version must not take the server down
                    self._failed[version] = f"{type(error).__name__}: {error}"
                    logger.error("keras-vit serve: cannot load version %s: %s", version, error)
                    continue
                self._servable = servable
                logger.warning("keras-vit serve: serving %s version %s from %s",
                               self.model_name, version, servable.path)
                break
            return self.version

    def _get(self, name, version):
        if name != self.model_name:
            raise _RequestError(404, f"Servable not found for request: Latest({name})")
        servable = self._servable
        if servable is None:
            raise _RequestError(404, f"Could not find any versions of model {name}")
        if version is not None and int(version) != servable.version:
            raise _RequestError(
                404, f"Servable not found for request: Specific({name}, {version}); "
                     f"this server serves version {servable.version} only"
            )
        return servable

    # -- handlers ---------------------------------------------------------

    async def _status(self, request):
        servable = self._get(request.match_info["name"], request.match_info.get("version"))
        return self._json({"model_version_status": [{
            "version": str(servable.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }]})

    async def _metadata(self, request):
        servable = self._get(request.match_info["name"], request.match_info.get("version"))
        return self._json({
            "model_spec": {"name": self.model_name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
        })

    async def _predict(self, request):
        servable = self._get(request.match_info["name"], request.match_info.get("version"))
        if self._pending >= self.max_pending:
            raise _RequestError(503, f"Server busy: {self._pending} requests pending; retry later")
        self._pending += 1
        try:
            try:
                body = await asyncio.wait_for(request.read(), self.read_timeout)
            except asyncio.TimeoutError:
                raise _RequestError(408, f"Request body not received within {self.read_timeout:g} s")
            signature_name, tensors, columnar = self._parse(servable, body)
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(self._executor, servable.run, signature_name, tensors)
            except Exception as error:
                import tensorflow as tf

                if isinstance(error, (tf.errors.InvalidArgumentError, ValueError, TypeError)):
                    message = getattr(error, "message", None) or str(error)
                    raise _RequestError(400, " ".join(message.split())[:2000])
                raise
        finally:
            self._pending -= 1
        if columnar:
            result = {k: _to_json(v) for k, v in outputs.items()}
            return self._json({"outputs": next(iter(result.values())) if len(result) == 1 else result})
        batch = len(next(iter(outputs.values())))
        names = sorted(outputs)
        if len(names) == 1:
            predictions = _to_json(outputs[names[0]])
        else:
            columns = {k: _to_json(outputs[k]) for k in names}
            predictions = [{k: columns[k][i] for k in names} for i in range(batch)]
        return self._json({"predictions": predictions})

    def _parse(self, servable, body):
        """TF Serving's JSON request -> (signature name, {input: array}, columnar)."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise _RequestError(400, f"JSON Parse error: {error}")
        if not isinstance(request, dict):
            raise _RequestError(400, "JSON Value: the request must be a JSON object")
        signature_name = request.get("signature_name", "serving_default")
        if signature_name not in servable.inputs:
            raise _RequestError(
                400, f"Serving signature name: \"{signature_name}\" not found in signature def; "
                     f"available: {sorted(servable.inputs)}"
            )
        specs = servable.inputs[signature_name]
        if ("instances" in request) == ("inputs" in request):
            raise _RequestError(400, "Missing 'inputs' or 'instances' key (exactly one is required)")
        columnar = "inputs" in request
        if columnar:
            values = request["inputs"]
            if isinstance(values, dict):
                columns = values
            elif len(specs) == 1:
                columns = {next(iter(specs)): values}
            else:
                raise _RequestError(400, f"'inputs' must name each of {sorted(specs)}")
        else:
            instances = request["instances"]
            if not isinstance(instances, list) or not instances:
                raise _RequestError(400, "'instances' must be a non-empty list")
            if all(isinstance(i, dict) and "b64" not in i for i in instances):
                columns = {k: [i.get(k) for i in instances] for k in {k for i in instances for k in i}}
            elif len(specs) == 1:
                columns = {next(iter(specs)): instances}
            else:
                raise _RequestError(400, f"each instance must be an object with {sorted(specs)}")
        unknown, missing = set(columns) - set(specs), set(specs) - set(columns)
        if unknown or missing:
            raise _RequestError(
                400, f"Input names do not match signature \"{signature_name}\": expected "
                     f"{sorted(specs)}, received {sorted(columns)}"
            )
        tensors = {}
        for name, values in columns.items():
            dtype, shape = specs[name]
            tensors[name] = self._tensor(name, values, dtype, shape)
            if len(tensors[name]) > self.max_images:
                raise _RequestError(
                    413, f"{len(tensors[name])} images in one request; the limit is {self.max_images}"
                )
        return signature_name, tensors, columnar

    @staticmethod
    def _tensor(name, values, dtype, shape):
        from tensorflow.core.framework import types_pb2

        if not isinstance(values, list) or not values:
            raise _RequestError(400, f"Input '{name}' must be a non-empty list (a batch)")
        if dtype == types_pb2.DT_STRING:
            out = []
            for i, value in enumerate(values):
                if isinstance(value, dict):
                    if set(value) != {"b64"} or not isinstance(value["b64"], str):
                        raise _RequestError(400, f"Input '{name}'[{i}]: expected {{\"b64\": \"...\"}}")
                    try:
                        out.append(base64.b64decode(value["b64"], validate=True))
                    except (binascii.Error, ValueError) as error:
                        raise _RequestError(400, f"Input '{name}'[{i}]: bad base64 data: {error}")
                elif isinstance(value, str):
                    out.append(value.encode("utf-8"))
                else:
                    raise _RequestError(400, f"Input '{name}'[{i}]: expected a string or {{\"b64\": ...}}")
            return np.array(out, dtype=object)
        try:
            array = np.asarray(values, dtype=np.float32)
        except (ValueError, TypeError) as error:
            raise _RequestError(400, f"Input '{name}': not a numeric array of one shape: {error}")
        if array.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, array.shape)):
            raise _RequestError(
                400, f"Input '{name}' has shape {list(array.shape)}; the signature expects "
                     f"{[s if s >= 0 else None for s in shape]}"
            )
        return array

    @staticmethod
    def _json(payload, status=200):
        web = _aiohttp_web()

        return web.json_response(payload, status=status, dumps=lambda o: json.dumps(o, allow_nan=True))

    def _app(self):
        web = _aiohttp_web()

        @web.middleware
        async def errors(request, handler):
            try:
                return await handler(request)
            except _RequestError as error:
                headers = {"Retry-After": "1"} if error.status == 503 else None
                response = self._json({"error": error.message}, status=error.status)
                if headers:
                    response.headers.update(headers)
                return response
            except web.HTTPException as error:
                if error.status == 413:
                    message = f"Request body larger than the limit of {self.max_body_bytes} bytes"
                else:
                    message = error.reason
                return self._json({"error": message}, status=error.status)
            except Exception as error:  # never take the server down
                logger.exception("keras-vit serve: error in %s", request.path)
                return self._json({"error": f"Internal error: {type(error).__name__}: {error}"}, status=500)

        app = web.Application(middlewares=[errors], client_max_size=self.max_body_bytes)
        name = r"{name:[^/:]+}"
        version = r"/versions/{version:\d+}"
        for prefix in (f"/v1/models/{name}", f"/v1/models/{name}{version}"):
            app.router.add_get(prefix, self._status)
            app.router.add_get(prefix + "/metadata", self._metadata)
            app.router.add_post(prefix + ":predict", self._predict)
        return app

    async def _poll(self):
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await loop.run_in_executor(None, self.refresh)
            except Exception:  # keep polling
                logger.exception("keras-vit serve: polling %s failed", self.base_dir)

    async def _start_async(self):
        web = _aiohttp_web()

        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self):
        """Loads the newest version and serves in a background thread;
        returns once the port is open."""
        self.refresh()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start_async())
            except Exception as error:
                self._start_error = error
                self._started.set()
                return
            self._started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="keras-vit-serve", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise OSError(f"Cannot serve on {self.host}:{self.port}: {self._start_error}")
        return self

    def stop(self):
        """Stops serving and waits for the background thread."""
        if self._loop is None:
            return

        async def shutdown():
            self._poller.cancel()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._executor.shutdown(wait=False)
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def version(self):
        """The version being served (None while there is none)."""
        return self._servable.version if self._servable else None

    def serve_forever(self):
        """Serves until interrupted (Ctrl-C), starting first if `start()` was
        not called."""
        if self._loop is None:
            self.start()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
