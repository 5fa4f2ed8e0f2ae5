"""Tests of the local TF-Serving-compatible server and the REST client:
real JPEG/PNG bytes through the client and raw HTTP, answers equal to
`model.predict`, every bad request answered 4xx while the server keeps
serving, new versions picked up without a restart, `keras-vit serve` and
`keras-vit predict --server`."""

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import skimage.data
from PIL import Image

import keras_vit
from keras_vit import export, serving
from keras_vit import images as vit_images
from tests.conftest import randomize

PYTHON = sys.executable
NAMES = ["cat", "dog", "bird", "fish", "frog", "horse"]
SIZE = (32, 32)


def _classifier(seed):
    return randomize(keras_vit.ViT("Test/8", input_shape=SIZE + (3,), classes=len(NAMES)), seed=seed)


def _jpeg(array, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serving")
    model = _classifier(seed=1)
    base = directory / "vit"
    export.export_saved_model(model, base, class_names=NAMES)
    files = {"astronaut.jpg": _jpeg(skimage.data.astronaut()), "chelsea.png": _png(skimage.data.chelsea()),
             "camera.png": _png(skimage.data.camera())}
    paths = []
    for name, content in files.items():
        (directory / name).write_bytes(content)
        paths.append(directory / name)
    expected = model.predict(vit_images.load_images(paths, SIZE), verbose=0)
    assert expected.std(axis=-1).min() > 1e-3
    server = serving.Server(base, port=0, poll_seconds=0.2, max_body_bytes=2 * 1024 * 1024, max_images=8)
    server.start()
    yield dict(server=server, model=model, base=base, paths=paths, expected=expected, directory=directory)
    server.stop()


def _url(served, suffix=""):
    return f"{served['server'].url}/v1/models/vit{suffix}"


def _check_top_k(prediction, probabilities):
    order = np.argsort(-probabilities)[:5]
    assert prediction.indices == order.tolist()
    assert prediction.labels == [NAMES[i] for i in order]
    np.testing.assert_allclose(prediction.scores, probabilities[order], atol=1e-5)
    np.testing.assert_allclose(prediction.probabilities, probabilities, atol=1e-5)


def test_client_predict_paths_bytes_arrays_and_pil(served):
    with serving.Client(served["server"].url, "vit") as client:
        predictions = client.predict([str(p) for p in served["paths"]])
        assert len(predictions) == 3
        for prediction, expected in zip(predictions, served["expected"]):
            _check_top_k(prediction, expected)
        # Bytes, a NumPy array (uint8 and float in [0, 255], grayscale) and a
        # PIL image, in one call, in batches of two requests.
        client.batch_size = 2
        astronaut = Image.open(served["paths"][0])
        array = np.asarray(astronaut)
        gray = skimage.data.camera()
        mixed = client.predict([served["paths"][1].read_bytes(), array, array.astype("float32"), astronaut, gray])
    inputs = vit_images.load_images([served["paths"][1]], SIZE)
    arrays = np.stack([array, array, array]).astype("float32")
    import tensorflow as tf

    resized = tf.clip_by_value(tf.image.resize(arrays, SIZE, method="bilinear"), 0, 255).numpy()
    gray_rgb = tf.image.resize(np.repeat(gray[None, ..., None], 3, -1).astype("float32"), SIZE).numpy()
    expected = served["model"].predict(np.concatenate([inputs, resized, gray_rgb]), verbose=0)
    for prediction, probabilities in zip(mixed, expected):
        _check_top_k(prediction, probabilities)


def test_client_embeddings(served):
    import keras

    model = served["model"]
    features = keras.Model(model.inputs, model.get_layer("head").input)
    with serving.Client(served["server"].url, "vit") as client:
        got = client.embeddings([str(p) for p in served["paths"]])
    np.testing.assert_allclose(got, features.predict(vit_images.load_images(served["paths"], SIZE), verbose=0),
                               atol=1e-5)


def test_raw_http_row_and_columnar(served):
    images = [p.read_bytes() for p in served["paths"]]
    expected = served["expected"]
    row = requests.post(_url(served, ":predict"), json={"instances": [_b64(b) for b in images]}, timeout=60)
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, atol=1e-5)
    assert [p["top_k_labels"][0] for p in predictions] == [NAMES[i] for i in expected.argmax(-1)]
    named = requests.post(_url(served, "/versions/1:predict"),
                          json={"instances": [{"image_bytes": _b64(b)} for b in images]}, timeout=60)
    assert named.json() == row.json()
    columnar = requests.post(_url(served, ":predict"),
                             json={"inputs": {"image_bytes": [_b64(b) for b in images]}}, timeout=60)
    outputs = columnar.json()["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert outputs["top_k_indices"] == [p["top_k_indices"] for p in predictions]
    pixels = vit_images.load_images(served["paths"][:1], SIZE)
    floats = requests.post(_url(served, ":predict"),
                           json={"signature_name": "predict_images", "instances": pixels.tolist()}, timeout=60)
    np.testing.assert_allclose(floats.json()["predictions"][0]["probabilities"], expected[0], atol=1e-5)
    embeddings = requests.post(_url(served, ":predict"),
                               json={"signature_name": "embeddings", "inputs": [_b64(images[0])]}, timeout=60)
    assert np.asarray(embeddings.json()["outputs"]).shape == (1, 16)


def test_status_and_metadata(served):
    status = requests.get(_url(served), timeout=10).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    metadata = requests.get(_url(served, "/metadata"), timeout=10).json()
    assert metadata["model_spec"] == {"name": "vit", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["embeddings", "predict_images", "serving_default"]
    default = signatures["serving_default"]
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["outputs"]["top_k_indices"]["dtype"] == "DT_INT32"
    assert [d["size"] for d in signatures["predict_images"]["inputs"]["images"]["tensor_shape"]["dim"]] == [
        "-1", "32", "32", "3"]
    assert default["method_name"] == "tensorflow/serving/predict"
    # How the version was exported: its precision and the rest of its metadata.
    assert metadata["keras_vit"] == export.read_metadata(served["base"] / "1")
    assert metadata["keras_vit"]["precision"] == "float32"


BAD_REQUESTS = [
    (b"{not json", 400, "JSON Parse error"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"instances": [{"b64": "%%%not base64"}]}), 400, "bad base64 data"),
    (json.dumps({"instances": [_b64(b"GIF89a but not really")]}), 400, r"'image_bytes'\[0\] is not a decodable image"),
    (json.dumps({"instances": [{"b64": ""}]}), 400, "not a decodable image"),
    (json.dumps({"inputs": {"pixels": [1]}}), 400, r"expected \['image_bytes'\], received \['pixels'\]"),
    (json.dumps({"signature_name": "classify", "instances": [1]}), 400, '"classify" not found'),
    (json.dumps({"instances": []}), 400, "non-empty list"),
    (json.dumps({"nothing": 1}), 400, "Missing 'inputs' or 'instances'"),
    (json.dumps({"instances": [1], "inputs": [1]}), 400, "exactly one is required"),
    (json.dumps({"instances": [7]}), 400, r"expected a string or \{\"b64\""),
    (json.dumps({"signature_name": "predict_images", "instances": [[[1, 2, 3]]]}), 400,
     r"has shape \[1, 1, 3\]; the signature expects \[None, 32, 32, 3\]"),
    (json.dumps({"signature_name": "predict_images", "instances": [["a"]]}), 400,
     "pixel values must be numbers, received str32 values"),
    (json.dumps({"instances": [_b64(b"x")] * 9}), 413, "9 images in one request; the limit is 8"),
    (b"x" * (3 * 1024 * 1024), 413, "larger than the limit of 2097152 bytes"),
]


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_requests_get_an_error_and_the_server_keeps_serving(served, body, status, message):
    response = requests.post(_url(served, ":predict"), data=body, timeout=60)
    assert response.status_code == status, response.text
    import re

    assert re.search(message, response.json()["error"]), response.json()
    good = requests.post(_url(served, ":predict"), json={"instances": [_b64(served["paths"][0].read_bytes())]},
                         timeout=60)
    assert good.status_code == 200
    np.testing.assert_allclose(good.json()["predictions"][0]["probabilities"], served["expected"][0], atol=1e-5)


def test_unknown_model_version_and_path(served):
    for url, message in ((f"{served['server'].url}/v1/models/other", "Servable not found for request: Latest(other)"),
                         (_url(served, "/versions/5"), "Specific(vit, 5)"),
                         (f"{served['server'].url}/v2/nothing", "Not Found")):
        response = requests.get(url, timeout=10)
        assert response.status_code == 404 and message in response.json()["error"]


def test_client_surfaces_server_errors(served):
    with serving.Client(served["server"].url, "vit") as client:
        with pytest.raises(serving.ServingError, match=r"HTTP 400: Input 'image_bytes'\[0\] is not a decodable"):
            client.predict([b"plain text"])
        with pytest.raises(serving.ServingError, match="HTTP 404: .*Latest"):
            serving.Client(served["server"].url, "nope").status()
        with pytest.raises(FileNotFoundError, match="Image not found: missing.jpg"):
            client.predict(["missing.jpg"])
        with pytest.raises(ValueError, match=r"pixel values must be in \[0, 255\], received values in \[0.0, 300.0\]"):
            client.predict([np.full((4, 4, 3), 300.0)])
        with pytest.raises(ValueError, match=r"received shape \(4, 4, 2\)"):
            client.predict([np.zeros((4, 4, 2), np.uint8)])
        with pytest.raises(TypeError, match="received dict"):
            client.predict([{}])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_connection_errors_then_fails_clearly():
    port = _free_port()
    client = serving.Client(f"http://127.0.0.1:{port}", "vit", retries=2, timeout=5)
    started = time.time()
    with pytest.raises(serving.ServingError, match=f"GET http://127.0.0.1:{port}/v1/models/vit failed: .*retries"):
        client.status()
    assert time.time() - started < 10


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(url="localhost:8501"), "url must start with http"), (dict(model_name="a/b"), "model_name must"),
     (dict(batch_size=0), "batch_size must be a positive integer, received batch_size=0"),
     (dict(retries=-1), "retries must be"), (dict(timeout=0), "timeout must be a positive"),
     (dict(version=0), "version must be a positive integer")],
)
def test_client_bad_arguments(kwargs, message):
    arguments = dict(url="http://localhost:8501", model_name="vit") | kwargs
    with pytest.raises(ValueError, match=message):
        serving.Client(**arguments)


def test_server_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model base directory not found"):
        serving.Server(tmp_path / "missing")
    with pytest.raises(ValueError, match="max_images must be an integer >= 1, received max_images=0"):
        serving.Server(tmp_path, max_images=0)
    with pytest.raises(ValueError, match=r"port must be in \[0, 65535\], received port=70000"):
        serving.Server(tmp_path, port=70000)


def test_new_version_is_served_without_restart(tmp_path, caplog):
    base = tmp_path / "vit"
    first, second = _classifier(seed=1), keras_vit.with_precision(_classifier(seed=2), "int8")
    export.export_saved_model(first, base, class_names=NAMES)
    image = _png(skimage.data.chelsea())
    with serving.Server(base, port=0, poll_seconds=0.2) as server, serving.Client(server.url, "vit") as client:
        before = client.predict([image])[0]
        # A failed or half-written export in the base directory is ignored.
        (base / "7").mkdir()
        (base / ".tmp-keras-vit-abc").mkdir()
        export.export_saved_model(second, base, class_names=[n.upper() for n in NAMES])
        deadline = time.time() + 60
        while client.status()["model_version_status"][0]["version"] != "8" and time.time() < deadline:
            time.sleep(0.2)
        assert client.status()["model_version_status"][0]["version"] == "8"
        after = client.predict([image])[0]
    assert before.labels[0].islower() and after.labels[0].isupper()
    assert before.probabilities != after.probabilities
    # The log names each version's precision, from the export's metadata.
    served = [r.getMessage() for r in caplog.records if "keras-vit serve: serving" in r.getMessage()]
    assert served == [f"keras-vit serve: serving vit version {v} from {base / str(v)} ({p}, tta none)"
                      for v, p in ((1, "float32"), (8, "int8"))], served


def test_broken_version_keeps_the_served_one(tmp_path):
    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"\x00corrupt")
    with serving.Server(base, port=0, poll_seconds=0.2) as server, serving.Client(server.url, "vit") as client:
        assert client.status()["model_version_status"][0]["version"] == "1"
        assert client.predict([_png(skimage.data.chelsea())])[0].labels[0] in NAMES


def _wait_for(url, process, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read())
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.exceptions.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_cli_serve_and_predict_with_server(served):
    port = _free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "keras_vit", "serve", str(served["base"]), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models/vit", process)
        result = subprocess.run(
            [PYTHON, "-m", "keras_vit", "predict", "--server", f"http://127.0.0.1:{port}", "--model-name", "vit",
             "--top-k", "2"] + [str(p) for p in served["paths"]],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        for line, path, probabilities in zip(lines, served["paths"], served["expected"]):
            order = np.argsort(-probabilities)[:2]
            assert line == f"{path}: " + ", ".join(f"{NAMES[i]} {probabilities[i]:.4f}" for i in order)
        bad = subprocess.run([PYTHON, "-m", "keras_vit", "predict", "--server", f"http://127.0.0.1:{port}",
                              "x.jpg"], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "--server needs --model-name" in bad.stderr
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    assert f"on http://127.0.0.1:{port}/v1/models/vit" in output and "use TF Serving in production" in output


def test_stop_then_start_serves_again(tmp_path):
    """Issue 30: after stop() then start() every predict answered 500 (the
    model's executor was shut down and never made again)."""
    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    image = _png(skimage.data.chelsea())
    server = serving.Server(base, port=0, poll_seconds=0.2)
    for _ in range(2):
        server.start()
        with serving.Client(server.url, "vit") as client:
            assert client.predict([image])[0].labels[0] in NAMES
        server.stop()


def test_sigterm_drains_the_request_in_flight_and_exits_0(tmp_path):
    """`keras-vit serve` answers the request it is computing when SIGTERM
    comes (docker stop, Kubernetes), logs each request, then exits 0."""
    import signal
    import threading

    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "keras_vit.cli", "serve", str(base), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        url = f"http://127.0.0.1:{port}/v1/models/vit"
        _wait_for(url, process)
        body = json.dumps({"instances": [{"b64": base64.b64encode(_png(skimage.data.chelsea())).decode()}] * 8})
        answers = []
        sender = threading.Thread(target=lambda: answers.append(requests.post(url + ":predict", data=body,
                                                                              timeout=120)))
        sender.start()
        time.sleep(0.05)  # the request is in flight
        process.send_signal(signal.SIGTERM)
        sender.join(timeout=120)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert answers and answers[0].status_code == 200, answers and answers[0].text[:300]
    assert len(answers[0].json()["predictions"]) == 8
    assert "SIGTERM: draining the requests in flight" in output
    assert re.search(r'"POST /v1/models/vit:predict HTTP/1\.1" 200', output), output[-2000:]


def test_versions_are_followed_as_tf_serving_does(tmp_path):
    """Issue 30: a version that failed to load was never retried, deleting
    the served version never fell back to the one below, and a served
    version rewritten by `export --overwrite` was never reloaded."""
    import shutil

    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"\x00corrupt")
    server = serving.Server(base, port=0, poll_seconds=0.2)
    assert server.refresh() == 1
    assert server._failed[2]["attempts"] == 1
    # Fixed in place (as a rerun of the export would): loaded at once.
    shutil.rmtree(base / "2")
    export.export_saved_model(_classifier(seed=2), base, class_names=NAMES, version=2)
    assert server.refresh() == 2 and 2 not in server._failed
    # The served version rewritten: loaded again, with its new labels.
    export.export_saved_model(_classifier(seed=2), base, class_names=[n.upper() for n in NAMES], version=2,
                              overwrite=True)
    assert server.refresh() == 2
    assert b"HORSE" in (base / "2" / "saved_model.pb").read_bytes()
    image = np.asarray(vit_images.load_images([_png_path(tmp_path)], SIZE))
    outputs = server._servable.run("predict_images", {"images": image})
    assert outputs["top_k_labels"][0][0].decode().isupper()
    # The served version deleted: the one below is served.
    shutil.rmtree(base / "2")
    assert server.refresh() == 1
    shutil.rmtree(base / "1")
    assert server.refresh() is None


def _png_path(directory):
    path = directory / "chelsea.png"
    path.write_bytes(_png(skimage.data.chelsea()))
    return path


def test_deadline_resource_exhaustion_and_idle_connections(tmp_path, monkeypatch):
    """Issue 30: TF Serving answers 504 past its deadline and 429 when out
    of memory (both were 500 or no answer), and idle keep-alive connections
    are closed (aiohttp's default keeps them about an hour)."""
    import tensorflow as tf

    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    body = json.dumps({"instances": [{"b64": base64.b64encode(_png(skimage.data.chelsea())).decode()}]})
    with serving.Server(base, port=0, request_timeout=0.5, idle_timeout=0.5) as server:
        url = f"{server.url}/v1/models/vit:predict"
        run = type(server._servable).run

        finished = threading.Event()

        def slow(self, *args):
            try:
                time.sleep(1.5)
                return run(self, *args)
            finally:
                finished.set()

        monkeypatch.setattr(type(server._servable), "run", slow)
        response = requests.post(url, data=body, timeout=60)
        assert response.status_code == 504
        assert response.json() == {"error": "Deadline exceeded: no answer within 0.5 s"}

        def exhausted(self, *args):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[64,197,3072]")

        monkeypatch.setattr(type(server._servable), "run", exhausted)
        # The slow call above has finished (a fixed sleep was not enough on a
        # loaded 2-core CI machine: the next request queued behind it).
        assert finished.wait(timeout=60)
        response = requests.post(url, data=body, timeout=60)
        assert response.status_code == 429
        assert response.json()["error"].startswith("Resource exhausted: OOM when allocating tensor")
        monkeypatch.setattr(type(server._servable), "run", run)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        idle.sendall(b"GET /v1/models/vit HTTP/1.1\r\nHost: x\r\n\r\n")
        first = idle.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        idle.settimeout(10)
        started = time.time()
        while idle.recv(65536):  # the rest of the answer, then the server's close
            pass
        assert time.time() - started < 5
        idle.close()


def _closed_within(sock, seconds, trickle=b""):
    """Seconds until the server closes `sock` (sending `trickle` a byte at a
    time meanwhile), or None if it is still open after `seconds`."""
    started = time.time()
    sock.settimeout(0.1)
    for i in range(10**6):
        if time.time() - started > seconds:
            return None
        try:
            if i < len(trickle):
                sock.sendall(trickle[i:i + 1])
            if sock.recv(65536) == b"":
                return time.time() - started
        except socket.timeout:
            pass
        except OSError:  # reset by the server
            return time.time() - started


def test_header_timeout_and_connection_cap(tmp_path):
    """Issue 30: a connection that sends no request, or trickles its headers,
    is closed after `header_timeout` (aiohttp before 3.14 kept it until the
    client left); connections beyond `max_connections` are answered 503 with
    Retry-After, and a slot freed is usable again."""
    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    headers = b"GET /v1/models/vit HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: 1\r\n" * 200 + b"\r\n"
    with serving.Server(base, port=0, idle_timeout=1.0) as server:
        # A kept-alive connection trickling its next request: closed after
        # idle_timeout (aiohttp's keep-alive timer).
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /v1/models/vit HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            closed = _closed_within(sock, 8, headers)
            assert closed is not None and closed < 4, closed
    with serving.Server(base, port=0, header_timeout=1.0, idle_timeout=60, max_connections=3) as server:
        address = ("127.0.0.1", server.port)
        for trickle in (b"", headers):
            with socket.create_connection(address, timeout=10) as sock:
                closed = _closed_within(sock, 8, trickle)
                assert closed is not None and 0.9 < closed < 4, (trickle[:10], closed)
        # Three silent connections fill the cap: the fourth is refused.
        held = [socket.create_connection(address, timeout=10) for _ in range(3)]
        time.sleep(0.2)
        refused = requests.get(f"{server.url}/v1/models/vit", timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json() == {"error": "Server busy: 3 connections open, the limit is 3; retry later"}
        held.pop().close()
        time.sleep(0.2)
        answered = requests.get(f"{server.url}/v1/models/vit", timeout=10)
        assert answered.status_code == 200, answered.text
        for sock in held:  # past the header timeout the server closes them
            assert _closed_within(sock, 8) is not None
        # A burst of 20 at once: never more than 3 reach aiohttp.
        burst = [socket.create_connection(address, timeout=10) for _ in range(20)]
        for sock in burst:
            sock.sendall(b"GET /v1/models/vit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [b"".join(iter(lambda s=sock: s.recv(65536), b"")).split(b"\r\n", 1)[0] for sock in burst]
        for sock in burst:
            sock.close()
        assert sorted(set(answers)) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"]
        assert answers.count(b"HTTP/1.1 200 OK") <= 3, answers


def test_request_pixel_budget_is_checked_from_headers_before_decoding(tmp_path, monkeypatch):
    """Issue 30: the images of a request are decoded in the model's thread,
    so one request of many large images (each under the per-image limit)
    held every other client for as long as decoding took. Their declared
    pixels are now summed from the headers first: past `max_request_pixels`,
    413, and nothing is decoded."""
    base = tmp_path / "vit"
    export.export_saved_model(_classifier(seed=1), base, class_names=NAMES)
    large = _b64(_png(np.zeros((700, 800, 3), np.uint8)))  # 560,000 pixels
    with serving.Server(base, port=0, max_request_pixels=1_000_000) as server:
        calls = []
        run = type(server._servable).run
        monkeypatch.setattr(type(server._servable), "run", lambda self, *a: calls.append(1) or run(self, *a))
        url = f"{server.url}/v1/models/vit:predict"
        response = requests.post(url, json={"instances": [large, large]}, timeout=60)
        assert response.status_code == 413
        assert response.json() == {"error": "The 2 images of input 'image_bytes' declare 1,120,000 pixels in all; "
                                            "the limit is 1,000,000 per request (max_request_pixels)"}
        assert calls == []  # refused before the model's thread
        # Within the budget, and with a damaged image beside it (counted as
        # nothing; the model's decoding refuses it by position).
        assert requests.post(url, json={"instances": [large]}, timeout=60).status_code == 200
        damaged = requests.post(url, json={"instances": [large, _b64(b"\xff\xd8\xff" + bytes(40))]}, timeout=60)
        assert damaged.status_code == 400 and "'image_bytes'[1]" in damaged.json()["error"], damaged.text
    with pytest.raises(ValueError, match="max_request_pixels must be an integer >= 1, received max_request_pixels=0"):
        serving.Server(base, max_request_pixels=0)
