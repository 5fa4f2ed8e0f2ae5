"""Loading checkpoints into a model: the one reconciliation policy that every
format goes through (`reconcile`), `load_weights`, `check_checkpoint` for a
downloaded named checkpoint, and `load_model` for `.keras` files."""

import os
import pathlib
import warnings
import zipfile

import keras
import numpy as np

from keras_vit import models, variants
from keras_vit._validation import check_choice
from keras_vit.inference import collect_garbage_once, with_xla_if_int8
from keras_vit.weights.formats import CheckpointError, is_number_dtype, read_checkpoint, sniff_format
from keras_vit.weights.layout import checkpoint_variables, read_keras_h5
from keras_vit.weights.resample import INTERPOLATIONS, resample_position_embedding


def reconcile(model, arrays, path, interpolation="bilinear", antialias=False):
    """Matches checkpoint arrays to the model's variables: the one policy of
    every format, decided here before any variable changes.

    A position embedding of another grid is resampled, a head of another
    size (or none) leaves the model's head fresh with a warning, a pre-logits
    layer the model lacks is dropped with a warning, a headless model ignores
    the head; anything else missing, unexpected or misshapen raises.

    Args:
        model: a keras_vit model.
        arrays: `{checkpoint name: array}`, as the readers return them.
        path: the checkpoint file, for the messages.
        interpolation, antialias: as in `resample_position_embedding`.

    Returns:
        `[(variable, value)]`, each value in the variable's shape.

    Raises:
        CheckpointError: naming the array, the variable and both shapes.
    """
    pairs = checkpoint_variables(model)
    wanted = {name for name, _ in pairs}
    remaining = dict(arrays)
    assignments = []
    fresh_head_reason = None

    head_kernel = arrays.get("head/kernel")
    model_head = dict(pairs).get("head/kernel")
    if model_head is not None and head_kernel is None:
        fresh_head_reason = f"{path} has no head"
    elif model_head is not None and head_kernel.shape != tuple(model_head.shape):
        if head_kernel.ndim == 2 and head_kernel.shape[1] != model_head.shape[1]:
            fresh_head_reason = (
                f"the head of {path} has {head_kernel.shape[1]} classes but the "
                f"model has classes={model_head.shape[1]}"
            )
        elif head_kernel.ndim == 2:
            fresh_head_reason = (
                f"the head of {path} takes {head_kernel.shape[0]} features (its "
                f"pre-logits width) but the model's takes {model_head.shape[0]}"
            )
    if fresh_head_reason:
        remaining.pop("head/kernel", None)
        remaining.pop("head/bias", None)

    for name, variable in pairs:
        if fresh_head_reason and name.startswith("head/"):
            continue
        if name not in remaining:
            raise CheckpointError(
                f"{path} lacks {name!r}, needed for variable {variable.path!r} "
                f"of shape {tuple(variable.shape)}."
            )
        value = np.asarray(remaining.pop(name))
        expected = tuple(variable.shape)
        if name == "embedding/kernel" and value.ndim == 4:
            if value.size == int(np.prod(expected)) and value.shape[-1] == expected[-1]:
                value = value.reshape(expected)
        elif name == "Transformer/posembed_input/pos_embedding" and value.shape != expected:
            if value.ndim == 3 and value.shape[0] == 1 and value.shape[2] == expected[2]:
                value = resample_position_embedding(
                    value, models.patch_grid(model), interpolation=interpolation, antialias=antialias
                )
        if value.shape != expected:
            raise CheckpointError(
                f"{path}: {name!r} has shape {value.shape} but variable "
                f"{variable.path!r} expects {expected}."
            )
        assignments.append((variable, _checked_value(value, variable, name, path)))

    if "head/kernel" not in wanted:
        # A headless model (include_top=False) takes the backbone only.
        remaining.pop("head/kernel", None)
        remaining.pop("head/bias", None)
    if "pre_logits/kernel" not in wanted and "pre_logits/kernel" in remaining:
        warnings.warn(
            f"{path} has a pre-logits layer of width "
            f"{remaining['pre_logits/kernel'].shape[-1]} that the model does not "
            "(representation_size=None): it is not loaded, as in vit_jax's "
            "fine-tuning.",
            stacklevel=3,
        )
        remaining.pop("pre_logits/kernel")
        remaining.pop("pre_logits/bias", None)
    if remaining:
        listed = ", ".join(
            f"{key!r} {tuple(np.shape(value))}" for key, value in sorted(remaining.items())[:8]
        )
        raise CheckpointError(
            f"{path} has {len(remaining)} array(s) that model {model.name!r} has "
            f"no variable for: {listed}."
        )
    if fresh_head_reason:
        warnings.warn(
            f"{fresh_head_reason}: the model's head is left freshly initialised "
            "(the fine-tuning case).",
            stacklevel=3,
        )
    return assignments


def _checked_value(value, variable, name, path):
    """`value` cast to `variable`'s dtype, after checking that it holds
    numbers and that all of them are finite: checked for every array before
    any variable changes, so a file with one bad array is refused whole."""
    dtype = value.dtype
    if not is_number_dtype(dtype):
        raise CheckpointError(
            f"{path}: {name!r} has dtype {dtype} but variable {variable.path!r} takes numbers "
            f"({variable.dtype})."
        )
    with np.errstate(over="ignore"):  # an overflow shows as infinity, refused below
        cast = np.asarray(value, dtype=variable.dtype)
    finite = np.isfinite(cast)
    if not finite.all():
        cast_note = f" after the cast to {variable.dtype}" if dtype != cast.dtype else ""
        raise CheckpointError(
            f"{path}: {name!r} (shape {value.shape}) holds {int(finite.size - finite.sum())} values that "
            f"are not finite (NaN or infinity{cast_note}) for variable {variable.path!r}: the file is "
            "damaged or was saved from a diverged model."
        )
    return cast


def load_weights(model, path, interpolation="bilinear", antialias=False):
    """Loads a ViT checkpoint into a keras_vit model.

    Formats: Google `.npz` (ViT paper, AugReg and big_vision releases, with
    or without their `opt/target/` or `params/` prefix), timm and Hugging
    Face `.safetensors` state dicts (read with safetensors' NumPy API, no
    PyTorch needed), and keras_vit's own `.weights.h5`.

    - A checkpoint trained at another resolution has its position embedding
      resampled to the model's grid (see `resample_position_embedding`).
    - A head with another number of classes than the model's, or no head,
      leaves the model's head freshly initialised, with a warning naming both
      numbers; a headless model (`include_top=False`) ignores the head.
    - A missing or unexpected array, a shape that does not fit, an array of
      non-numbers, or values that are not finite (NaN, infinity) raise
      `CheckpointError` (a `ValueError`) naming the array and the variable,
      before any variable is changed. Array sizes are read from the file's
      headers and bounded before any data is read (at most `formats.memory_limit()`).

    Args:
        model: a model built by `keras_vit.ViT` or one of its builders.
        path: the checkpoint file.
        interpolation: `"bilinear"` (default, as timm's `.npz` loader) or
            `"bicubic"` (as timm's state-dict loader) for resampling.
        antialias: use antialiased resampling kernels (timm's state-dict
            loader uses them).

    Returns:
        The model, for chaining.

    Example:

    >>> model = keras_vit.ViTTest4(input_shape=(32, 32, 3), classes=10)
    >>> path = keras_vit.save_npz(model, "test4.npz")
    >>> bigger = keras_vit.ViTTest4(input_shape=(64, 64, 3), classes=10)
    >>> bigger = keras_vit.load_weights(bigger, path)  # 8x8 grid -> 16x16
    >>> tuple(bigger.get_layer("patch_encoder").position_embedding.shape)
    (1, 257, 16)
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, received {path!r}.")
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if sniff_format(path) == "h5":
        arrays = read_keras_h5(path, model)
    else:
        blocks = models.get_blocks(model)
        arrays = read_checkpoint(path, num_heads=blocks[0].num_heads if blocks else 1)
    # Every value is checked and cast by reconcile before the first assignment.
    for variable, value in reconcile(model, arrays, path, interpolation, antialias):
        variable.assign(value)
    return model


def load_model(path, safe_mode=True, compile=True):
    """Loads a `.keras` model file, in Keras safe mode unless told otherwise.

    Safe mode refuses to deserialise Python code (a `Lambda` layer's
    bytecode), so loading a file from elsewhere never runs code from it. A
    damaged file (truncated, corrupted, not a `.keras` archive) raises
    `CheckpointError` naming it, where Keras alone may say "File not found"
    or fail deep inside its loader. An int8 model (`with_precision(model,
    "int8")`, saved) comes back compiled by XLA, as `with_xla_if_int8`. On
    the PyTorch backend the model runs eagerly, as Keras' `jit_compile="auto"`
    does there, even if the file was saved with `jit_compile=True` (a model
    compiled on JAX, where "auto" means XLA): `torch.compile` recompiles for
    every new batch shape, which made one evaluation of a small model on the
    CPU take minutes.

    Args:
        path: the `.keras` file.
        safe_mode: passed to `keras.saving.load_model`; `False` only for files
            you trust.
        compile: restore the training configuration (optimizer, loss).

    Returns:
        The model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, received {path!r}.")
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Cannot load {path}: it is not a '.keras' model file (a zip "
            "archive); the file is truncated or corrupted."
        )
    try:
        with collect_garbage_once():  # quantized layers drop float kernels as they load
            model = keras.saving.load_model(path, safe_mode=safe_mode, compile=compile)
    except Exception as error:  # noqa: BLE001 -- Keras raises many kinds here
        message = " ".join(str(error).split())
        raise CheckpointError(f"Cannot load {path}: {message}") from error
    if keras.backend.backend() == "torch" and model.jit_compile:
        model.jit_compile = False
    return with_xla_if_int8(model)


def check_checkpoint(path, variant, classes, image_size):
    """Checks that `path` holds a `variant` ViT with a `classes`-class head.

    Used on a downloaded named checkpoint before it enters the cache: a file
    that reads but is not the checkpoint the table promises (another size, an
    error page saved as a file) never lands there.

    Args:
        path: the checkpoint file.
        variant: the variant string, e.g. `"B/16"`.
        classes: the classes its head must have (0: no head).
        image_size: the resolution its position embedding must fit.

    Raises:
        CheckpointError: naming the array and both shapes.
    """
    config = variants.get_config(variant)
    arrays = read_checkpoint(path, num_heads=config.num_heads)
    d, p = config.hidden_dim, config.patch_size
    tokens = (image_size // p) ** 2 + 1
    last = f"Transformer/encoderblock_{config.num_layers - 1}/MlpBlock_3/Dense_0/kernel"
    expected = {
        "embedding/kernel": (p, p, 3, d),
        "Transformer/posembed_input/pos_embedding": (1, tokens, d),
        last: (d, config.mlp_dim),
        "Transformer/encoder_norm/scale": (d,),
    }
    for name, shape in expected.items():
        found = arrays.get(name)
        if found is None or tuple(found.shape) != shape:
            raise CheckpointError(
                f"{path} is not a ViT-{variant} checkpoint at {image_size}x{image_size}: {name!r} "
                f"is {'missing' if found is None else tuple(found.shape)}, expected {shape}."
            )
    if f"Transformer/encoderblock_{config.num_layers}/LayerNorm_0/scale" in arrays:
        raise CheckpointError(f"{path} has more than the {config.num_layers} blocks of ViT-{variant}.")
    head = arrays.get("head/kernel")
    found = 0 if head is None else int(head.shape[-1])
    if found != classes:
        raise CheckpointError(f"{path} has a head of {found} classes, expected {classes}.")
