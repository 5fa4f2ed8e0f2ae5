"""The one switch for keras_vit's fast kernels, and the choice between them.

Like timm's `use_fused_attn()`: `use_fast_kernels()` says whether layers
built from now on take the backend's fast paths, from
`set_fast_kernels(...)` if called, else the environment variable
`KERAS_VIT_FAST_KERNELS` (`1`, the default, or `0`). Layers read it when
they are constructed (`LayerNorm`, `TransformerBlock`), so one model keeps
one choice in every graph: `predict`, `fit`, your own `tf.function` and an
exported SavedModel alike.

With the switch off, or on a backend without fast paths, every layer runs
Keras' plain layers and ops: the reference path. With it on, on
TensorFlow (`keras_vit.backend.tensorflow`):

| call | LayerNorm | GELU | attention |
|---|---|---|---|
| training (`training=True`), not on a TPU | XLA kernel, own gradient | XLA kernel, own gradient | 2-D matmuls |
| inference, float32, CPU with oneDNN | oneDNN-fused pattern | fused into its matmul by oneDNN | 2-D matmuls |
| inference, otherwise | Keras | Keras | 2-D matmuls |

The 2-D matmuls read each projection's `kernel`, which Keras merges with
its LoRA factors where `enable_lora` was called, so LoRA applies there as
in Keras' own layers. Quantized attention sublayers are called as Keras
layers, but for one case:

| call | int8 `Dense` and attention projections (Keras' `quantize("int8")`) |
|---|---|
| the model's own inference graphs (`predict`, `evaluate`, the eager `model(x)` of keras_vit models), CPU with oneDNN and VNNI or AMX | oneDNN's int8 matrix product (`int8_dense`); a block whose six projections are all int8 runs as one unit (`int8_block`): the products on oneDNN, what lies between two of them as one XLA kernel |
| any other graph (an exported SavedModel, your own `tf.function`), or another CPU | Keras (XLA-compiled where `with_precision` set `jit_compile`) |

Both compute the same integer products, so each layer's values are the
same (the fused block's LayerNorm and GELU are the training kernels',
within float32 rounding of Keras'); oneDNN's kernel is not in SavedModels
because TensorFlow builds without oneDNN (and TF Serving's) lack it.
"""

import contextlib
import contextvars
import functools
import os

import keras

ENVIRONMENT_VARIABLE = "KERAS_VIT_FAST_KERNELS"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_override = None


def use_fast_kernels():
    """Whether layers built now take the backend's fast kernels.

    `set_fast_kernels(...)` if it was called with True or False, else
    `KERAS_VIT_FAST_KERNELS` (default `1`); always False on a backend
    without fast kernels (all but TensorFlow).

    Example:

    >>> keras_vit.backend.use_fast_kernels() in (True, False)
    True
    """
    if keras.backend.backend() != "tensorflow":
        return False
    if _override is not None:
        return _override
    value = os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{ENVIRONMENT_VARIABLE} must be 1 or 0 (or true/false, yes/no, on/off), "
        f"received {ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE]!r}."
    )


def set_fast_kernels(enabled):
    """Switches the fast kernels on or off for layers built from now on.

    Args:
        enabled: True or False; None returns to `KERAS_VIT_FAST_KERNELS`.

    Example:

    >>> keras_vit.backend.set_fast_kernels(False)
    >>> block = keras_vit.layers.TransformerBlock(64, num_heads=4, mlp_dim=128)
    >>> block.fast_kernels
    False
    >>> keras_vit.backend.set_fast_kernels(None)
    """
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, received enabled={enabled!r}.")
    _override = enabled


def onednn_enabled():
    """Whether this process's TensorFlow runs its oneDNN kernels (False
    without TensorFlow).

    `import keras_vit` before TensorFlow turns them on where TensorFlow
    would leave them off (x86 CPUs without AVX512-VNNI, AVX512-BF16,
    AVX-VNNI or AMX), unless `TF_ENABLE_ONEDNN_OPTS` is set: see
    `keras_vit._backend.enable_onednn`.

    Example:

    >>> keras_vit.backend.onednn_enabled() in (True, False)
    True
    """
    from keras_vit._backend import tensorflow_installed

    return tensorflow_installed() and _tensorflow().onednn_enabled()


def _tensorflow():
    from keras_vit.backend import tensorflow

    return tensorflow


def layer_norm(layer, x, training):
    """`layer(x)` for a `keras_vit.layers.LayerNorm` that uses fast kernels,
    or None where Keras' own computation applies."""
    tf_kernels = _tensorflow()
    if tf_kernels.on_tpu():
        return None
    if training is True:
        return tf_kernels.layer_norm(layer, x)
    if x.dtype == "float32" and tf_kernels.onednn_enabled() and not _gpu_visible():
        return tf_kernels.layer_norm_onednn(layer, x)
    return None


def gelu(x, training):
    """The exact GELU of a training call as the fused kernel, or None where
    Keras' `gelu` applies (inference: oneDNN fuses it into its matmul)."""
    tf_kernels = _tensorflow()
    if training is True and not tf_kernels.on_tpu():
        return tf_kernels.gelu(x)
    return None


def _projections(block):
    """A `TransformerBlock`'s six projections: q, k, v and the attention
    output (its `MultiHeadAttention`'s), then the MLP's fc1 and fc2."""
    attn = block.attn
    return attn.query_dense, attn.key_dense, attn.value_dense, attn.output_dense, block.mlp_fc1, block.mlp_fc2


def self_attention(block, x, training, class_token_only):
    """`TransformerBlock` attention from its projections' `kernel`s (with
    their LoRA factors merged, as Keras' layers compute), or None where the
    attention sublayer must be called as a Keras layer (quantized, unless
    `int8_dense` applies to every projection)."""
    attention = _projections(block)[:4]
    modes = {getattr(layer, "quantization_mode", None) for layer in attention}
    if modes == {None}:
        return _tensorflow().self_attention(block, x, training, class_token_only)
    if all(_int8_applies(layer, training) for layer in attention):
        return _tensorflow().self_attention(block, x, training, class_token_only, int8=True)
    return None


# Set while a keras_vit model traces one of its own inference graphs (see
# `in_process_inference`).
_IN_PROCESS = contextvars.ContextVar("keras_vit_in_process_inference", default=False)

# oneDNN computes u8 x s8 int8 products exactly only with VNNI (or AMX):
# without it, its AVX2/AVX-512 kernels add pairs of products in saturating
# 16-bit arithmetic (oneDNN's documentation, "Nuances of int8 computations").
_INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@contextlib.contextmanager
def in_process_inference():
    """Marks the graph traced inside as one of the model's own inference
    graphs (`predict`, `evaluate`, the eager call), which never leave the
    process: there the int8 products may take oneDNN's int8 kernel
    (`int8_dense`). keras_vit's models enter it in their `predict_step`,
    `test_step` and eager inference function."""
    token = _IN_PROCESS.set(True)
    try:
        yield
    finally:
        _IN_PROCESS.reset(token)


@functools.lru_cache(maxsize=None)
def onednn_int8():
    """Whether int8 products can run on oneDNN's int8 kernel here: Keras on
    TensorFlow with its oneDNN kernels on, no GPU, and a CPU with VNNI
    (AVX512-VNNI, AVX-VNNI) or AMX-INT8.

    Example:

    >>> keras_vit.backend.onednn_int8() in (True, False)
    True
    """
    from keras_vit._backend import cpu_features

    if keras.backend.backend() != "tensorflow" or not onednn_enabled():
        return False
    flags = cpu_features()[1]
    return any(flag in flags for flag in _INT8_CPU_FLAGS) and not _gpu_visible()


def int8_dense(layer, x, training=None):
    """`layer(x)` for an int8-quantized `Dense` (or a `MultiHeadAttention`
    projection) through oneDNN's int8 kernel, with `x` of shape
    `(..., layer's input width)` (an attention projection's heads flattened
    into the width), Keras' LoRA term included; None where Keras' own call
    applies: another layer or mode, training, outside `in_process_inference`,
    inside an XLA-compiled function, or where `onednn_int8()` is False."""
    return _tensorflow().int8_dense(layer, x) if _int8_applies(layer, training) else None


def _int8_applies(layer, training):
    return (training is not True and getattr(layer, "quantization_mode", None) == "int8"
            and _IN_PROCESS.get() and onednn_int8()
            and _tensorflow().int8_dense_supports(layer) and not _tensorflow().in_xla_context()
            and not _tensorflow().on_tpu())


def int8_block(block, x, training, class_token_only):
    """`block(x)` of a `TransformerBlock` as `(outputs, attention weights)`
    with its int8 products on oneDNN's kernel and what lies between them
    fused (`keras_vit.backend.tensorflow.int8_block`), or None where the
    block is called layer by layer: not every projection int8 as
    `int8_dense` applies to it, another compute dtype than float32, or
    tokens of unknown number."""
    if (None in tuple(x.shape[1:]) or not all(_int8_applies(layer, training) for layer in _projections(block))
            or not _tensorflow().int8_block_supports(block)):
        return None
    return _tensorflow().int8_block(block, x, class_token_only)


def dense(layer, x, training=None):
    """`layer(x)`, through `int8_dense` where it applies."""
    fast = int8_dense(layer, x, training)
    return layer(x) if fast is None else fast


def _gpu_visible():
    import tensorflow as tf

    # The oneDNN pattern is only known fast, and its epsilon only checked, on CPUs.
    return bool(tf.config.list_logical_devices("GPU"))
