"""A loopback HTTP server in the layout of Google's `vit_models` bucket.

It serves checkpoints that the tests write (from randomly initialised
models) under the real file names, answers as Google Cloud Storage does
(`Content-Length`, `x-goog-hash: md5=...`), records every path asked for,
and can misbehave per file: cut the body short, announce a wrong length,
send a wrong MD5, answer 404 or 500, stall mid-body, or send slowly.

Run as a script it serves a folder until killed (for the examples' tests):
`python tests/weights_mirror.py ROOT` prints `PORT` on its first line.
"""

import base64
import hashlib
import http.server
import pathlib
import sys
import threading
import time


class Mirror:
    """`files`: bucket path -> bytes; `faults`: bucket path -> fault name."""

    def __init__(self, files=None):
        self.files = dict(files or {})
        self.faults = {}
        self.requests = []
        self.delay_per_chunk = 0.0
        self._lock = threading.Lock()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 -- http.server's name
                path = self.path.lstrip("/")
                with mirror._lock:
                    mirror.requests.append(path)
                fault = mirror.faults.get(path)
                body = mirror.files.get(path)
                if fault in ("404", "500") or body is None:
                    code = 500 if fault == "500" else 404
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
                if fault == "bad_md5":
                    md5 = base64.b64encode(hashlib.md5(body + b"x").digest()).decode()
                length = len(body) + (1000 if fault == "long_header" else 0)
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
                self.send_header("Connection", "close")
                self.end_headers()
                if fault in ("short", "stall"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if fault == "stall":
                        time.sleep(30)
                    return
                chunk = 1 << 20
                for start in range(0, len(body), chunk):
                    self.wfile.write(body[start:start + chunk])
                    if mirror.delay_per_chunk:
                        self.wfile.flush()
                        time.sleep(mirror.delay_per_chunk)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def main(root):
    root = pathlib.Path(root)
    files = {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}
    with Mirror(files) as mirror:
        print(mirror.url.rsplit(":", 1)[1], flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1])
