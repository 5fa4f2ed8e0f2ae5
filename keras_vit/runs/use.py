"""The use of a finished run: its model, its evaluation on the test split,
predictions on image files, export for TF Serving and the pictures of
`keras-vit explain` and `keras-vit inspect`.

The image size comes from the run's model (the input it takes), the class
names and data source from its `config.json` (`read_run`).
"""

import pathlib

import keras
import numpy as np

from keras_vit import data as vit_data
from keras_vit import explain, inference, models
from keras_vit import images as vit_images
from keras_vit._validation import check_int
from keras_vit.runs import files, plots
from keras_vit.runs.config import read_run
from keras_vit.runs.files import RunError

# Data sets whose images are grayscale: `inspect_run` sums their patch
# filters over the colour channels.
GRAYSCALE_DATA = ("digits", "fashion_mnist")


def load_run_model(run_dir, which="last"):
    """Loads a run's `last.keras` (the final model) or `best.keras`."""
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', received which={which!r}.")
    path = pathlib.Path(run_dir) / f"{which}.keras"
    if not path.is_file():
        raise RunError(f"{run_dir} has no {which}.keras: has its training finished an epoch?")
    from keras_vit import weights as vit_weights

    return vit_weights.load_model(path)


def _input_size(model):
    """`(height, width)` of the images `model` takes."""
    return tuple(int(side) for side in model.input_shape[1:3])


def _run_tta(config, tta):
    """The `tta` asked for, else the run's own (`"none"` for runs saved
    before the setting existed)."""
    return inference.check_tta((config.get("tta") or "none") if tta is None else tta)


def _check_top_k(top_k, classes):
    check_int("top_k", top_k, high=classes)


def evaluate(run_dir, which="last", batch_size=256, tta=None, precision=None):
    """Evaluates a run's model on its data set's test split.

    Writes `evaluation.json` and `confusion.png` (the confusion matrix) in
    the run directory.

    Args:
        run_dir: the run directory.
        which: `"last"` or `"best"` model of the run.
        batch_size: images per batch.
        tta: test-time augmentation, `"none"` or `"flip"` (the mean over each
            image and its mirror image); `None`: the run's own setting, as
            in its `results.json`.
        precision: `None` (the model as saved) or one of
            `keras_vit.inference.PRECISIONS` (see `keras_vit.with_precision`).

    Returns:
        A dict with `accuracy`, `loss`, `confusion_matrix`, `tta`,
        `precision` and paths.
    """
    config = read_run(run_dir)
    tta = _run_tta(config, tta)
    model = load_run_model(run_dir, which)
    computing = model if precision is None else inference.with_precision(model, precision, copy=False)
    augmented = inference.with_tta(computing, tta)
    (ds_test, info) = vit_data.load(
        config["data"], image_size=_input_size(model), batch_size=batch_size,
        validation_split=config["validation_split"],
        data_dir=config.get("data_dir"), splits=("test",),
        bad_images=config.get("bad_images", "error"),
    )
    # One pass over the test set: the loss is the compiled loss of the
    # collected probabilities, as model.evaluate would compute it.
    onehots, probabilities = [], []
    # NumPy batches: the model runs on any Keras backend, not only TensorFlow.
    for images, onehot in ds_test.as_numpy_iterator():
        probabilities.append(keras.ops.convert_to_numpy(augmented.predict_on_batch(images)))
        onehots.append(onehot)
    onehots, probabilities = np.concatenate(onehots), np.concatenate(probabilities)
    labels, predictions = np.argmax(onehots, axis=-1), np.argmax(probabilities, axis=-1)
    loss = float(keras.ops.convert_to_numpy(model.loss(onehots, probabilities)))
    names = config["class_names"]
    matrix = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    run_dir = pathlib.Path(run_dir)
    accuracy = float(np.mean(labels == predictions))
    png = plots.plot_confusion_matrix(matrix, names, run_dir / "confusion.png",
                                      title=f"{info.name}: test accuracy {accuracy:.4f}")
    result = {
        "accuracy": accuracy,
        "loss": loss,
        "num_examples": int(len(labels)),
        "confusion_matrix": matrix.tolist(),
        "confusion_png": str(png),
        "model": which,
        "tta": tta,
        "precision": inference.precision_of(computing),
    }
    files.write_json_atomic(run_dir / "evaluation.json", result)
    return result


def predict(run_dir, paths, top_k=3, which="last", precision=None, tta=None):
    """Classifies image files with a run's model.

    Args:
        run_dir: the run directory.
        paths: image files.
        top_k: classes per image.
        which: `"last"` or `"best"` model of the run.
        precision: `None` (the model as saved) or one of
            `keras_vit.inference.PRECISIONS` (see `keras_vit.with_precision`).
        tta: test-time augmentation, `"none"` or `"flip"`; `None`: the run's
            own setting.

    Returns:
        A list, per image, of `(class_name, probability)` pairs, best first.
    """
    config = read_run(run_dir)
    _check_top_k(top_k, len(config["class_names"]))
    tta = _run_tta(config, tta)
    model = load_run_model(run_dir, which)
    if precision is not None:
        model = inference.with_precision(model, precision, copy=False)  # loaded for this alone
    return classify(model, paths, top_k=top_k, class_names=config["class_names"], tta=tta)


def classify(model, paths, top_k=3, class_names=None, precision=None, tta="none"):
    """Classifies image files with a model that takes pixels in [0, 255].

    Args:
        model: a keras_vit classifier built with `include_preprocessing=True`
            (a run's model, or e.g. `keras_vit.ViTB16(include_preprocessing=True)`).
        paths: image files; each is resized to the model's input.
        top_k: classes per image.
        class_names: one name per class; default: `model.class_names`, else
            the class indices.
        precision: `None` (the model as it is) or one of
            `keras_vit.inference.PRECISIONS` (see `keras_vit.with_precision`).
        tta: `"none"` or `"flip"` (see `keras_vit.with_flip_tta`).

    Returns:
        A list, per image, of `(class_name, probability)` pairs, best first.
    """
    classes = int(model.output_shape[-1])
    if class_names is None:
        class_names = getattr(model, "class_names", None) or [str(i) for i in range(classes)]
    _check_top_k(top_k, classes)
    if precision is not None:
        model = inference.with_precision(model, precision)
    model = inference.with_tta(model, tta)
    images = vit_images.load_images(paths, _input_size(model))
    probabilities = model.predict(images, verbose=0)
    results = []
    for row in probabilities:
        top = np.argsort(row)[::-1][:top_k]
        results.append([(class_names[i], float(row[i])) for i in top])
    return results


def export_run(run_dir, base_dir=None, version=None, overwrite=False, top_k=None, which="last",
               precision=None, tta=None, jit_compile=False):
    """Exports a training run's model (`keras-vit export RUN`) with the
    class names the run recorded.

    Args:
        run_dir: a run directory written by `keras_vit.runs.train`.
        base_dir: where to write versions (default: `export/<run name>`).
        which: `"best"` or `"last"` model of the run.
        version, overwrite, top_k, jit_compile: as in
            `keras_vit.export.export_saved_model`.
        precision: `None` (the model as saved) or one of
            `keras_vit.inference.PRECISIONS` (see `keras_vit.with_precision`);
            the signatures' inputs and outputs stay float32, and the export
            records its precision.
        tta: as in `export_saved_model`; `None`: the run's own setting (the
            one its test accuracy was measured with).

    Returns:
        The path of the version directory.
    """
    config = read_run(run_dir)
    tta = _run_tta(config, tta)
    model = load_run_model(run_dir, which)
    if precision is not None:
        model = inference.with_precision(model, precision, copy=False)
    if base_dir is None:
        base_dir = pathlib.Path("export") / pathlib.Path(run_dir).resolve().name
    from keras_vit import export  # needs TensorFlow (SavedModel); export says so on another backend

    return export.export_saved_model(model, base_dir, class_names=config["class_names"], version=version,
                                     overwrite=overwrite, top_k=top_k, tta=tta, jit_compile=jit_compile)


def explain_run(run_dir, paths, png_path, layer=None, head=None, head_fusion="mean", discard_ratio=0.9,
                which="last"):
    """`keras-vit explain`: attention of a run's model on image files.

    Without `layer`, the attention rollout through all blocks; with `layer`
    (and optionally `head`), that block's class-token attention. Writes a
    PNG with a row per image (image | heat map | overlay), titled with the
    class the model predicts for the image as shown (without the run's
    test-time flips, if it has them: the attention is the image's own).

    Returns:
        `(png_path, masks, predictions)`, predictions as `(class, probability)`.
    """
    config = read_run(run_dir)
    model = load_run_model(run_dir, which)
    if head is not None and layer is None:
        raise ValueError("--head needs --layer (the block whose heads to show).")
    images = vit_images.load_images(paths, _input_size(model))
    maps = explain.attention_maps(model, images)
    grid = models.patch_grid(model)
    if layer is None:
        masks = explain.attention_rollout(maps, head_fusion=head_fusion, discard_ratio=discard_ratio, grid=grid)
        what = f"attention rollout ({head_fusion} over heads, discard ratio {discard_ratio:g})"
    else:
        masks = explain.class_token_attention(maps, layer=layer, head=head, grid=grid)
        index = layer % len(maps)
        what = (f"block {index}{' (the last)' if index == len(maps) - 1 else ''} class-token attention, "
                + ("mean of heads" if head is None else f"head {head}"))
    probabilities = model.predict(images, verbose=0)
    names = config["class_names"]
    predictions = [(names[int(p.argmax())], float(p.max())) for p in probabilities]
    titles = [f"{pathlib.Path(p).name}: {name} ({prob:.2f})" for p, (name, prob) in zip(paths, predictions)]
    # Show the images as the model saw them (its input size), upscaled for the eye.
    shown = [_upscale(image, 224) for image in images]
    explain.plot_attention(shown, masks, png_path, titles=titles, heading=what)
    return str(png_path), masks, predictions


def _upscale(image, side):
    """Nearest-neighbour upscaling so that small images (8x8 digits) stay
    legible next to their heat map."""
    factor = max(1, side // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def inspect_run(run_dir, output_dir, which="last", count=28, grayscale=None):
    """`keras-vit inspect`: position-embedding similarity and patch-embedding
    principal components of a run's model, as PNGs in `output_dir`.

    Args:
        grayscale: sum the patch filters over the colour channels (see
            `keras_vit.explain.patch_embedding_components`); default: for
            the grayscale data sets (`GRAYSCALE_DATA`).

    Returns:
        A dict of the written paths (and the run's learning curves,
        `curves.png`, which training already wrote).
    """
    config = read_run(run_dir)
    model = load_run_model(run_dir, which)
    if grayscale is None:
        grayscale = config.get("data") in GRAYSCALE_DATA
    output = pathlib.Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written = {
        "position_embedding": explain.plot_position_embedding_similarity(model, output / "position_embedding.png"),
        "patch_embedding": explain.plot_patch_embedding_components(
            model, output / "patch_embedding.png", count, grayscale=grayscale),
    }
    curves = pathlib.Path(run_dir) / "curves.png"
    if curves.is_file():
        written["curves"] = str(curves)
    return written
