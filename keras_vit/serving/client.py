"""The TF Serving REST client: predict requests for image files, bytes,
NumPy arrays or PIL images, to `keras_vit.serving.Server` or to TF Serving.

It needs `requests` only (imported when a `Client` is made), never aiohttp.
"""

import base64
import dataclasses
import io
import os
import pathlib

import numpy as np

from keras_vit._validation import check_int


class ServingError(RuntimeError):
    """An error answered by a server (`status` is the HTTP status code)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


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
        if version is not None:
            check_int("version", version)
        check_int("batch_size", batch_size)
        check_int("retries", retries, low=0)
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
