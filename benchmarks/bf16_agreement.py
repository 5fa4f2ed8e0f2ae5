"""Top-1 agreement of bfloat16 and int8 inference with float32.

    python benchmarks/bf16_agreement.py                   # trains the main job (digits) first, ~3 min
    python benchmarks/bf16_agreement.py runs/fmnist runs/digits --write

For each trained run: its final model on its data set's whole test split,
in float32 and through `keras_vit.with_precision(model, "bfloat16")` and
`(model, "int8")` (Keras' quantization): per precision, the fraction of
images whose top-1 class is the same as in float32, both test accuracies
and the largest probability difference. Then ViT-B/16 at 224 with random weights (there are no trained
ViT-B weights offline) on 64 crops of the scikit-image and matplotlib demo
photos: random weights make a hard case, since nothing separates the
classes but noise, so small rounding flips more top-1 decisions than in a
trained model. `--write` puts the table into BENCHMARKS.md.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402


PRECISIONS = ("bfloat16", "int8")


def _compare(name, model, images, labels=None):
    import numpy as np

    import keras_vit

    reference = model.predict(images, batch_size=64, verbose=0)
    rows = []
    for precision in PRECISIONS:
        fast = keras_vit.with_precision(model, precision).predict(images, batch_size=64, verbose=0)
        row = {"model": name, "precision": precision, "images": len(images),
               "agreement": float(np.mean(reference.argmax(-1) == fast.argmax(-1))),
               "max_prob_diff": float(np.abs(reference - fast).max())}
        if labels is not None:
            row["accuracy_float32"] = float(np.mean(reference.argmax(-1) == labels))
            row["accuracy"] = float(np.mean(fast.argmax(-1) == labels))
        rows.append(row)
    return rows


def _run_rows(run_dir):
    import numpy as np

    from keras_vit import data, runs

    config = runs.read_run(run_dir)
    model = runs.load_run_model(run_dir, "last")
    (test,) = data.load(config["data"], image_size=config["image_size"], batch_size=256, splits=("test",),
                        label_mode="int", data_dir=config.get("data_dir"))[:1]
    images = np.concatenate([x.numpy() for x, _ in test])
    labels = np.concatenate([y.numpy() for _, y in test])
    return _compare(f"{config['data']} run ({model.count_params():,} parameters), test split", model,
                    images, labels)


def _vit_b16_rows():
    import keras
    import matplotlib.cbook
    import numpy as np
    import skimage.data
    import tensorflow as tf

    import keras_vit

    keras.utils.set_random_seed(0)
    model = keras_vit.ViTB16(include_preprocessing=True, weights=None)
    # The head is zero-initialised (all classes tie); draw it like the rest.
    head = model.get_layer("head")
    head.kernel.assign(np.random.default_rng(0).normal(0, 0.02, head.kernel.shape).astype("float32"))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = tf.io.decode_jpeg(f.read()).numpy()
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), hopper]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(64):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        size = int(rng.uniform(0.4, 1.0) * min(h, w))
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = tf.image.resize(photo[top:top + size, left:left + size], (224, 224)).numpy()
        crops.append(crop[:, ::-1] if i % 2 else crop)
    return _compare("ViT-B/16 at 224, random weights, 64 photo crops", model, np.stack(crops))


def worker(run_dirs):
    # keras_vit first, as a user's program: it turns on TensorFlow's oneDNN
    # kernels where TensorFlow would leave them off (which must happen before
    # TensorFlow loads; `import keras` loads it).
    import keras_vit

    import keras
    import tensorflow as tf

    rows = [row for run in run_dirs for row in _run_rows(run)] + _vit_b16_rows()
    versions = {"keras_vit": keras_vit.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}
    _common.report({"rows": rows, "versions": versions, "bfloat16_cpu": keras_vit.bfloat16_cpu()})


def _table(result):
    lines = ["| model | precision | images | top-1 agreement with float32 | accuracy float32 | accuracy "
             "| max prob. diff. |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        acc32 = f"{r['accuracy_float32']:.4f}" if "accuracy_float32" in r else "-"
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        lines.append(f"| {r['model']} | {r['precision']} | {r['images']} | {r['agreement']:.4f} | {acc32} | "
                     f"{acc} | {r['max_prob_diff']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="training run directories (default: train the main job)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.runs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs
        if not runs:
            runs = [str(pathlib.Path(tmp) / "digits")]
            subprocess.run([sys.executable, "-m", "keras_vit.cli", "train", "--output", runs[0], "--verbose", "2"],
                           check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        result = _common.run_worker([sys.executable, __file__, "--worker", *runs], {"rows": []}, 3600)
    if "error" in result:
        print(f"failed: {result['error']}", file=sys.stderr)
        return 1
    how = "final models of the runs, `keras_vit.with_precision(model, precision)` against float32"
    if not result["bfloat16_cpu"]:
        how += (" (on this CPU bfloat16 is not expected to be faster than float32: "
                "`keras_vit.bfloat16_cpu()` is False)")
    return _common.publish([result], how, _table(result), "bf16", "bfloat16 and int8 against float32 "
                           "(`benchmarks/bf16_agreement.py`)", args.write, args.json)


if __name__ == "__main__":
    sys.exit(main())
