"""Loading and saving ViT checkpoints: Google `.npz`, timm / Hugging Face
`.safetensors`, and keras_vit's own `.weights.h5`.

Every format is first read into one flat dictionary of NumPy arrays named as
in the original Google checkpoints (`embedding/kernel`, `cls`,
`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`,
...); a model's variables map to those names one to one. Loading checks every
name and shape before it assigns anything, so a bad checkpoint never leaves a
half-loaded model.
"""

import os
import pathlib
import tempfile
import warnings
import zipfile

import keras
import numpy as np

from keras_vit import models, variants
from keras_vit._validation import check_choice

_INTERPOLATIONS = ("bilinear", "bicubic")
# Prefixes under which Google releases nest the parameters: vit_jax's
# training state ("opt/target/") and big_vision ("params/").
_GOOGLE_PREFIXES = ("opt/target/", "params/")
# big_vision names the modules of each block by their position among their
# own kind; vit_jax counts all of a block's modules.
_BIG_VISION_NAMES = {
    "LayerNorm_1/": "LayerNorm_2/",
    "MlpBlock_0/": "MlpBlock_3/",
    "MultiHeadDotProductAttention_0/": "MultiHeadDotProductAttention_1/",
}
_H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


# ---------------------------------------------------------------------------
# Position-embedding resampling
# ---------------------------------------------------------------------------


def _cubic(x, a):
    x = np.abs(x)
    return np.where(
        x <= 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        np.where(x < 2.0, ((x - 5.0) * x + 8.0) * x * a - 4.0 * a, 0.0),
    )


def _interpolation_matrix(in_size, out_size, interpolation, antialias):
    """The (out_size, in_size) matrix of PyTorch's `F.interpolate` in 1-D.

    Written out rather than calling `tf.image.resize` because TensorFlow's
    bicubic kernel uses a = -0.5 and other edge handling than PyTorch's
    (a = -0.75 without antialiasing): matching timm's resampling to float
    precision needs PyTorch's exact weights (align_corners=False).
    """
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    if antialias:
        interp_size = 2 if interpolation == "bilinear" else 4
        support = interp_size / 2 * (scale if scale >= 1.0 else 1.0)
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size)
            j = np.arange(xmin, xmax)
            x = (j - center + 0.5) * invscale
            if interpolation == "bilinear":
                w = np.maximum(0.0, 1.0 - np.abs(x))
            else:  # PIL's bicubic, which PyTorch's antialiased mode follows
                w = _cubic(x, -0.5)
            total = w.sum()
            matrix[i, xmin:xmax] = w / total if total != 0 else w
        return matrix
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        if interpolation == "bilinear":
            src = max(src, 0.0)
            i0 = int(src)
            i1 = min(i0 + 1, in_size - 1)
            lam = src - i0
            matrix[i, i0] += 1.0 - lam
            matrix[i, i1] += lam
        else:
            i0 = int(np.floor(src))
            t = src - i0
            coeffs = _cubic(np.array([t + 1.0, t, 1.0 - t, 2.0 - t]), -0.75)
            for offset, c in zip(range(-1, 3), coeffs):
                matrix[i, min(max(i0 + offset, 0), in_size - 1)] += c
    return matrix


def resample_position_embedding(
    position_embedding,
    new_grid,
    old_grid=None,
    num_prefix_tokens=1,
    interpolation="bilinear",
    antialias=False,
):
    """Resamples a ViT position embedding to another grid of patches.

    As timm and vit_jax do: the class token's embedding is kept, the rest is
    reshaped to its 2-D grid, interpolated to `new_grid` and flattened again.
    The interpolation weights are PyTorch's `F.interpolate` weights
    (`align_corners=False`), so the result equals timm's
    `resample_abs_pos_embed` with the same `interpolation` and `antialias`.
    The defaults (bilinear, no antialiasing) are those of timm's loader for
    Google `.npz` checkpoints.

    Args:
        position_embedding: array of shape `(1, num_prefix_tokens + h * w, D)`.
        new_grid: `(new_h, new_w)`, the target grid of patches.
        old_grid: `(h, w)`; inferred as a square grid when `None`.
        num_prefix_tokens: number of leading tokens (class token) to keep.
        interpolation: `"bilinear"` or `"bicubic"`.
        antialias: whether to use PyTorch's antialiased kernels (as timm's
            `checkpoint_filter_fn` does for state dicts).

    Returns:
        A float32 array of shape `(1, num_prefix_tokens + new_h * new_w, D)`.

    Example:

    >>> embedding = np.random.default_rng(0).normal(size=(1, 197, 8))
    >>> keras_vit.resample_position_embedding(embedding, (24, 24)).shape
    (1, 577, 8)
    """
    check_choice("interpolation", interpolation, _INTERPOLATIONS)
    embedding = np.asarray(position_embedding, dtype=np.float32)
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise ValueError(
            "position_embedding must have shape (1, tokens, hidden_dim), "
            f"received {embedding.shape}."
        )
    prefix, grid = embedding[:, :num_prefix_tokens], embedding[0, num_prefix_tokens:]
    if old_grid is None:
        side = int(round(np.sqrt(grid.shape[0])))
        if side * side != grid.shape[0]:
            raise ValueError(
                f"position_embedding holds {grid.shape[0]} grid tokens after "
                f"{num_prefix_tokens} prefix token(s), which is not a square "
                "grid: pass old_grid=(height, width)."
            )
        old_grid = (side, side)
    old_h, old_w = old_grid
    new_h, new_w = new_grid
    if old_h * old_w != grid.shape[0]:
        raise ValueError(
            f"old_grid={tuple(old_grid)} needs {old_h * old_w} tokens, "
            f"position_embedding has {grid.shape[0]}."
        )
    grid = grid.reshape(old_h, old_w, -1).astype(np.float64)
    rows = _interpolation_matrix(old_h, new_h, interpolation, antialias)
    cols = _interpolation_matrix(old_w, new_w, interpolation, antialias)
    resized = np.einsum("ih,jw,hwd->ijd", rows, cols, grid)
    resized = resized.reshape(1, new_h * new_w, -1).astype(np.float32)
    return np.concatenate([prefix, resized], axis=1)


# ---------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------


def _sniff_format(path):
    name = path.name.lower()
    with open(path, "rb") as f:
        head = f.read(16)
    if name.endswith(".npz") or head.startswith(b"PK"):
        return "npz"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".h5") or head.startswith(_H5_SIGNATURE):
        return "h5"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 length + JSON
        return "safetensors"
    raise CheckpointError(
        f"{path} is not a checkpoint keras_vit can read: expected a Google "
        "'.npz', a timm or Hugging Face '.safetensors', or a keras_vit "
        "'.weights.h5' file."
    )


def _read_npz(path):
    if not zipfile.is_zipfile(path):
        # np.load would try anything that is not a zip as a pickle and refuse
        # it ("contains pickled data"): say what is really wrong.
        raise CheckpointError(
            f"Cannot read {path} as a '.npz' checkpoint: it is not a zip archive "
            "(a '.npz' is one); the file is truncated or corrupted."
        )
    try:
        # allow_pickle=False: a weights file never runs code when read.
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"Cannot read {path} as a '.npz' checkpoint: {error}"
        ) from error


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"Cannot read {path} as a '.safetensors' checkpoint: {error}"
        ) from error


def _strip_google_prefix(arrays):
    for prefix in _GOOGLE_PREFIXES:
        if f"{prefix}embedding/kernel" in arrays:
            return {
                key[len(prefix):]: value
                for key, value in arrays.items()
                if key.startswith(prefix)
            }
    return arrays


def _google_from_npz(arrays):
    arrays = _strip_google_prefix(arrays)
    renamed = {}
    for key, value in arrays.items():
        if key.startswith("Transformer/encoderblock_"):
            for old, new in _BIG_VISION_NAMES.items():
                key = key.replace("/" + old, "/" + new)
        renamed[key] = value
    return renamed


def _linear(state, name):
    """A PyTorch Linear's (out, in) weight as a Keras (in, out) kernel."""
    return state.pop(f"{name}.weight").T, state.pop(f"{name}.bias")


def _google_from_timm(state, num_heads):
    state = dict(state)
    out = {}
    weight = state.pop("patch_embed.proj.weight")
    out["embedding/kernel"] = weight.transpose(2, 3, 1, 0)
    out["embedding/bias"] = state.pop("patch_embed.proj.bias")
    out["cls"] = state.pop("cls_token")
    out["Transformer/posembed_input/pos_embedding"] = state.pop("pos_embed")
    index = 0
    while f"blocks.{index}.norm1.weight" in state:
        src, dst = f"blocks.{index}.", f"Transformer/encoderblock_{index}/"
        attn = dst + "MultiHeadDotProductAttention_1/"
        out[dst + "LayerNorm_0/scale"] = state.pop(src + "norm1.weight")
        out[dst + "LayerNorm_0/bias"] = state.pop(src + "norm1.bias")
        qkv_kernel, qkv_bias = _linear(state, src + "attn.qkv")
        hidden_dim = qkv_kernel.shape[0]
        head_dim = hidden_dim // num_heads
        for part, name in enumerate(("query", "key", "value")):
            columns = slice(part * hidden_dim, (part + 1) * hidden_dim)
            out[attn + f"{name}/kernel"] = qkv_kernel[:, columns].reshape(
                hidden_dim, num_heads, head_dim
            )
            out[attn + f"{name}/bias"] = qkv_bias[columns].reshape(num_heads, head_dim)
        kernel, bias = _linear(state, src + "attn.proj")
        out[attn + "out/kernel"] = kernel.reshape(num_heads, head_dim, -1)
        out[attn + "out/bias"] = bias
        out[dst + "LayerNorm_2/scale"] = state.pop(src + "norm2.weight")
        out[dst + "LayerNorm_2/bias"] = state.pop(src + "norm2.bias")
        for layer in (0, 1):
            kernel, bias = _linear(state, src + f"mlp.fc{layer + 1}")
            out[dst + f"MlpBlock_3/Dense_{layer}/kernel"] = kernel
            out[dst + f"MlpBlock_3/Dense_{layer}/bias"] = bias
        index += 1
    out["Transformer/encoder_norm/scale"] = state.pop("norm.weight")
    out["Transformer/encoder_norm/bias"] = state.pop("norm.bias")
    if "head.weight" in state:
        out["head/kernel"], out["head/bias"] = _linear(state, "head")
    # Whatever is left is reported as unexpected by the loader.
    out.update({f"timm:{key}": value for key, value in state.items()})
    return out


def _google_from_huggingface(state, num_heads):
    state = dict(state)
    prefix = "vit." if "vit.embeddings.cls_token" in state else ""
    out = {}
    emb = prefix + "embeddings."
    weight = state.pop(emb + "patch_embeddings.projection.weight")
    out["embedding/kernel"] = weight.transpose(2, 3, 1, 0)
    out["embedding/bias"] = state.pop(emb + "patch_embeddings.projection.bias")
    out["cls"] = state.pop(emb + "cls_token")
    out["Transformer/posembed_input/pos_embedding"] = state.pop(emb + "position_embeddings")
    index = 0
    while f"{prefix}encoder.layer.{index}.layernorm_before.weight" in state:
        src = f"{prefix}encoder.layer.{index}."
        dst = f"Transformer/encoderblock_{index}/"
        attn = dst + "MultiHeadDotProductAttention_1/"
        out[dst + "LayerNorm_0/scale"] = state.pop(src + "layernorm_before.weight")
        out[dst + "LayerNorm_0/bias"] = state.pop(src + "layernorm_before.bias")
        for name in ("query", "key", "value"):
            kernel, bias = _linear(state, src + f"attention.attention.{name}")
            hidden_dim = kernel.shape[0]
            out[attn + f"{name}/kernel"] = kernel.reshape(hidden_dim, num_heads, -1)
            out[attn + f"{name}/bias"] = bias.reshape(num_heads, -1)
        kernel, bias = _linear(state, src + "attention.output.dense")
        out[attn + "out/kernel"] = kernel.reshape(num_heads, -1, kernel.shape[-1])
        out[attn + "out/bias"] = bias
        out[dst + "LayerNorm_2/scale"] = state.pop(src + "layernorm_after.weight")
        out[dst + "LayerNorm_2/bias"] = state.pop(src + "layernorm_after.bias")
        kernel, bias = _linear(state, src + "intermediate.dense")
        out[dst + "MlpBlock_3/Dense_0/kernel"], out[dst + "MlpBlock_3/Dense_0/bias"] = kernel, bias
        kernel, bias = _linear(state, src + "output.dense")
        out[dst + "MlpBlock_3/Dense_1/kernel"], out[dst + "MlpBlock_3/Dense_1/bias"] = kernel, bias
        index += 1
    out["Transformer/encoder_norm/scale"] = state.pop(prefix + "layernorm.weight")
    out["Transformer/encoder_norm/bias"] = state.pop(prefix + "layernorm.bias")
    # ViTModel's pooler is the tanh pre-logits layer of the original.
    if prefix + "pooler.dense.weight" in state:
        out["pre_logits/kernel"], out["pre_logits/bias"] = _linear(state, prefix + "pooler.dense")
    if "classifier.weight" in state:
        out["head/kernel"], out["head/bias"] = _linear(state, "classifier")
    out.update({f"transformers:{key}": value for key, value in state.items()})
    return out


def read_checkpoint(path, num_heads):
    """Reads a `.npz` or `.safetensors` checkpoint into Google-named arrays.

    Args:
        path: the checkpoint file.
        num_heads: attention heads of the model (PyTorch layouts keep the
            heads fused in one axis).

    Returns:
        A dict from Google checkpoint names to NumPy arrays.
    """
    path = pathlib.Path(path)
    fmt = _sniff_format(path)
    if fmt == "npz":
        arrays = _google_from_npz(_read_npz(path))
        if "embedding/kernel" not in arrays:
            raise CheckpointError(
                f"{path} is a '.npz' file but not a ViT checkpoint: it has no "
                "'embedding/kernel' array (found "
                f"{', '.join(sorted(arrays)[:5]) or 'no arrays'})."
            )
        return arrays
    if fmt == "safetensors":
        state = _read_safetensors(path)
        try:
            if "patch_embed.proj.weight" in state:
                return _google_from_timm(state, num_heads)
            if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
                return _google_from_huggingface(state, num_heads)
        except KeyError as error:
            raise CheckpointError(
                f"{path}: the state dict lacks {error.args[0]!r}, which a ViT "
                "checkpoint must have."
            ) from error
        except ValueError as error:  # a reshape to the model's heads failed
            raise CheckpointError(
                f"{path}: cannot split its attention weights into "
                f"num_heads={num_heads} heads: {error}"
            ) from error
        raise CheckpointError(
            f"{path} is a '.safetensors' file but neither a timm nor a Hugging "
            "Face ViT state dict (no 'patch_embed.proj.weight' or "
            "'embeddings.patch_embeddings.projection.weight')."
        )
    raise CheckpointError(f"{path} is a Keras '.weights.h5' file, not a .npz/.safetensors.")


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


# ---------------------------------------------------------------------------
# Model variables and their checkpoint names
# ---------------------------------------------------------------------------


def _checkpoint_variables(model):
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


def _plan(model, arrays, path, interpolation, antialias):
    """Matches checkpoint arrays to model variables; raises before any change."""
    pairs = _checkpoint_variables(model)
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
        assignments.append((variable, value))

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


# ---------------------------------------------------------------------------
# Keras .weights.h5
# ---------------------------------------------------------------------------


def _h5_arrays(path):
    import h5py

    arrays = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            arrays[name] = obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    # h5py reports a damaged file as OSError, RuntimeError, KeyError or
    # ValueError depending on where the damage is.
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"Cannot read {path} as a '.weights.h5' file: {error}") from error
    return arrays


def _load_keras_h5(model, path, interpolation, antialias):
    """Loads a keras_vit `.weights.h5`, reconciling grid and head like the rest.

    Keras decides where each variable lives in the file; rather than
    re-deriving its layout, the model's own weights are written to a temporary
    file to learn it, the checkpoint's arrays are checked against it (position
    embedding resampled, a head of another size kept fresh), and the merged
    file is loaded by Keras itself.
    """
    import h5py

    source = _h5_arrays(path)
    encoder = models.get_part(model, "patch_encoder")
    head = models.get_part(model, "head")
    pos_shape = tuple(encoder.position_embedding.shape)
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "model.weights.h5")
        model.save_weights(reference)
        target = _h5_arrays(reference)
        # Keras names the file's groups after layer classes, not layer names:
        # the head is the group holding exactly its kernel and bias shapes.
        head_shapes = (
            sorted([tuple(head.kernel.shape), tuple(head.bias.shape)]) if head else None
        )
        groups = {}
        for key, value in target.items():
            groups.setdefault(key.rsplit("/", 1)[0], []).append(value.shape)
        head_groups = {
            group for group, shapes in groups.items() if sorted(shapes) == head_shapes
        }
        merged = {}
        fresh_head = None
        for key, value in target.items():
            if key not in source:
                raise CheckpointError(
                    f"{path} lacks {key!r} (shape {value.shape}), which model "
                    f"{model.name!r} needs."
                )
            found = source[key]
            if found.shape != value.shape and value.shape == pos_shape and found.ndim == 3 \
                    and found.shape[2] == pos_shape[2] and "patch_encoder" in key:
                found = resample_position_embedding(
                    found, models.patch_grid(model), interpolation=interpolation, antialias=antialias
                )
            elif found.shape != value.shape and key.rsplit("/", 1)[0] in head_groups \
                    and found.shape[:-1] == value.shape[:-1]:
                fresh_head = (found.shape[-1], value.shape[-1])
                found = value
            if found.shape != value.shape:
                raise CheckpointError(
                    f"{path}: {key!r} has shape {found.shape} but model "
                    f"{model.name!r} expects {value.shape}."
                )
            merged[key] = found
        unexpected = sorted(set(source) - set(target))
        if unexpected:
            raise CheckpointError(
                f"{path} has {len(unexpected)} array(s) that model {model.name!r} "
                f"has no variable for: {', '.join(unexpected[:8])}."
            )
        if fresh_head:
            warnings.warn(
                f"the head of {path} has {fresh_head[0]} classes but the model has "
                f"classes={fresh_head[1]}: the model's head is left freshly "
                "initialised (the fine-tuning case).",
                stacklevel=3,
            )
        with h5py.File(reference, "r+") as f:
            for key, value in merged.items():
                f[key][...] = value
        model.load_weights(reference)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


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
    - A missing or unexpected array, or a shape that does not fit, raises
      `CheckpointError` (a `ValueError`) naming the variable and both shapes,
      before any variable is changed.

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
    check_choice("interpolation", interpolation, _INTERPOLATIONS)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, received {path!r}.")
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if _sniff_format(path) == "h5":
        _load_keras_h5(model, path, interpolation, antialias)
        return model
    blocks = models.get_blocks(model)
    heads = blocks[0].num_heads if blocks else 1
    arrays = read_checkpoint(path, num_heads=heads)
    for variable, value in _plan(model, arrays, path, interpolation, antialias):
        variable.assign(value.astype(variable.dtype))
    return model


def load_model(path, safe_mode=True, compile=True):
    """Loads a `.keras` model file, in Keras safe mode unless told otherwise.

    Safe mode refuses to deserialise Python code (a `Lambda` layer's
    bytecode), so loading a file from elsewhere never runs code from it. A
    damaged file (truncated, corrupted, not a `.keras` archive) raises
    `CheckpointError` naming it, where Keras alone may say "File not found"
    or fail deep inside its loader.

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
        return keras.saving.load_model(path, safe_mode=safe_mode, compile=compile)
    except Exception as error:  # noqa: BLE001 -- Keras raises many kinds here
        message = " ".join(str(error).split())
        raise CheckpointError(f"Cannot load {path}: {message}") from error


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
    for name, variable in _checkpoint_variables(model):
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
