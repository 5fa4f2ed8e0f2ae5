"""The local TF-Serving-compatible server (`keras-vit serve`, `[serve]` extra).

It runs on aiohttp, imported only when a server starts, so that importing
`keras_vit.serving` (and the client) works without the extra. The model runs
in a worker thread so that slow clients never block others.
"""

import asyncio
import concurrent.futures
import json
import logging
import os
import pathlib
import threading
import time
import uuid

import numpy as np

from keras_vit._backend import is_out_of_memory
from keras_vit.serving import protocol

logger = logging.getLogger("keras_vit.serving")
# One line per request (aiohttp's access log format); `keras-vit serve`
# prints it, a program embedding Server configures this logger as it likes.
access_logger = logging.getLogger("keras_vit.serving.access")

DEFAULT_PORT = 8501
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGES = 64
# Pixels the images of one request may declare in all: decoding them is the
# work a request costs whatever the model, done in the model's thread (so
# every other request waits); 128 megapixels is ten 12-megapixel photos.
DEFAULT_MAX_REQUEST_PIXELS = 128_000_000


class _ClientGone(Exception):
    """The client closed its connection before its request ran."""


class _Refusal(asyncio.Protocol):
    """A connection past the server's `max_connections`: answered 503 with
    `Retry-After` and closed, without reaching aiohttp.

    The answer is written at once and the write side shut; what the client
    sends meanwhile is read and dropped for up to `linger` seconds, so the
    close does not reset the connection before the client has read the 503
    (a close with unread data sends RST, which may discard the answer).
    """

    def __init__(self, message, linger=2.0):
        self._body = json.dumps({"error": message}).encode()
        self._linger = linger
        self._transport = None
        self._timer = None

    def connection_made(self, transport):
        self._transport = transport
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(self._body), self._body)
        )
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self._linger, transport.close)

    def data_received(self, data):
        pass  # the request is not read: it is refused whatever it is

    def eof_received(self):
        self._transport.close()
        return False

    def connection_lost(self, exc):
        if self._timer is not None:
            self._timer.cancel()


class _Servable:
    """One loaded version: its signatures and their TF Serving metadata."""

    def __init__(self, version, path):
        import tensorflow as tf
        from google.protobuf import json_format
        from tensorflow.core.protobuf import saved_model_pb2

        from keras_vit.export import read_metadata

        self.version = version
        self.path = pathlib.Path(path)
        # Read before loading: files rewritten meanwhile are loaded again.
        self.identity = _identity(path)
        self.loaded = tf.saved_model.load(str(path))
        # How keras-vit export made it (precision, jit_compile, tta, ...);
        # {} for other SavedModels.
        self.keras_vit = read_metadata(path)
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

        from keras_vit import images as vit_images

        for name, values in tensors.items():
            if values.dtype != object:
                continue
            for i, value in enumerate(values):
                try:
                    # The export's own checks (size limit, formats) first:
                    # a bomb is never decoded here either.
                    vit_images.decode_image(value, (1, 1))
                except tf.errors.InvalidArgumentError as decode_error:
                    return f"Input '{name}'[{i}] is not a decodable image: {vit_images.tf_error_message(decode_error)}"
        return vit_images.tf_error_message(error)


_count_pixels = None


def _declared_pixels(values):
    """The pixel count each encoded image's header declares (NumPy int64;
    -1 for bytes that are not an image of a known format, 0 where the
    header cannot be read: the model's own checks answer for those)."""
    global _count_pixels
    import tensorflow as tf

    from keras_vit import images as vit_images

    if _count_pixels is None:
        _count_pixels = tf.function(vit_images.image_pixels, input_signature=[tf.TensorSpec([], tf.string)],
                                    autograph=False)
    counts = []
    for value in values:  # one at a time: a damaged header must not hide the others' counts
        try:
            counts.append(int(_count_pixels(tf.constant(value, tf.string))))
        except tf.errors.InvalidArgumentError:
            counts.append(0)
    return np.array(counts, np.int64)


# The longest wait before a version that failed to load is tried again.
_MAX_RETRY_SECONDS = 60.0


def _identity(path):
    """What changes when a version directory's SavedModel is written again:
    its `saved_model.pb`'s inode and modification time (None when absent)."""
    try:
        info = os.stat(pathlib.Path(path) / "saved_model.pb")
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


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
        request_timeout: seconds from the body's arrival to the answer;
            past it, HTTP 504 (TF Serving's deadline), and a call not yet
            started is dropped.
        idle_timeout: seconds a kept-alive connection may stay idle, or
            take to send its next request's headers.
        header_timeout: seconds a new connection has to send its first
            request's headers (a client that connects and stays silent, or
            trickles its headers a byte at a time, is disconnected).
        max_connections: open connections beyond this are answered 503
            (with `Retry-After`) and closed at once.
        max_request_pixels: a request whose images' headers declare more
            pixels in all gets HTTP 413, before anything is decoded.
    """

    def __init__(self, base_dir, model_name=None, host="127.0.0.1", port=DEFAULT_PORT,
                 poll_seconds=1.0, max_body_bytes=DEFAULT_MAX_BODY_BYTES,
                 max_images=DEFAULT_MAX_IMAGES, max_pending=32, read_timeout=30.0,
                 request_timeout=60.0, idle_timeout=30.0, header_timeout=10.0, max_connections=256,
                 max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
        self.base_dir = pathlib.Path(base_dir)
        if not self.base_dir.is_dir():
            raise FileNotFoundError(f"Model base directory not found: {self.base_dir}")
        self.model_name = model_name or self.base_dir.resolve().name
        for name, value, low in (("port", port, 0), ("max_body_bytes", max_body_bytes, 1),
                                 ("max_images", max_images, 1), ("max_pending", max_pending, 1),
                                 ("max_connections", max_connections, 1),
                                 ("max_request_pixels", max_request_pixels, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, received {name}={value!r}.")
        if port > 65535:
            raise ValueError(f"port must be in [0, 65535], received port={port}.")
        for name, value in (("poll_seconds", poll_seconds), ("read_timeout", read_timeout),
                            ("request_timeout", request_timeout), ("idle_timeout", idle_timeout),
                            ("header_timeout", header_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, received {name}={value!r}.")
        self.host, self.port = host, port
        self.poll_seconds = float(poll_seconds)
        self.max_body_bytes, self.max_images = max_body_bytes, max_images
        self.max_pending, self.read_timeout = max_pending, float(read_timeout)
        self.request_timeout, self.idle_timeout = float(request_timeout), float(idle_timeout)
        self.header_timeout, self.max_connections = float(header_timeout), max_connections
        self.max_request_pixels = max_request_pixels
        self._servable = None
        self._failed = {}  # version -> load error, not retried
        self._load_lock = threading.Lock()
        self._pending = 0
        # One model call at a time: TensorFlow already uses every core for
        # one call, and a queue keeps memory bounded. Made by start().
        self._executor = None
        self._loop = None
        self._thread = None
        self._runner = None
        self._listener = None
        self._accepting = 0  # connections made but not yet registered with aiohttp
        # Connections not yet past their first request's headers (aiohttp's
        # handlers take no weak references): each leaves at its deadline.
        self._awaiting_headers = set()
        self._refused_logged_at = 0.0
        self._started = threading.Event()
        self._start_error = None

    # -- versions ---------------------------------------------------------

    def refresh(self):
        """Serves the newest version that loads; returns the served version
        (None while there is none).

        As TF Serving's file-system source: a version that fails to load is
        retried with backoff (at once when its files change), a served
        version rewritten in place (`export --overwrite`) is loaded again,
        and when the served version is deleted the newest one below it that
        loads is served.
        """
        from keras_vit.export import list_versions

        with self._load_lock:
            served = self._servable
            if served is not None and _identity(served.path) != served.identity:
                reason = "deleted" if not (served.path / "saved_model.pb").is_file() else "rewritten"
                logger.warning("keras-vit serve: version %s was %s", served.version, reason)
                served = None
            now = time.monotonic()
            for version in reversed(list_versions(self.base_dir)):
                if served is not None and version <= served.version:
                    break
                path = self.base_dir / str(version)
                failed = self._failed.get(version)
                if failed and failed["identity"] == _identity(path) and now < failed["retry_at"]:
                    continue
                try:
                    candidate = _Servable(version, path)
                except Exception as error:  # a broken version must not take the server down
                    attempts = failed["attempts"] + 1 if failed else 1
                    self._failed[version] = {
                        "error": f"{type(error).__name__}: {error}", "identity": _identity(path),
                        "attempts": attempts,
                        "retry_at": now + min(_MAX_RETRY_SECONDS, self.poll_seconds * 2 ** attempts),
                    }
                    logger.error("keras-vit serve: cannot load version %s (attempt %d): %s", version, attempts,
                                 error)
                    continue
                self._failed.pop(version, None)
                served = candidate
                made = candidate.keras_vit
                logger.warning("keras-vit serve: serving %s version %s from %s%s", self.model_name, version,
                               candidate.path, f" ({made['precision']}, tta {made.get('tta', 'none')})"
                               if "precision" in made else "")
                break
            if served is None and self._servable is not None:
                logger.warning("keras-vit serve: no version of %s loads: serving none", self.model_name)
            self._servable = served
            return self.version

    def _get(self, name, version):
        if name != self.model_name:
            raise protocol.RequestError(404, f"Servable not found for request: Latest({name})")
        servable = self._servable
        if servable is None:
            raise protocol.RequestError(404, f"Could not find any versions of model {name}")
        if version is not None and int(version) != servable.version:
            raise protocol.RequestError(
                404, f"Servable not found for request: Specific({name}, {version}); "
                     f"this server serves version {servable.version} only"
            )
        return servable

    # -- handlers ---------------------------------------------------------

    async def _status(self, request):
        version = request.match_info.get("version")
        if version is not None and request.match_info["name"] == self.model_name and int(version) in self._failed:
            return self._json({"model_version_status": [self._failed_status(int(version))]})
        servable = self._get(request.match_info["name"], version)
        statuses = [{
            "version": str(servable.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }]
        if version is None:
            # As TF Serving: the versions that failed to load are listed too
            # (state END, with their error), newest first.
            statuses += [self._failed_status(v) for v in sorted(self._failed, reverse=True)]
        return self._json({"model_version_status": statuses})

    def _failed_status(self, version):
        return {"version": str(version), "state": "END",
                "status": {"error_code": "UNKNOWN", "error_message": self._failed[version]["error"]}}

    async def _metadata(self, request):
        servable = self._get(request.match_info["name"], request.match_info.get("version"))
        return self._json({
            "model_spec": {"name": self.model_name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
            # Beyond TF Serving's answer, which clients ignore: how keras-vit
            # export made the version (its precision, TTA, top-k, ...).
            **({"keras_vit": servable.keras_vit} if servable.keras_vit else {}),
        })

    async def _predict(self, request):
        servable = self._get(request.match_info["name"], request.match_info.get("version"))
        # The body is read (under its own time and size limits) before a
        # pending slot is taken: slots count work for the model, so clients
        # that stall their uploads cannot take them from everyone else.
        try:
            body = await asyncio.wait_for(request.read(), self.read_timeout)
        except asyncio.TimeoutError:
            raise protocol.RequestError(408, f"Request body not received within {self.read_timeout:g} s") \
                from None
        loop = asyncio.get_running_loop()
        # Parsed, decoded and counted in a thread: a large legal body must
        # not stall the event loop (and every other connection) meanwhile.
        signature_name, tensors, columnar = await loop.run_in_executor(None, self._parse, servable, body)
        if self._pending >= self.max_pending:
            raise protocol.RequestError(503, f"Server busy: {self._pending} requests pending; retry later")
        self._pending += 1
        transport = request.transport

        def run():
            # Queued work for a client that has gone is dropped unrun.
            if transport is None or transport.is_closing():
                raise _ClientGone()
            return servable.run(signature_name, tensors)

        try:
            try:
                # TF Serving answers 504 past its deadline; a call not yet
                # started is cancelled then (one running cannot be stopped).
                outputs = await asyncio.wait_for(loop.run_in_executor(self._executor, run),
                                                 self.request_timeout)
            except asyncio.TimeoutError:
                raise protocol.RequestError(
                    504, f"Deadline exceeded: no answer within {self.request_timeout:g} s") from None
            except _ClientGone:
                raise protocol.RequestError(499, "Client closed the request") from None
            except Exception as error:
                import tensorflow as tf

                if is_out_of_memory(error):
                    # As TF Serving: 429, the client may retry with fewer images.
                    message = getattr(error, "message", None) or str(error) or type(error).__name__
                    raise protocol.RequestError(
                        429, "Resource exhausted: " + " ".join(message.split())[:500]) from None
                if isinstance(error, (tf.errors.InvalidArgumentError, ValueError, TypeError)):
                    message = getattr(error, "message", None) or str(error)
                    raise protocol.RequestError(400, " ".join(message.split())[:2000])
                raise
        finally:
            self._pending -= 1
        if columnar:
            result = {k: protocol.to_json(v) for k, v in outputs.items()}
            return self._json({"outputs": next(iter(result.values())) if len(result) == 1 else result})
        batch = len(next(iter(outputs.values())))
        names = sorted(outputs)
        if len(names) == 1:
            predictions = protocol.to_json(outputs[names[0]])
        else:
            columns = {k: protocol.to_json(outputs[k]) for k in names}
            predictions = [{k: columns[k][i] for k in names} for i in range(batch)]
        return self._json({"predictions": predictions})

    def _parse(self, servable, body):
        """The request's (signature name, tensors, columnar), after its
        images' declared pixels are counted against `max_request_pixels`."""
        signature_name, tensors, columnar = protocol.parse_request(servable, body, self.max_images)
        for name, values in tensors.items():
            if values.dtype != object:
                continue
            declared = _declared_pixels(values)
            total = int(declared[declared > 0].sum())
            if total > self.max_request_pixels:
                images = f"The image of input '{name}' declares" if len(values) == 1 else \
                    f"The {len(values)} images of input '{name}' declare"
                raise protocol.RequestError(
                    413, f"{images} {total:,} pixels in all; the limit is {self.max_request_pixels:,} per request "
                         f"(max_request_pixels)")
        return signature_name, tensors, columnar

    @staticmethod
    def _json(payload, status=200):
        web = _aiohttp_web()

        return web.json_response(payload, status=status, dumps=lambda o: json.dumps(o, allow_nan=True))

    def _app(self):
        web = _aiohttp_web()

        @web.middleware
        async def errors(request, handler):
            self._awaiting_headers.discard(request.protocol)  # its headers arrived in time
            try:
                return await handler(request)
            except protocol.RequestError as error:
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
                response = self._json({"error": message}, status=error.status)
                if "Allow" in error.headers:  # 405: the methods the path takes
                    response.headers["Allow"] = error.headers["Allow"]
                return response
            except Exception:  # never take the server down, nor show its internals
                incident = uuid.uuid4().hex[:12]
                logger.exception("keras-vit serve: internal error %s in %s", incident, request.path)
                return self._json({"error": f"Internal error (logged by the server as {incident})"}, status=500)

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

        self._runner = web.AppRunner(self._app(), access_log=access_logger, keepalive_timeout=self.idle_timeout)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        # aiohttp's runner.server is the protocol factory (its low-level
        # server API); listening with our own factory around it adds what
        # aiohttp lacks: a connection cap and, before aiohttp 3.14, any
        # deadline for a new connection's first request.
        self._listener = await loop.create_server(self._connection, self.host, self.port)
        self.port = self._listener.sockets[0].getsockname()[1]
        self._poller = loop.create_task(self._poll())

    def _connection(self):
        """A new connection's protocol: aiohttp's request handler, or a 503
        refusal past `max_connections`."""
        try:
            return self._protocol()
        except Exception:  # asyncio drops the connection silently (outside debug mode): say why
            logger.exception("keras-vit serve: cannot accept a connection")
            raise

    def _protocol(self):
        loop = asyncio.get_running_loop()
        aiohttp_server = self._runner.server
        # A handler joins aiohttp_server.connections in its connection_made,
        # which asyncio runs on the loop's next pass, right after the
        # decrement scheduled here: so the sum counts each connection once,
        # including those accepted in one burst.
        open_now = len(aiohttp_server.connections) + self._accepting
        if open_now >= self.max_connections:
            now = time.monotonic()
            if now - self._refused_logged_at > 10:
                self._refused_logged_at = now
                logger.warning("keras-vit serve: %d connections open (max_connections): refusing more with 503",
                               open_now)
            return _Refusal(f"Server busy: {open_now} connections open, the limit is {self.max_connections}; "
                            f"retry later")
        self._accepting += 1
        loop.call_soon(self._accepted)
        handler = aiohttp_server()
        self._awaiting_headers.add(handler)
        loop.call_later(self.header_timeout, self._first_request_deadline, handler)
        return handler

    def _accepted(self):
        self._accepting -= 1

    def _first_request_deadline(self, handler):
        if handler not in self._awaiting_headers:
            return
        self._awaiting_headers.discard(handler)
        aiohttp_server = self._runner.server if self._runner is not None else None
        if aiohttp_server is None or handler not in aiohttp_server.connections:  # gone, or the server stopped
            return
        access_logger.info("%s closed: no request headers within %g s (header_timeout)",
                           (handler.transport.get_extra_info("peername") if handler.transport else None),
                           self.header_timeout)
        handler.force_close()

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self):
        """Loads the newest version and serves in a background thread;
        returns once the port is open. A stopped server starts again."""
        if self._loop is not None:
            return self
        self.refresh()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="keras-vit-model")
        self._started.clear()
        self._start_error = None
        # A stopped loop may have left these behind.
        self._accepting = 0
        self._awaiting_headers.clear()

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

    def stop(self, drain_seconds=60.0):
        """Stops serving: no new connections, the requests in flight are
        answered (for up to `drain_seconds`), then the background thread
        ends. `start()` serves again."""
        if self._loop is None:
            return

        async def shutdown():
            self._poller.cancel()
            self._listener.close()  # no new connections; those open are drained below
            # aiohttp's cleanup closes the listening socket, then waits for
            # the handlers still running (up to its shutdown_timeout).
            self._runner._shutdown_timeout = drain_seconds
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=drain_seconds + 30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._executor.shutdown(wait=True)
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
        """Serves until interrupted (Ctrl-C) or sent SIGTERM (what `docker
        stop` and Kubernetes send), starting first if `start()` was not
        called; then drains the requests in flight and returns."""
        import signal

        if self._loop is None:
            self.start()
        stopping = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        try:
            while not stopping.wait(0.5):
                pass
            logger.warning("keras-vit serve: SIGTERM: draining the requests in flight, then stopping")
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()
