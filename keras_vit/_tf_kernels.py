"""Fused kernels for `TransformerBlock` on the TensorFlow backend.

Training calls: layer normalisation and the exact (erf) GELU, each with a
hand-written gradient, the forward and backward passes compiled by XLA
into one loop apiece. TensorFlow differentiates Keras'
`ops.layer_normalization` and `ops.gelu` op by op: about a dozen passes
over the activations each in the backward pass (reductions, squares,
`Erfc`, `Exp`, products), which on a CPU took a fifth of a small ViT's
training step (BENCHMARKS.md). No library offers these two as fused
TensorFlow ops with gradients (oneDNN's fused GELU is forward-only inside
a matmul), hence this module.

Inference calls: in float32 on a CPU with TensorFlow's oneDNN
optimisations, the LayerNorms are written as the op pattern that
TensorFlow's graph remapper fuses into one oneDNN LayerNorm kernel
(`layer_norm_onednn`), in every graph: `predict`, `evaluate`, direct
calls and exported SavedModels alike, which need no XLA. Otherwise (mixed
precision, GPUs) the LayerNorm forward kernel compiled by XLA is used only
inside keras_vit's own in-process inference graphs (`predict`, `evaluate`
and the compiled direct call of `VisionTransformer`, which trace the model
under `in_process_inference()`), and every other graph keeps the plain
ops, so that exported models never need XLA, which TF Serving's CPU builds
run only behind a flag. GELU is fused into its matmul by oneDNN in
inference graphs. The results equal Keras' within float32 rounding
(tests/test_tf_kernels.py checks values and gradients against the plain
ops).
"""

import contextlib
import functools
import math
import threading

import tensorflow as tf

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Under these the whole step is compiled by XLA anyway.
_TPU_STRATEGIES = tuple(
    cls for cls in (getattr(tf.distribute, "TPUStrategy", None),
                    getattr(tf.distribute.experimental, "TPUStrategy", None))
    if cls is not None
)


_STATE = threading.local()


@contextlib.contextmanager
def in_process_inference():
    """Inference calls of `TransformerBlock` traced inside this context use
    the compiled LayerNorm (`applies_to_inference`). For graphs that run in
    this process only, never for graphs that are exported."""
    previous = getattr(_STATE, "in_process", False)
    _STATE.in_process = True
    try:
        yield
    finally:
        _STATE.in_process = previous


def applies_to_inference(training):
    """Whether an inference call (`training` not True) takes the compiled
    LayerNorm: only inside `in_process_inference()`, and not on TPUs."""
    if training is True or not getattr(_STATE, "in_process", False):
        return False
    return not _on_tpu()


def applies(training):
    """Whether a call with this `training` argument takes the fused path.

    Training calls only (Keras passes a Python bool), and not on TPUs, where
    the whole step is compiled by XLA anyway.
    """
    if not (isinstance(training, bool) and training):
        return False
    return not _on_tpu()


def _on_tpu():
    return isinstance(tf.distribute.get_strategy(), _TPU_STRATEGIES)


def _normal_cdf(xf):
    # Phi(x) = (1 + erf(x / sqrt(2))) / 2, the form PyTorch's GELU uses. XLA
    # computes `erf` as one rational polynomial, where Keras' form
    # `erfc(-x / sqrt(2)) / 2` costs an `exp` and more per element: with
    # erf the forward kernel is about 1.55x and the backward 1.3x faster
    # (BENCHMARKS.md). x * Phi(x) then has an absolute error of at most
    # about 1.6e-7 * |x| on [-12, 12] (PyTorch's GELU: 3e-7 * |x|), the
    # largest relative errors in the negative tail, where 1 + erf(...)
    # cancels.
    return 0.5 * (1.0 + tf.math.erf(xf * _SQRT_HALF))


@tf.function(jit_compile=True, reduce_retracing=True)
def _gelu_forward(x):
    xf = tf.cast(x, tf.float32)
    return tf.cast(xf * _normal_cdf(xf), x.dtype)


@tf.function(jit_compile=True, reduce_retracing=True)
def _gelu_backward(dy, x):
    # d/dx [x * Phi(x)] = Phi(x) + x * phi(x); recomputed from x rather than
    # stored, so training keeps one activation per MLP, as before.
    xf = tf.cast(x, tf.float32)
    cdf = _normal_cdf(xf)
    pdf = tf.exp(-0.5 * xf * xf) * _INV_SQRT_2PI
    return tf.cast(tf.cast(dy, tf.float32) * (cdf + xf * pdf), x.dtype)


@tf.custom_gradient
def gelu(x):
    """Exact GELU, `x * Phi(x)`, as `keras.activations.gelu(x)`."""

    def grad(dy):
        return _gelu_backward(dy, x)

    return _gelu_forward(x), grad


def _mean_over_last_axis(v):
    # `tf.reduce_mean(v, axis=-1, keepdims=True)` as a matrix-vector product
    # with a vector of 1/n: XLA's CPU backend runs a reduction along the
    # rows on one thread, a dot on all of them (Eigen's), which made the
    # LayerNorm kernels 1.2-1.4x faster at ViT training shapes
    # (BENCHMARKS.md). Same value up to float32 rounding.
    shape = tf.shape(v)
    width = shape[-1]
    rows = tf.reshape(v, tf.stack([-1, width]))
    mean = tf.matmul(rows, tf.fill(tf.stack([width, 1]), 1.0 / tf.cast(width, v.dtype)))
    return tf.reshape(mean, tf.concat([shape[:-1], [1]], 0))


@tf.function(jit_compile=True, reduce_retracing=True)
def _layer_norm_forward(x, gamma, beta, epsilon):
    xf = tf.cast(x, tf.float32)
    mean = _mean_over_last_axis(xf)
    centred = xf - mean
    variance = _mean_over_last_axis(centred * centred)
    inv_std = tf.math.rsqrt(variance + epsilon)
    return tf.cast(centred * inv_std * gamma + beta, x.dtype), mean, inv_std


@tf.function(jit_compile=True, reduce_retracing=True)
def _layer_norm_backward(dy, x, mean, inv_std, gamma):
    # The per-token mean and 1/std come from the forward pass (one number per
    # token each); the normalised activations are recomputed from x.
    xf, dyf = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
    normed = (xf - mean) * inv_std
    dnormed = dyf * gamma
    dx = inv_std * (
        dnormed
        - _mean_over_last_axis(dnormed)
        - normed * _mean_over_last_axis(dnormed * normed)
    )
    outer = tf.range(tf.rank(xf) - 1)
    return tf.cast(dx, x.dtype), tf.reduce_sum(dyf * normed, outer), tf.reduce_sum(dyf, outer)


def _layer_norm_arguments(layer):
    """The layer's scale, centre and epsilon as float32 tensors."""
    return (tf.cast(layer.gamma, tf.float32), tf.cast(layer.beta, tf.float32),
            tf.constant(layer.epsilon, tf.float32))


def layer_norm_inference(layer, x):
    """`layer(x)` as `layer_norm`, forward only (no gradient kernel)."""
    return _layer_norm_forward(x, *_layer_norm_arguments(layer))[0]


def onednn_layer_norm_applies(training, x):
    """Whether a call takes `layer_norm_onednn`: an inference call
    (`training` not True) on float32 activations, TensorFlow's oneDNN
    optimisations on, no GPU visible (the pattern is only known fast, and
    its epsilon only checked, on CPUs) and not on a TPU."""
    return (
        training is not True
        and x.dtype == tf.float32
        and _onednn_enabled()
        and not tf.config.list_logical_devices("GPU")
        and not _on_tpu()
    )


@functools.lru_cache(maxsize=None)
def _onednn_enabled():
    """Whether this TensorFlow runs its oneDNN graph optimisations
    (`TF_ENABLE_ONEDNN_OPTS`, on by default in x86 Linux builds)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - other builds
        return False


def layer_norm_onednn(layer, x):
    """`layer(x)` (inference) as the op pattern that TensorFlow's oneDNN
    graph remapper fuses into one `_MklLayerNorm` kernel.

    The pattern is the one Keras 2's `LayerNormalization` used: the tokens
    reshaped to `(1, rows, width, 1)` and normalised as "channels" by
    `FusedBatchNormV3` (NCHW, batch statistics, unit scale and zero offset
    of shape `(rows,)`), reshaped back, then multiplied by gamma and
    shifted by beta. Keras 3 writes LayerNorm as a dozen elementwise ops,
    which no CPU kernel fuses; fused, ViT-B/16's 24 LayerNorms at batch 8
    take about 12 ms instead of about 60 ms as plain ops and 25-28 ms as
    the XLA kernel (which XLA runs on one thread), and the graph needs no
    XLA, so exported SavedModels keep it (BENCHMARKS.md). Where the
    remapper does not fuse (another build), the same ops compute the same
    values.

    Two details keep it exact and fused: the raw op takes the layer's own
    epsilon (`tf.nn.fused_batch_norm` raises any epsilon below 1.001e-5,
    a limit of old cuDNN versions, and ViT's is 1e-6); and the row count
    passes through `PlaceholderWithDefault` (an identity) so that
    constant folding cannot turn the unit scale and zero offset into
    constants when the batch size is static, which stops the remapper
    matching.
    """
    shape = tf.shape(x)
    rows = tf.raw_ops.PlaceholderWithDefault(input=tf.reduce_prod(shape[:-1]), shape=[])
    rows_vector = tf.reshape(rows, [1])
    normed, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(x, tf.stack([1, rows, shape[-1], 1])),
        scale=tf.ones(rows_vector, tf.float32),
        offset=tf.zeros(rows_vector, tf.float32),
        mean=tf.constant([], tf.float32),
        variance=tf.constant([], tf.float32),
        epsilon=float(layer.epsilon),
        data_format="NCHW",
        is_training=True,
    )
    return tf.reshape(normed, shape) * tf.convert_to_tensor(layer.gamma) + tf.convert_to_tensor(layer.beta)


def layer_norm(layer, x):
    """`layer(x)` for a `keras.layers.LayerNormalization` over the last axis
    with scale and centre, from its own (float32) variables; computes in
    float32 and returns `x`'s dtype, as Keras does."""
    gamma, beta, epsilon = _layer_norm_arguments(layer)

    @tf.custom_gradient
    def normalise(x, gamma, beta):
        y, mean, inv_std = _layer_norm_forward(x, gamma, beta, epsilon)

        def grad(dy):
            return _layer_norm_backward(dy, x, mean, inv_std, gamma)

        return y, grad

    return normalise(x, gamma, beta)
