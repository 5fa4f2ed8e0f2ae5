"""The model's side of a checkpoint: each variable of a keras_vit model under
its name in the original Google checkpoints, the `.weights.h5` files whose
layout is the model's own, and `save_npz`."""

import os
import pathlib
import re
import tempfile

import keras
import numpy as np

from keras_vit import models
from keras_vit.weights.formats import CheckpointError, check_declared_sizes

# Keras keeps a layer's variables in its group's `vars` subgroup, as
# `vars/0`, `vars/1`, ... in the order the layer created them.
_H5_VARIABLE = re.compile(r"^(?P<group>.+)/vars/(?P<index>\d+)$")


def checkpoint_variables(model):
    """Lists `(checkpoint_name, variable)` for every weight of a keras_vit model."""
    encoder = models.get_part(model, "patch_encoder")
    norm = models.get_part(model, "encoder_norm")
    if encoder is None or norm is None:
        raise CheckpointError(
            f"Model {model.name!r} was not built by keras_vit (no PatchEncoder "
            "or no 'encoder_norm' layer): checkpoints load into models from "
            "keras_vit.ViT and its builders."
        )
    pairs = [
        ("embedding/kernel", encoder.projection.kernel),
        ("embedding/bias", encoder.projection.bias),
        ("cls", encoder.class_token),
        ("Transformer/posembed_input/pos_embedding", encoder.position_embedding),
    ]
    for index, block in enumerate(models.get_blocks(model)):
        prefix = f"Transformer/encoderblock_{index}/"
        attn = prefix + "MultiHeadDotProductAttention_1/"
        pairs += [
            (prefix + "LayerNorm_0/scale", block.norm1.gamma),
            (prefix + "LayerNorm_0/bias", block.norm1.beta),
        ]
        for name, dense in (
            ("query", block.attn.query_dense),
            ("key", block.attn.key_dense),
            ("value", block.attn.value_dense),
            ("out", block.attn.output_dense),
        ):
            pairs += [(attn + f"{name}/kernel", dense.kernel), (attn + f"{name}/bias", dense.bias)]
        pairs += [
            (prefix + "LayerNorm_2/scale", block.norm2.gamma),
            (prefix + "LayerNorm_2/bias", block.norm2.beta),
            (prefix + "MlpBlock_3/Dense_0/kernel", block.mlp_fc1.kernel),
            (prefix + "MlpBlock_3/Dense_0/bias", block.mlp_fc1.bias),
            (prefix + "MlpBlock_3/Dense_1/kernel", block.mlp_fc2.kernel),
            (prefix + "MlpBlock_3/Dense_1/bias", block.mlp_fc2.bias),
        ]
    pairs += [
        ("Transformer/encoder_norm/scale", norm.gamma),
        ("Transformer/encoder_norm/bias", norm.beta),
    ]
    for name in ("pre_logits", "head"):
        layer = models.get_part(model, name)
        if layer is not None:
            pairs += [(f"{name}/kernel", layer.kernel), (f"{name}/bias", layer.bias)]
    return pairs


def _by_layer(model):
    """`{(layer path, index): checkpoint name}`: where Keras' `.weights.h5`
    keeps each checkpoint variable of `model`."""
    names, counts = {}, {}
    for name, variable in checkpoint_variables(model):
        layer = variable.path.rsplit("/", 1)[0]
        index = counts.get(layer, 0)
        counts[layer] = index + 1
        names[(layer, index)] = name
    # Named even when the model lacks them, so that the loader can drop a
    # head or pre-logits layer the model does not have, as for other formats.
    for layer in ("pre_logits", "head"):
        names.setdefault((layer, 0), f"{layer}/kernel")
        names.setdefault((layer, 1), f"{layer}/bias")
    return names


def _h5_layer_paths(path, read_arrays):
    """Reads a `.weights.h5`: `{key: array}` (when `read_arrays`) and
    `{key: (layer path, index)}`, the layer path made of the layer names
    Keras records on each `vars` group (`None` where it recorded none)."""
    import h5py

    arrays, places, layer_names = {}, {}, {}

    # Only what visititems reaches is read: it follows no soft or external
    # link, so the file cannot make h5py open another one.
    datasets = []

    def visit(key, obj):
        if isinstance(obj, h5py.Dataset):
            datasets.append(key)
            places[key] = None
        elif key.endswith("/vars") and "name" in obj.attrs:
            name = obj.attrs["name"]
            layer_names[key[: -len("/vars")]] = name.decode() if isinstance(name, bytes) else str(name)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
            if read_arrays:
                # Sizes from the datasets' headers, bounded before any data
                # is read (a compressed dataset can declare gigabytes).
                check_declared_sizes(path, [(key, f[key].dtype, f[key].shape) for key in datasets])
                for key in datasets:
                    arrays[key] = f[key][()]
    # h5py reports a damaged file as OSError, RuntimeError, KeyError or
    # ValueError depending on where the damage is.
    except CheckpointError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, MemoryError) as error:
        raise CheckpointError(f"Cannot read {path} as a '.weights.h5' file: {error or type(error).__name__}") \
            from error
    for key in places:
        match = _H5_VARIABLE.match(key)
        if match and match.group("group") in layer_names:  # its own layer is named
            parts = match.group("group").split("/")
            groups = ("/".join(parts[:end]) for end in range(1, len(parts) + 1))
            layer = "/".join(layer_names[g] for g in groups if g in layer_names)
            places[key] = (layer, int(match.group("index")))
    return arrays, places


def read_keras_h5(path, model):
    """Reads a keras_vit `.weights.h5` into the checkpoint names of `model`.

    Keras decides where each variable lives in the file and records each
    layer's name there; those names and the order of `vars/<index>` give the
    checkpoint name. A file written by a Keras that records no names is read
    against the layout of the model's own weights, written to a temporary
    file. Arrays no variable of the model matches keep their key in the file.

    Args:
        path: the `.weights.h5` file.
        model: the keras_vit model it is meant for.

    Returns:
        A dict from checkpoint names (or file keys) to NumPy arrays.
    """
    names = _by_layer(model)
    arrays, places = _h5_layer_paths(path, read_arrays=True)
    if any(place is None for place in places.values()):
        with tempfile.TemporaryDirectory() as tmp:
            reference = os.path.join(tmp, "model.weights.h5")
            model.save_weights(reference)
            _, known = _h5_layer_paths(reference, read_arrays=False)
        places = {key: place or known.get(key) for key, place in places.items()}
        if arrays and not any(places.values()):
            raise CheckpointError(
                f"Cannot read {path}: neither it nor this Keras's own '.weights.h5' files "
                "record layer names, which tell keras_vit which array is which; save the "
                "weights with a newer Keras, or as '.npz' with keras_vit.save_npz."
            )
    return {names.get(places[key], key): value for key, value in arrays.items()}


def save_npz(model, path):
    """Writes a keras_vit model's weights as a Google-format `.npz` checkpoint.

    The file has the names and shapes of the original ViT releases (e.g.
    `embedding/kernel` of shape `(16, 16, 3, 768)`), so vit_jax, timm's
    `.npz` loader and `keras_vit.load_weights` all read it. It is written to
    a temporary file and renamed into place: an existing file is replaced
    whole or not at all.

    Args:
        model: a model built by `keras_vit.ViT` or one of its builders.
        path: destination; `.npz` is appended by NumPy if missing.

    Returns:
        The path written, as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    patches = models.get_part(model, "patches")
    arrays = {}
    for name, variable in checkpoint_variables(model):
        value = keras.ops.convert_to_numpy(variable).astype(np.float32)
        if name == "embedding/kernel":
            p = patches.patch_size
            value = value.reshape(p, p, -1, value.shape[-1])
        arrays[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
