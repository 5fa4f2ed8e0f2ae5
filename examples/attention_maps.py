"""Attention maps of a model trained by the main job, and the README gallery.

Run:
    python examples/attention_maps.py                          # trains the main job first (about 3 minutes)
    python examples/attention_maps.py --run runs/digits        # an existing digits run
    python examples/attention_maps.py --output docs/gallery    # regenerates the README gallery

It writes four test digits as PNG files, then runs the commands

    keras-vit explain RUN digit_*.png --output OUTPUT/rollout.png
    keras-vit explain RUN digit_0.png --layer -1 --head 0 --output OUTPUT/last_block_head0.png
    keras-vit inspect RUN --output OUTPUT

and prints, for a finished main-job run:
    digit_0.png (true 8): 8 0.9...
    digit_1.png (true 9): 9 0.9...
    ...
    wrote OUTPUT/rollout.png, OUTPUT/last_block_head0.png, OUTPUT/position_embedding.png, OUTPUT/patch_embedding.png
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_digits(count):
    """The first test-split digit of each of the first `count` classes met,
    as uint8 8x8 images (keras_vit.data's fixed digits split)."""
    import numpy as np

    from keras_vit import data

    (ds_test, info) = data.load("digits", batch_size=64, splits=("test",), label_mode="int")
    images, labels = next(iter(ds_test))
    images, labels = images.numpy(), labels.numpy()
    _, first = np.unique(labels, return_index=True)
    chosen = np.sort(first)[:count]
    return np.round(images[chosen, ..., 0]).astype(np.uint8), labels[chosen], info.class_names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished digits run (default: train the main job into runs/digits)")
    parser.add_argument("--output", default="attention", help="folder for the pictures")
    parser.add_argument("--count", type=int, default=4, help="test digits to explain")
    args = parser.parse_args(argv)

    from PIL import Image

    from keras_vit import cli

    run = pathlib.Path(args.run or "runs/digits")
    if args.run is None and not (run / "results.json").is_file():
        if cli.main(["train", "--output", str(run), "--verbose", "2"]) != 0:
            return 1
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    images, labels, names = test_digits(args.count)
    paths = []
    for i, image in enumerate(images):
        path = output / f"digit_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["explain", str(run), *paths, "--output", str(output / "rollout.png")])
        code = code or cli.main(["explain", str(run), paths[0], "--layer", "-1", "--head", "0",
                                 "--output", str(output / "last_block_head0.png")])
        code = code or cli.main(["inspect", str(run), "--output", str(output)])
    if code:
        print(printed.getvalue())
        return code
    lines = printed.getvalue().splitlines()
    for path, label, line in zip(paths, labels, lines):
        predicted = line.split(": ", 1)[1]
        print(f"{pathlib.Path(path).name} (true {names[label]}): {predicted}")
    written = [output / n for n in ("rollout.png", "last_block_head0.png", "position_embedding.png",
                                    "patch_embedding.png")]
    print("wrote " + ", ".join(str(p) for p in written))
    for path in paths:  # the digits were inputs, not pictures for the gallery
        os.remove(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
