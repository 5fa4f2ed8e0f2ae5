"""Train a ViT from scratch on Fashion-MNIST with the Python API.

Needs Fashion-MNIST offline: Debian's package (`apt-get install
dataset-fashion-mnist`) or a TFDS `--data-dir` that holds it.

Run:
    python examples/train_from_scratch.py                      # the recipe: 24 epochs, 27-30 min on 2 cores (Xeon, Zen 2), ~73 on a Zen 1
    python examples/train_from_scratch.py --epochs 1 --steps 30 --eval-steps 8   # a quick look, about 30 s

This is what `keras-vit train --data fashion_mnist` does, spelled out:
tf.data pipelines (`keras_vit.data.load`), the recipe's small ViT, AdamW with
warm-up and cosine decay (`keras_vit.training.compile`), flips and random
erasing (`keras_vit.training.augmentation`), `model.fit`, and the test
accuracy measured as the recipe measures it, with test-time flips
(`keras_vit.with_flip_tta`: each image and its mirror image, averaged).
It prints a line per epoch, then:
    Fashion-MNIST test accuracy 0.9xxx with flip TTA (0.9xxx without) on 10000 test images after 24 epochs (NNN s)
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--steps", type=int, help="training steps per epoch (default: the whole split)")
    parser.add_argument("--eval-steps", type=int,
                        help="validation and test batches to evaluate, as Keras' validation_steps and "
                             "steps (default: the whole splits)")
    parser.add_argument("--data-dir", help="a TFDS data directory holding fashion_mnist")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps", "eval_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; received {value}")

    import keras_vit  # before Keras: it turns on TensorFlow's oneDNN kernels (README, Speed)

    import keras
    from keras_vit import data, inference, runs, training

    recipe = runs.RECIPES["fashion_mnist"]
    epochs = args.epochs or recipe["epochs"]
    batch_size = recipe["batch_size"]
    started = time.time()
    keras.utils.set_random_seed(0)
    augment = training.augmentation(flip=recipe["flip"], crop_scale=recipe["crop_scale"],
                                    random_erasing=recipe["random_erasing"], seed=0)
    ds_train, ds_val, ds_test, info = data.load(
        "fashion_mnist", batch_size=batch_size, data_dir=args.data_dir, augmentation=augment,
        splits=("train", "validation", "test"),
    )
    model = keras_vit.ViT(
        input_shape=(28, 28, 3), classes=info.num_classes, include_preprocessing=True,
        patch_size=recipe["patch_size"], hidden_dim=recipe["hidden_dim"], num_layers=recipe["num_layers"],
        num_heads=recipe["num_heads"], mlp_dim=recipe["mlp_dim"], drop_path_rate=recipe["drop_path_rate"],
    )
    steps = args.steps or info.num_examples["train"] // batch_size
    training.compile(model, steps=epochs * steps, learning_rate=recipe["learning_rate"],
                     weight_decay=recipe["weight_decay"], warmup_steps=min(int(recipe["warmup_epochs"] * steps), epochs * steps // 10))
    if args.steps:
        ds_train = ds_train.repeat()
    if args.eval_steps:
        ds_val, ds_test = ds_val.take(args.eval_steps), ds_test.take(args.eval_steps)
    model.fit(ds_train, validation_data=ds_val, epochs=epochs, steps_per_epoch=steps, verbose=2)
    _, plain = model.evaluate(ds_test, verbose=0)
    images = info.num_examples["test"]
    if args.eval_steps:
        images = min(images, args.eval_steps * batch_size)
    tta = inference.with_tta(model, recipe["tta"])  # keras_vit.with_flip_tta(model)
    tta.compile(loss=model.loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    _, accuracy = tta.evaluate(ds_test, verbose=0)
    print(f"Fashion-MNIST test accuracy {accuracy:.4f} with {recipe['tta']} TTA ({plain:.4f} without) "
          f"on {images} test images after {epochs} epochs ({time.time() - started:.0f} s)")
    return accuracy, plain


if __name__ == "__main__":
    main()
    sys.exit(0)
