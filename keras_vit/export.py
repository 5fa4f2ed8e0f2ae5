"""Export for TensorFlow Serving: versioned SavedModels that take image bytes.

`export_saved_model(model, "export/vit", class_names=names)` writes
`export/vit/<version>/` (`saved_model.pb`, `variables/`), the layout
TF Serving watches (`docker run -p 8501:8501 -v $PWD/export/vit:/models/vit
-e MODEL_NAME=vit tensorflow/serving`). The SavedModel needs nothing but
TensorFlow: decoding, resizing, the model, the softmax, top-k and the class
names are all in its graph. Signatures:

- `serving_default`: `image_bytes` (tf.string `[None]`, JPEG/PNG/BMP/GIF
  bytes; TF Serving's REST API takes them as `{"b64": ...}` because the name
  ends in `_bytes`) -> `probabilities` `[None, classes]`, `top_k_indices`
  (int32), `top_k_scores`, `top_k_labels` (class names);
- `predict_images`: `images` (float32 `[None, H, W, 3]`, pixels in
  [0, 255]) -> the same outputs;
- `embeddings`: `image_bytes` -> `embeddings`, the class-token features
  the head reads (for retrieval).

Each version records how it computes in `assets.extra/keras_vit.json`
(`precision`, `jit_compile`, `tta`, `top_k`, `classes`, keras_vit's version; TF Serving
ignores the file, `read_metadata` reads it).

A version is written to a hidden temporary directory in the base directory
(TF Serving only loads integer-named directories) and renamed into place, so
a server watching the base never sees a half-written version.
"""

import json
import os
import pathlib
import re
import shutil
import socket
import tempfile
import time

import keras
import tensorflow as tf

from keras_vit import images as vit_images
from keras_vit import inference, models
from keras_vit._validation import check_int
from keras_vit.version import __version__

DEFAULT_TOP_K = 5
SIGNATURES = ("serving_default", "predict_images", "embeddings")
_TEMP_PREFIX = ".tmp-keras-vit-"
METADATA = "assets.extra/keras_vit.json"


def version_number(name):
    """The version a directory name stands for (ASCII digits only, as TF
    Serving reads them), or None: `str.isdigit` also accepts `"²"`, which
    `int` refuses."""
    return int(name) if re.fullmatch(r"[0-9]+", name) else None


def list_versions(base_dir):
    """The integer version numbers under `base_dir` that hold a SavedModel,
    in increasing order (hidden temporary directories are not versions)."""
    base = pathlib.Path(base_dir)
    if not base.is_dir():
        return []
    return sorted(
        version_number(p.name) for p in base.iterdir()
        if version_number(p.name) is not None and p.is_dir() and (p / "saved_model.pb").is_file()
    )


def _check_model(model):
    backend = keras.backend.backend()
    if backend != "tensorflow":
        # The signatures are tf.functions around the model's own call:
        # they need its variables and ops to be TensorFlow's.
        raise ValueError(
            f"a SavedModel export needs Keras' TensorFlow backend; this is the {backend} backend: "
            "export with KERAS_BACKEND=tensorflow (a .keras file saved on any backend loads there)."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received {type(model).__name__}.")
    if len(model.inputs) != 1:
        raise ValueError(f"The model must have one image input; {model.name} has {len(model.inputs)}.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or None in shape[1:]:
        raise ValueError(
            f"The model's input must be (batch, height, width, 3) with a fixed size, "
            f"received input shape {shape}."
        )
    if models.get_part(model, "head") is None or len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            f"The model {model.name!r} has no classification head (a Dense layer named 'head' "
            f"and one output of shape (batch, classes)); build it with include_top=True."
        )
    return shape[1:3], int(model.outputs[0].shape[-1])


def _check_class_names(class_names, classes):
    if class_names is None:
        return [str(i) for i in range(classes)]
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise TypeError(f"class_names must be a list of strings, received {class_names!r}.")
    class_names = list(class_names)
    if len(class_names) != classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but the model has {classes} classes."
        )
    return class_names


_CLAIM_PREFIX = ".claim-"


def _claim_alive(claim):
    """Whether a claim file belongs to an export still running: one of this
    host whose process is alive, or one of another host (a shared file
    system) younger than an hour."""
    try:
        host, pid = claim.read_text().split()
        age = time.time() - claim.stat().st_mtime
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return age < 3600
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _claim_version(base, version, overwrite):
    """The version number to write, and its claim: a hidden file
    `.claim-<version>` created exclusively (`O_EXCL` succeeds for one
    process only), so two exports at once never pick the same number and
    one without `overwrite` never replaces a version written meanwhile. The
    version's own directory appears only with the final rename; a claim
    left by a killed export is hidden, and taken over by the next one.
    """

    def claim(number):
        path = base / f"{_CLAIM_PREFIX}{number}"
        for _ in range(2):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _claim_alive(path):
                    return None
                path.unlink(missing_ok=True)  # a killed export's: taken over
                continue
            with os.fdopen(descriptor, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            return path
        return None

    if version is None:
        names = [p.name for p in base.iterdir()]
        taken = [version_number(n) for n in names]
        taken += [version_number(n[len(_CLAIM_PREFIX):]) for n in names if n.startswith(_CLAIM_PREFIX)
                  and _claim_alive(base / n)]
        version = max((n for n in taken if n is not None), default=0) + 1
        while True:
            if not (base / str(version)).exists():
                claimed = claim(version)
                if claimed is not None:
                    return version, claimed
            version += 1
    check_int("version", version)
    if (base / str(version)).exists() and not overwrite:
        raise FileExistsError(
            f"{base / str(version)} exists; pass overwrite=True (--overwrite) to replace it, "
            f"or leave version out to write version {max(list_versions(base), default=0) + 1}."
        )
    claimed = claim(version)
    if claimed is None:
        raise FileExistsError(f"{base / str(version)} is being written by another export (its claim "
                              f"{base / (_CLAIM_PREFIX + str(version))} is held); try again when it ends.")
    return version, claimed


def _fsync_tree(path):
    """Flushes every file under `path`, then the directories, to the disk:
    a rename is durable only once what it names is."""
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    for root, _, _ in os.walk(path, topdown=False):
        _fsync_directory(root)


def _exchange(first, second):
    """Swaps two directories in one step (Linux `renameat2` with
    `RENAME_EXCHANGE`, through ctypes: Python's `os` has no binding), so an
    overwritten version is never missing; False where the system lacks it."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(first)), at_fdcwd, os.fsencode(str(second)), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _fsync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def build_archive(model, class_names=None, top_k=None, max_image_pixels=vit_images.MAX_IMAGE_PIXELS,
                  tta="none", jit_compile=False):
    """The three signatures (see the module docstring) and the weights they
    read, ready for `write_out(path)`."""

    inference.check_tta(tta)
    if not isinstance(jit_compile, bool):
        raise ValueError(f"jit_compile must be True or False, received {jit_compile!r}.")
    check_int("max_image_pixels", max_image_pixels)
    image_size, classes = _check_model(model)
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    class_names = _check_class_names(class_names, classes)
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, classes)
    check_int("top_k", top_k, high=classes)
    features = keras.Model(model.inputs, models.get_part(model, "head").input, name=f"{model.name}_features")
    # Probabilities first, then the mean over each image and its mirror image.
    probabilities = inference.with_tta(inference.with_probabilities(model), tta)
    run_probabilities, run_features = (lambda images, m=m: m(images, training=False)
                                       for m in (probabilities, features))
    if jit_compile:
        # Only the models' computation: image decoding has no XLA kernels.
        run_probabilities, run_features = (tf.function(f, jit_compile=True, reduce_retracing=True)
                                           for f in (run_probabilities, run_features))
    height, width = image_size

    def decode(image_bytes):
        # One image at a time: images of a request may differ in size and
        # format, and decoding them one after another bounds the memory a
        # request can take to one image of at most max_image_pixels.
        return tf.map_fn(
            lambda one: vit_images.decode_image(one, image_size, max_image_pixels), image_bytes,
            fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32),
            parallel_iterations=1,
        )

    def top_k_outputs(images):
        probs = tf.cast(run_probabilities(images), tf.float32)
        scores, indices = tf.math.top_k(probs, k=top_k)
        labels = tf.constant(class_names, dtype=tf.string)
        return {
            "probabilities": probs,
            "top_k_indices": tf.cast(indices, tf.int32),
            "top_k_scores": scores,
            "top_k_labels": tf.gather(labels, indices),
        }

    def serving_default(image_bytes):
        return top_k_outputs(decode(image_bytes))

    def predict_images(images):
        return top_k_outputs(tf.cast(images, tf.float32))

    def embeddings(image_bytes):
        return {"embeddings": tf.cast(run_features(decode(image_bytes)), tf.float32)}

    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    images_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
    return _Archive(
        {"serving_default": (serving_default, bytes_spec), "predict_images": (predict_images, images_spec),
         "embeddings": (embeddings, bytes_spec)},
        model.weights,
    )


class _Archive:
    """Signatures and the weights they read, written by `write_out(path)`
    with `tf.saved_model.save`.

    Written here rather than with `keras.export.ExportArchive`, which (Keras
    3.15/3.16) traces every signature twice, once to find its variables and
    again inside `tf.saved_model.save`, whose save context is part of
    TensorFlow's trace cache key. Tracking the model with it also stores
    each weight twice, once as its `keras.Variable` wrapper
    (keras-team/keras#23553): twice the files, and more memory where it
    is served. Here each signature is traced once, in the save, and each
    weight stored once: ViT-B/16 exports in 13.4-14 s instead of 31.6-32.5 s
    and takes 348 MB instead of 695; a TensorFlow process that loads it and
    predicts batches of 8 peaks at 1379 MB instead of 1533 (2 cores of an
    AMD EPYC Zen 1, 2026-12-06).
    """

    def __init__(self, signatures, weights):
        self._root = tf.Module()
        self._signatures = {name: tf.function(function, input_signature=[spec], autograph=False)
                            for name, (function, spec) in signatures.items()}
        for name, function in self._signatures.items():
            setattr(self._root, name, function)  # callable after tf.saved_model.load too
        # The TensorFlow variables behind the Keras ones (`.value` on Keras'
        # TensorFlow backend, which `_check_model` requires), each once: a
        # saved function may only capture variables the saved object tracks.
        variables = {id(weight.value): weight.value for weight in weights}
        self._root.weights = list(variables.values())

    def write_out(self, path):
        """Writes the SavedModel to `path`."""
        tf.saved_model.save(self._root, str(path), signatures=self._signatures)


def export_saved_model(model, base_dir, class_names=None, version=None, overwrite=False,
                       top_k=None, max_image_pixels=vit_images.MAX_IMAGE_PIXELS, tta="none", jit_compile=False):
    """Writes `model` as a TF Serving SavedModel version under `base_dir`.

    Args:
        model: a keras_vit classifier (any input size, any dtype policy: the
            outputs are float32).
        base_dir: the model's base directory (TF Serving's `--model_base_path`);
            created if needed.
        class_names: one name per class (default: the model's own
            `class_names`, which named weights and training runs set, else
            "0", "1", ...); they are stored in the SavedModel and returned
            as `top_k_labels`.
        version: the integer version to write; default: one more than the
            highest existing version (1 for an empty directory).
        overwrite: replace an existing `version`.
        top_k: how many classes `top_k_*` hold (default: 5, or all classes
            if fewer).
        max_image_pixels: images whose header declares more pixels are
            refused before decoding (decompression bombs); the default is
            Pillow's limit, `keras_vit.images.MAX_IMAGE_PIXELS`.
        tta: `"flip"`: the probabilities (and top-k) are the mean over each
            image and its mirror image, as `keras_vit.with_flip_tta`, for
            twice the compute; `"none"` (default): the image alone. The
            `embeddings` signature is always the image's own.
        jit_compile: compile the model's computation in the signatures with
            XLA. An int8 model then runs about 4x faster (its products
            otherwise run on TensorFlow's slow int8 kernel; BENCHMARKS.md);
            other precisions gain nothing on CPUs. TF Serving's CPU builds run
            such a SavedModel only with `--xla_cpu_compilation_enabled=true`
            (without it they answer an error); `tf.saved_model.load` and
            `keras-vit serve` need nothing. Default False: TF Serving loads
            the export as it is.

    Returns:
        The path of the version directory, e.g. `export/vit/1`.
    """
    _, classes = _check_model(model)
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, classes)  # resolved here so the metadata records it
    archive = build_archive(model, class_names=class_names, top_k=top_k,
                            max_image_pixels=max_image_pixels, tta=tta, jit_compile=jit_compile)
    metadata = {
        "precision": inference.precision_of(model),
        "jit_compile": jit_compile,
        "tta": tta,
        "top_k": top_k,
        "classes": classes,
        "keras_vit_version": __version__,
    }
    base = pathlib.Path(base_dir)
    if base.exists() and not base.is_dir():
        raise NotADirectoryError(f"{base} exists and is not a directory.")
    base.mkdir(parents=True, exist_ok=True)
    version, claim = _claim_version(base, version, overwrite)
    target = base / str(version)
    try:
        temp = pathlib.Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=base))
    except BaseException:
        claim.unlink(missing_ok=True)
        raise
    try:
        archive.write_out(str(temp / "model"))
        (temp / "model" / METADATA).parent.mkdir()
        (temp / "model" / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        _fsync_tree(temp / "model")
        if not target.exists():
            try:
                os.rename(temp / "model", target)
            except OSError as error:  # created meanwhile by a writer that ignores claims
                raise FileExistsError(f"{target} appeared while this export was written; it is kept.") \
                    from error
        elif not overwrite:
            raise FileExistsError(f"{target} appeared while this export was written; it is kept.")
        elif not _exchange(temp / "model", target):
            # Replace (overwrite=True) where the system cannot swap in one
            # step: the old version aside first, so a reader sees the old
            # one or the new one, never a mixture (a kill between the two
            # renames leaves the old one in the temporary directory).
            os.rename(target, temp / "old")
            os.rename(temp / "model", target)
        _fsync_directory(base)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        claim.unlink(missing_ok=True)
    return str(target)


def read_metadata(version_dir):
    """The metadata an export recorded (`precision`, `tta`, `top_k`,
    `classes`, `keras_vit_version`), or `{}` for a SavedModel without it.

    Args:
        version_dir: a version directory, e.g. `export/vit/1`.
    """
    path = pathlib.Path(version_dir) / METADATA
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
