"""The local server under abuse (issue 8), as a real `keras-vit serve`
process on 127.0.0.1: a burst of 200 concurrent requests, slow clients, and
a soak of a few thousand mixed good and bad requests with the server's
memory measured before and after. The figures are printed (`pytest -n 0 -s`)
and recorded in SECURITY.md."""

import base64
import collections
import concurrent.futures
import io
import json
import os
import random
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
from keras_vit import export
from keras_vit import images as vit_images
from tests.conftest import randomize

NAMES = ["cat", "dog", "bird", "fish", "frog", "horse"]
SIZE = (32, 32)
MAX_PENDING = 16
READ_TIMEOUT = 3.0
HEADER_TIMEOUT = 2.0
SOAK_REQUESTS = 3000
RSS_GROWTH_BOUND_MB = 60


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def _pixels(value):
    return [[[value] * 3] * SIZE[1]] * SIZE[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("abuse")
    model = randomize(keras_vit.ViT("Test/8", input_shape=SIZE + (3,), classes=len(NAMES)), seed=4)
    base = directory / "vit"
    export.export_saved_model(model, base, class_names=NAMES)
    sources = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
               np.stack([skimage.data.camera()] * 3, axis=-1)]
    images = []
    for i, array in enumerate(sources):
        for fmt in ("JPEG", "PNG"):
            path = directory / f"image{i}.{fmt.lower()}"
            path.write_bytes(_encode(array[::2, ::2], fmt))
            images.append(path)
    expected = model.predict(vit_images.load_images(images, SIZE), verbose=0)
    port = _free_port()
    # The server's output (an access-log line per request) goes to a file:
    # a pipe nobody reads would fill and block the server.
    log = open(directory / "serve.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_vit.cli", "serve", str(base), "--port", str(port),
         "--max-pending", str(MAX_PENDING), "--read-timeout", str(READ_TIMEOUT), "--max-body-mb", "2",
         "--max-images", "8", "--header-timeout", str(HEADER_TIMEOUT)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    url = f"http://127.0.0.1:{port}/v1/models/vit"
    deadline = time.time() + 120
    while True:
        assert process.poll() is None, (directory / "serve.log").read_text()[-3000:]
        try:
            if requests.get(url, timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.time() < deadline, "keras-vit serve did not start"
        time.sleep(0.2)
    yield dict(url=url, port=port, process=process, images=images, expected=expected,
               bodies=[json.dumps({"instances": [_b64(p.read_bytes())]}) for p in images])
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _good(server, i, session=requests):
    k = i % len(server["images"])
    response = session.post(server["url"] + ":predict", data=server["bodies"][k], timeout=120)
    return k, response


def _assert_good_answer(server, k, response):
    assert response.status_code == 200, response.text[:500]
    probabilities = response.json()["predictions"][0]["probabilities"]
    np.testing.assert_allclose(probabilities, server["expected"][k], atol=1e-5)


def test_binds_to_localhost_only(server):
    """The kernel's table of listening TCP sockets: the server's port is
    bound to 127.0.0.1 only (not 0.0.0.0 or another interface)."""
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.split(":")
                if state == "0A" and int(port, 16) == server["port"]:
                    listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex


def test_burst_of_200_concurrent_requests(server):
    """Every request of the burst gets an answer: the model's (equal to
    model.predict) or 503 with Retry-After; none is dropped, and the server
    answers normally afterwards."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(lambda i: _good(server, i), range(200)))
    codes = [response.status_code for _, response in results]
    assert set(codes) <= {200, 503}, codes
    for k, response in results:
        if response.status_code == 200:
            _assert_good_answer(server, k, response)
        else:
            assert response.headers["Retry-After"] and "Server busy" in response.json()["error"]
    assert codes.count(200) >= MAX_PENDING
    print(f"\nburst: 200 concurrent requests, {codes.count(200)} answered 200 and "
          f"{codes.count(503)} answered 503 (max pending {MAX_PENDING}); none dropped")
    _assert_good_answer(server, *_good(server, 0))
    assert server["process"].poll() is None


def _slow_client(port, declared=10_000):
    """Sends the headers and 10 bytes of a declared 10 KB body, then stalls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall((f"POST /v1/models/vit:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {declared}\r\n\r\n").encode() + b'{"instance')
    return s


def test_slow_clients_do_not_block_others(server):
    slow = [_slow_client(server["port"]) for _ in range(MAX_PENDING // 2)]
    try:
        started = time.time()
        for i in range(10):
            _assert_good_answer(server, *_good(server, i))
        elapsed = time.time() - started
        assert elapsed < READ_TIMEOUT, elapsed  # answered while the slow clients still hold on
        answers = []
        for s in slow:
            s.settimeout(READ_TIMEOUT + 30)
            answers.append(s.recv(4096).decode(errors="replace"))
        for answer in answers:
            assert answer.startswith("HTTP/1.1 408"), answer[:200]
            assert f"Request body not received within {READ_TIMEOUT:g} s" in answer
    finally:
        for s in slow:
            s.close()
    print(f"\nslow clients: {len(slow)} stalled uploads; 10 good requests answered in {elapsed:.2f} s; "
          f"each stalled upload got 408 after {READ_TIMEOUT:g} s")


def _bad_requests(server):
    png = server["images"][1].read_bytes()
    return [
        (b"{not json", 400, "JSON Parse error"),
        (json.dumps({"instances": [{"b64": "%%%"}]}), 400, "bad base64"),
        (json.dumps({"instances": [_b64(png[: len(png) // 2])]}), 400, "not a decodable image"),
        (json.dumps({"instances": [_b64(b"")]}), 400, "empty image"),
        (json.dumps({"instances": [_b64(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes.fromhex("0000c3500000c350") + bytes(13))]}),
         413, r"The image of input 'image_bytes' declares 2,500,000,000 pixels in all"),
        (json.dumps({"instances": [_b64(png)] * 9}), 413, "the limit is 8"),
        (json.dumps({"inputs": {"pixels": [1]}}), 400, "expected"),
        (b"x" * (3 * 1024 * 1024), 413, "larger than the limit"),
        ("[" * 100_000, 400, "nested too deeply"),
        (json.dumps({"signature_name": [], "instances": [{"b64": ""}]}), 400, "must be a string"),
        (json.dumps({"signature_name": "predict_images", "inputs": {"images": [_pixels("1")]}}), 400,
         "must be numbers"),
        (json.dumps({"signature_name": "predict_images", "inputs": {"images": [_pixels(256)]}}), 400,
         r"must be in \[0, 255\]"),
        (json.dumps({"instances": [""] * 50_000}), 413, "the limit is 8"),
        # Eight images of 16.8 megapixels each (a few KB of PNG): under the
        # per-image limit, over the request's 128 megapixels.
        (json.dumps({"instances": [_b64(_encode(np.zeros((4096, 4096), np.uint8), "PNG"))] * 8}), 413,
         r"declare 134,217,728 pixels in all; the limit is 128,000,000 per request"),
    ]


def test_soak_of_mixed_requests_keeps_answers_right_and_memory_flat(server):
    bad = _bad_requests(server)
    rng = random.Random(0)
    is_bad = [rng.random() < 0.3 for _ in range(SOAK_REQUESTS)]
    session = requests.Session()
    for i in range(200):  # warm-up: caches, arenas and connection pools fill first
        _good(server, i, session)
    rss_before = _rss_mb(server["process"].pid)
    counts = {"good": 0, "bad": 0}
    statuses, latencies, peak = collections.Counter(), [], [rss_before]
    silent = []

    def one(i):
        if i % 100 == 0:  # a stalled upload now and then, holding a connection
            stalled = _slow_client(server["port"])
            threading.Timer(READ_TIMEOUT / 2, stalled.close).start()
        if i % 100 == 50:  # a connection that never sends a request: the server must close it
            silent.append(socket.create_connection(("127.0.0.1", server["port"]), timeout=HEADER_TIMEOUT + 30))
        if i % 50 == 0:
            peak.append(_rss_mb(server["process"].pid))
        if is_bad[i]:
            body, status, message = bad[i % len(bad)]
            response = requests.post(server["url"] + ":predict", data=body, timeout=120)
            statuses[response.status_code] += 1
            assert response.status_code == status, (message, response.status_code, response.text[:300])
            assert re.search(message, response.json()["error"]), response.json()
            return "bad"
        started = time.perf_counter()
        k, response = _good(server, i)
        latencies.append(time.perf_counter() - started)
        statuses[response.status_code] += 1
        _assert_good_answer(server, k, response)
        return "good"

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for kind in pool.map(one, range(SOAK_REQUESTS)):
            counts[kind] += 1
    elapsed = time.time() - started
    for sock in silent:
        assert sock.recv(4096) == b"", "a silent connection was answered instead of closed"
        sock.close()
    rss_after = _rss_mb(server["process"].pid)
    _assert_good_answer(server, *_good(server, 3))
    assert server["process"].poll() is None
    p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000
    print(f"\nsoak: {SOAK_REQUESTS} requests in {elapsed:.0f} s, 8 at a time, with a stalled upload and a "
          f"silent connection (each closed by the server) every 100 ({counts['good']} good, all equal to model.predict within 1e-5; {counts['bad']} bad of "
          f"{len(bad)} kinds, each a 4xx with its message); by status: "
          f"{', '.join(f'{code}: {n}' for code, n in sorted(statuses.items()))}; good requests p99 "
          f"{p99:.0f} ms; server RSS {rss_before:.0f} MB after warm-up, peak {max(peak):.0f} MB, "
          f"{rss_after:.0f} MB after (bound: +{RSS_GROWTH_BOUND_MB} MB); still answering")
    assert counts["bad"] > 0.2 * SOAK_REQUESTS
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB



@pytest.mark.parametrize("body, status, message", [
    # Issue 30: these answered 500 with a traceback, or passed as pixels.
    ("[" * 100_000, 400, r"JSON Parse error: nested too deeply"),
    (json.dumps({"signature_name": [], "instances": [{"b64": ""}]}), 400,
     r"'signature_name' must be a string, received list"),
    (json.dumps({"signature_name": "predict_images", "inputs": {"images": [_pixels("1.5")]}}), 400,
     r"Input 'images': pixel values must be numbers, received str\d* values"),
    (json.dumps({"signature_name": "predict_images", "inputs": {"images": [_pixels(True)]}}), 400,
     r"pixel values must be numbers, received bool values"),
    ('{"signature_name": "predict_images", "inputs": {"images": [' + json.dumps(_pixels(0)).replace("0", "NaN", 1)
     + "]}}", 400, r"JSON Parse error: NaN is not a JSON number"),
    (json.dumps({"signature_name": "predict_images", "inputs": {"images": [_pixels(300)]}}), 400,
     r"pixel values must be in \[0, 255\], received values in \[300, 300\]"),
    (json.dumps({"instances": [""] * 100_000}), 413, r"100000 images in one request; the limit is 8"),
])
def test_malformed_bodies_get_a_4xx_with_tf_servings_error_and_no_internals(server, body, status, message):
    response = requests.post(server["url"] + ":predict", data=body, timeout=60)
    assert response.status_code == status, response.text[:300]
    assert set(response.json()) == {"error"} and re.search(message, response.json()["error"]), response.json()
    assert "Traceback" not in response.text


def test_405_names_the_allowed_methods_and_status_lists_versions(server):
    response = requests.delete(server["url"] + ":predict", timeout=30)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    status = requests.get(server["url"], timeout=30).json()
    assert [s["state"] for s in status["model_version_status"]] == ["AVAILABLE"]


def test_stalled_uploads_do_not_take_the_pending_slots(server):
    """Issue 30: a pending slot was taken before the body was read, so
    max_pending stalled uploads got every other client a 503 for the whole
    read timeout. Now they wait for their body outside the slots."""
    sockets = [_slow_client(server["port"]) for _ in range(MAX_PENDING + 2)]
    try:
        time.sleep(0.5)
        k, response = _good(server, 0)
        _assert_good_answer(server, k, response)
    finally:
        for sock in sockets:
            sock.close()
