"""Run by tests/test_backends.py in a subprocess under `KERAS_BACKEND=jax`
or `torch`, with TensorFlow made unimportable (as on a machine where only
that backend's framework is installed):

    python tests/_backend_worker.py DIR

DIR holds what the TensorFlow side wrote: `model.keras` (a random Test/4
classifier) with `x.npy` and its outputs `expected.npy`, and
`timm.safetensors` (a random timm ViT-Ti/16) with `images.npy` and timm's
logits `timm_logits.npy`. The worker checks the core here and prints one
`RESULT {json}` line; it writes `trained.keras` and `trained.npy` (a model
fine-tuned on this backend and its outputs) for the TensorFlow side to load.
"""

import json
import pathlib
import sys

# What `pip install` without TensorFlow gives: `import tensorflow` fails.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _no_tensorflow  # noqa: E402

_no_tensorflow.block()


def main(directory):
    import keras
    import numpy as np

    import keras_vit
    from keras_vit import explain, training

    result = {"backend": keras.backend.backend()}
    x = np.load(directory / "x.npy")

    # A .keras file written under TensorFlow, loaded here.
    model = keras_vit.load_model(directory / "model.keras")
    result["keras_file_diff"] = float(np.abs(model.predict(x, verbose=0) - np.load(directory / "expected.npy")).max())

    # Parity with timm: its checkpoint loaded into the builder, as a user would.
    images = np.load(directory / "images.npy")
    vit = keras_vit.ViTTi16(weights=str(directory / "timm.safetensors"), classifier_activation=None)
    result["timm_diff"] = float(np.abs(vit.predict(images, verbose=0) - np.load(directory / "timm_logits.npy")).max())

    # Fine-tuning with the recipe on NumPy arrays (stochastic depth on).
    rng = np.random.default_rng(0)
    train_x = rng.uniform(0, 255, (32,) + x.shape[1:]).astype("float32")
    train_y = keras.utils.to_categorical(np.arange(32) % 5, 5)
    tuned = keras_vit.ViT("Test/4", input_shape=x.shape[1:], classes=5, drop_path_rate=0.1)
    tuned.set_weights(model.get_weights())
    before = [np.array(w) for w in tuned.get_weights()]
    training.compile(tuned, steps=8, warmup_steps=1)
    history = tuned.fit(train_x, train_y, batch_size=8, epochs=2, verbose=0)
    result["losses"] = [float(v) for v in history.history["loss"]]
    result["weights_changed"] = sum(not np.array_equal(a, b) for a, b in zip(before, tuned.get_weights()))
    result["weights"] = len(before)
    tuned.save(directory / "trained.keras")
    np.save(directory / "trained.npy", tuned.predict(x, verbose=0))

    # Explain: attention maps, rollout, overlay.
    maps = explain.attention_maps(model, x[:2])
    result["attention_shape"] = list(maps[0].shape)
    result["attention_row_sum"] = float(maps[0].sum(-1).mean())
    rollout = explain.attention_rollout(model, x[:2])
    result["rollout_shape"] = list(np.asarray(rollout).shape)
    result["overlay_shape"] = list(explain.overlay(x[0], rollout[0]).shape)

    # Precisions.
    expected = model.predict(x, verbose=0)
    for precision in ("bfloat16", "int8"):
        copy = keras_vit.with_precision(model, precision)
        result[f"{precision}_diff"] = float(np.abs(copy.predict(x, verbose=0) - expected).max())
    result["model_still_float32"] = float(np.abs(model.predict(x, verbose=0) - expected).max())

    # Data without TensorFlow: keras_vit.data gives ArrayBatches (a Keras
    # PyDataset) with the tf.data pipeline's pixels, and augments on this
    # backend; image files are decoded by Pillow as TensorFlow decodes them.
    from keras_vit import data as vit_data
    from keras_vit import images as vit_images

    (validation, info) = vit_data.load("digits", image_size=32, batch_size=64, splits=("validation",))
    result["data_class"] = type(validation).__name__
    images, labels = validation[0]
    tf_images, tf_labels = np.load(directory / "digits_images.npy"), np.load(directory / "digits_labels.npy")
    result["data_diff"] = float(np.abs(images - tf_images).max())
    result["data_labels_equal"] = bool(np.array_equal(labels, tf_labels))
    result["data_batches"] = [len(validation), len(validation[len(validation) - 1][0])]
    augment = training.augmentation(flip=True, translate=0.1, random_erasing=0.5, mixup=0.2, cutmix=1.0, seed=0)
    (train, _) = vit_data.load("digits", image_size=16, batch_size=32, augmentation=augment, splits=("train",))
    first = train[0]
    train.on_epoch_end()
    result["augmented"] = [list(first[0].shape), float(first[0].min()), float(first[0].max()),
                           float(np.abs(first[1].sum(-1) - 1).max()), len(train),
                           bool(not np.array_equal(first[0], train[0][0]))]
    result["pillow_diff"] = float(np.abs(vit_images.load_images([directory / "photo.png"], (20, 28))
                                         - np.load(directory / "photo_pixels.npy")).max())
    try:
        vit_data.load(str(directory), image_size=8)
    except ImportError as error:
        result["folder_error"] = str(error)

    # What needs TensorFlow says so.
    try:
        keras_vit.export  # noqa: B018
    except ImportError as error:
        result["export_error"] = str(error)
    # A file saved with jit_compile=True (what "auto" gives on JAX) loads
    # eager on PyTorch, where torch.compile recompiles per batch shape.
    flagged = keras_vit.ViT("Test/4", input_shape=x.shape[1:], classes=5)
    flagged.compile(loss="categorical_crossentropy", jit_compile=True)
    flagged.save(directory / "jit.keras")
    result["loaded_jit_compile"] = bool(keras_vit.load_model(directory / "jit.keras").jit_compile)
    # keras_vit.distribute imports without TensorFlow: one device here.
    result["strategy"] = repr(keras_vit.distribute.get_strategy("auto"))
    try:
        keras_vit.distribute.get_strategy("mirrored")
    except ValueError as error:
        result["mirrored_error"] = str(error)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
