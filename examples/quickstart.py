"""Quickstart: build ViT-B/16, load a checkpoint into it, classify photos.

Run:
    python examples/quickstart.py                       # checkpoint written from random weights
    python examples/quickstart.py --weights ViT-B_16.npz  # an original Google checkpoint

It prints, for the checkpoint written from random weights (seed 0):
    ViT-B/16: 86,567,656 parameters
    wrote checkpoint /tmp/.../vit_b16_random.npz (200 arrays)
    loaded it back: max abs difference of probabilities 0
    astronaut    top-3: class 660 (0.0263), class 374 (0.0260), class 477 (0.0198)
    chelsea      top-3: ...
    coffee       top-3: ...
    grace_hopper top-3: ...

The photos are the demo images shipped with scikit-image and matplotlib
(when matplotlib is installed); nothing is downloaded. With random weights
the classes mean nothing: the point is that the checkpoint round trip is
exact and the pipeline (resize, preprocess_input, predict) is the one a real
checkpoint uses.
"""

import argparse
import os
import pathlib
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def demo_photos(size):
    """The offline demo photos, resized to `size` x `size`, pixels in [0, 255]."""
    import keras
    from skimage import data

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image

            photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    except (ImportError, OSError, ValueError):
        pass
    names = list(photos)
    images = np.stack(
        [
            keras.ops.convert_to_numpy(
                keras.ops.image.resize(photos[name].astype("float32"), (size, size), antialias=True)
            )
            for name in names
        ]
    )
    return names, np.clip(images, 0.0, 255.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="a ViT-B/16 checkpoint (.npz, .safetensors, .weights.h5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)

    import keras_vit  # before Keras: it turns on TensorFlow's oneDNN kernels (README, Speed)

    import keras

    keras.utils.set_random_seed(args.seed)
    model = keras_vit.ViTB16(weights=args.weights)
    print(f"ViT-B/16: {model.count_params():,} parameters")

    names, photos = demo_photos(224)
    images = keras_vit.preprocess_input(photos)

    if args.weights is None:
        # Stand-in for a trained checkpoint: the original zero-initialises the
        # head, which would give uniform predictions, so draw it at random.
        head = model.get_layer("head")
        rng = np.random.default_rng(args.seed)
        head.kernel.assign(rng.normal(0.0, 0.05, tuple(head.kernel.shape)).astype("float32"))
        with tempfile.TemporaryDirectory() as tmp:
            path = keras_vit.save_npz(model, pathlib.Path(tmp) / "vit_b16_random.npz")
            with np.load(path) as archive:
                print(f"wrote checkpoint {path} ({len(archive.files)} arrays)")
            expected = model.predict(images, verbose=0)
            model = keras_vit.ViTB16(weights=path)
        difference = float(np.max(np.abs(model.predict(images, verbose=0) - expected)))
        print(f"loaded it back: max abs difference of probabilities {difference:.3g}")

    probabilities = model.predict(images, verbose=0)
    for name, row in zip(names, probabilities):
        top = np.argsort(row)[::-1][: args.top_k]
        ranked = ", ".join(f"class {int(i)} ({row[i]:.4f})" for i in top)
        print(f"{name:<12} top-{args.top_k}: {ranked}")
    return names, probabilities


if __name__ == "__main__":
    main()
