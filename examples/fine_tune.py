"""Fine-tune a pretrained ViT on a folder of images (one sub-folder per class).

Run:
    python examples/fine_tune.py --weights imagenet21k --variant Ti/16   # from Google's ImageNet-21k weights
    python examples/fine_tune.py                         # offline: pre-trains its own checkpoint first
    python examples/fine_tune.py --work /tmp/finetune    # keep the files
    python examples/fine_tune.py --no-compare            # skip the run from random weights

The example writes the digits 0-2 as PNG files into
`WORK/photos/{zero,one,two}/` and then runs the command a user runs on their
own photos:

    keras-vit train --data WORK/photos --variant Ti/16 --weights imagenet21k --image-size 64 --epochs 8 ...

With `--weights` (a name of `keras-vit weights list`, or a checkpoint file)
the start is that published checkpoint, downloaded once into Keras' cache:
its position embedding is resampled to the new resolution and its head
replaced (21,843 ImageNet-21k classes -> the folder's 3; add
`--freeze-backbone` to train the head only). Without `--weights` no
download is needed: the example pre-trains a small ViT on the digits 3-9,
writes it as a Google-format `.npz` checkpoint and starts from that. Either
way it also trains the same model from random weights, for comparison
(unless `--no-compare`). It prints:
    pre-trained on digits 3-9: validation accuracy 0.9x, checkpoint WORK/pretrained.npz   (offline only; 126 images)
    wrote 537 images of 3 classes into WORK/photos
    fine-tuned (new head, 8 epochs): test accuracy 0.9x
    from random weights (8 epochs): test accuracy 0.8x
"""

import argparse
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARCHITECTURE = ["--patch-size", "2", "--hidden-dim", "32", "--num-layers", "2", "--num-heads", "2",
                "--mlp-dim", "64"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", help="folder for the checkpoint, photos and runs (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs")
    parser.add_argument("--weights", help="start from these pretrained weights ('imagenet21k', a tag, a file) "
                                          "instead of pre-training a small ViT")
    parser.add_argument("--variant", default="Ti/16", help="the size of --weights (default Ti/16)")
    parser.add_argument("--image-size", type=int, default=64, help="resolution with --weights (default 64)")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also train from random weights, for comparison (default: yes)")
    args = parser.parse_args(argv)

    import json

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from keras_vit import cli

    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="keras_vit_finetune_"))
    work.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target

    if args.weights:
        # A published checkpoint: a smaller step than from scratch, as
        # fine-tuning recipes take (timm, vit_jax), so as not to wash out
        # what pre-training learned.
        checkpoint, architecture, image_size, learning_rate = (
            args.weights, ["--variant", args.variant], args.image_size, "3e-4")
    else:
        checkpoint = _pretrain(images, labels, work)
        architecture, image_size, learning_rate = ARCHITECTURE, 8, "3e-3"

    # A folder of the new task's images: the digits 0-2.
    photos = work / "photos"
    count = 0
    for name, digit in (("zero", 0), ("one", 1), ("two", 2)):
        (photos / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images[labels == digit]):
            Image.fromarray(image).save(photos / name / f"{i}.png")
            count += 1
    print(f"wrote {count} images of 3 classes into {photos}")

    # Fine-tune with the command line, and the same from random weights.
    #    The folder has no test/ split: the test accuracy is on the held-out
    #    validation images (--validation-split).
    common = ["train", "--data", str(photos), "--image-size", str(image_size), *architecture,
              "--epochs", str(args.epochs), "--batch-size", "32", "--learning-rate", learning_rate, "--warmup-epochs", "1",
              "--validation-split", "0.3", "--verbose", "0", "--overwrite"]
    results = {}
    import contextlib
    import io
    import warnings

    trainings = [("fine-tuned", ["--weights", str(checkpoint)])] + ([("scratch", [])] if args.compare else [])
    for label, extra in trainings:
        output = work / "runs" / label
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # "the checkpoint has 7 classes but the model has 3": a new head
            if cli.main(common + extra + ["--output", str(output)]) != 0:
                return None
        results[label] = json.loads((output / "results.json").read_text())["test_accuracy"]
    print(f"fine-tuned (new head, {args.epochs} epochs): test accuracy {results['fine-tuned']:.2f}")
    if args.compare:
        print(f"from random weights ({args.epochs} epochs): test accuracy {results['scratch']:.2f}")
    return results


def _pretrain(images, labels, work):
    """A small ViT trained on the digits 3-9 (7 classes), as a Google `.npz`."""
    import keras_vit
    from keras_vit import data, training

    import keras

    keras.utils.set_random_seed(0)  # as `keras-vit train --seed 0` below
    upper = labels >= 3
    ds_train, ds_val, info = data.load((images[upper][..., None], labels[upper] - 3), batch_size=64)
    model = keras_vit.ViT(input_shape=(8, 8, 3), classes=7, include_preprocessing=True, patch_size=2,
                          hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64)
    epochs = 30
    training.compile(model, steps=epochs * (info.num_examples["train"] // 64), learning_rate=5e-3)
    model.fit(ds_train, validation_data=ds_val, epochs=epochs, verbose=0)
    _, accuracy = model.evaluate(ds_val, verbose=0)
    checkpoint = keras_vit.save_npz(model, work / "pretrained.npz")
    print(f"pre-trained on digits 3-9: validation accuracy {accuracy:.2f}, checkpoint {checkpoint}")
    return checkpoint


if __name__ == "__main__":
    main()
    sys.exit(0)
