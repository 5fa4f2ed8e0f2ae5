"""Export a trained run for TF Serving, serve it locally, query it over REST.

Run:
    python examples/export_and_serve.py --run runs/digits     # a run of the main job (keras-vit train)
    python examples/export_and_serve.py                       # trains a quick digits model first (about 20 s)

It does what these commands do (the server in a background thread):

    keras-vit export RUN --output OUTPUT/digits
    keras-vit serve OUTPUT/digits --port 0
    keras-vit predict --server http://127.0.0.1:PORT --model-name digits digit_0.png ...

and prints, e.g.:
    exported to export/digits/1
    serving http://127.0.0.1:PORT/v1/models/digits, version 1
    digit_0.png (true 6): 6 0.93, 5 0.01, 8 0.01
    ...
    REST answers equal model.predict: max abs difference 0.0000xx
    a bad request got HTTP 400: Input 'image_bytes'[0] is not a decodable image: ...
"""

import argparse
import io
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished training run (default: train a quick digits model)")
    parser.add_argument("--output", default="export", help="base folder of the exports")
    parser.add_argument("--count", type=int, default=4, help="test digits to send")
    args = parser.parse_args(argv)

    import numpy as np
    import requests
    from PIL import Image

    from keras_vit import cli, data, runs, serving
    from keras_vit import images as vit_images

    run = pathlib.Path(args.run or pathlib.Path(args.output) / "runs" / "digits_quick")
    if args.run is None and not (run / "results.json").is_file():
        quick = ["--hidden-dim", "32", "--num-heads", "2", "--mlp-dim", "64", "--num-layers", "2",
                 "--epochs", "15", "--learning-rate", "5e-3", "--verbose", "0"]
        if cli.main(["train", "--output", str(run)] + quick) != 0:
            return 1

    base = pathlib.Path(args.output) / "digits"
    version = runs.export_run(run, base)
    print(f"exported to {version}")

    (ds_test, info) = data.load("digits", batch_size=args.count, splits=("test",), label_mode="int")
    images, labels = next(iter(ds_test))
    images = np.round(images.numpy()).astype(np.uint8)
    payloads = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())

    with serving.Server(base, port=0) as server, serving.Client(server.url, model_name="digits") as client:
        print(f"serving {server.url}/v1/models/digits, version {client.status()['model_version_status'][0]['version']}")
        predictions = client.predict(payloads)
        for i, (prediction, label) in enumerate(zip(predictions, labels.numpy())):
            ranked = ", ".join(f"{n} {s:.2f}" for n, s in list(zip(prediction.labels, prediction.scores))[:3])
            print(f"digit_{i}.png (true {info.class_names[label]}): {ranked}")
        model = runs.load_run_model(run)
        # The served graph decodes and resizes each PNG to the model's input
        # size exactly as keras_vit.images.decode_image does.
        resized = np.stack([vit_images.decode_image(p, model.input_shape[1:3]).numpy() for p in payloads])
        expected = model.predict(resized, verbose=0)
        got = np.array([p.probabilities for p in predictions])
        print(f"REST answers equal model.predict: max abs difference {np.abs(got - expected).max():.6f}")
        bad = requests.post(f"{server.url}/v1/models/digits:predict",
                            json={"instances": [{"b64": "bm90IGFuIGltYWdl"}]}, timeout=30)
        print(f"a bad request got HTTP {bad.status_code}: {bad.json()['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
