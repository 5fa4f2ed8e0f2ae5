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

Modules: `client` (needs `requests` only), `server` (imports aiohttp when
a server starts), `protocol` (TF Serving's request and response JSON).
"""

from keras_vit.serving.client import Client, Prediction, ServingError, encode_image
from keras_vit.serving.server import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_PORT,
    Server,
    access_logger,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_PORT",
    "Client",
    "Prediction",
    "Server",
    "ServingError",
    "access_logger",
    "encode_image",
]
