"""keras_vit's fast paths on the TensorFlow backend.

`keras_vit.backend` decides when each applies; this module only computes.
Every function returns the values of the Keras layer it stands for, within
float32 rounding (tests/test_tf_kernels.py checks values and gradients
against Keras' own ops); BENCHMARKS.md has what each one gains.

- `layer_norm`, `gelu`: training kernels with hand-written gradients, the
  forward and backward passes compiled by XLA into one loop apiece.
  TensorFlow differentiates Keras' LayerNorm and GELU op by op (a dozen
  passes over the activations each), and no library offers them as fused
  TensorFlow ops with gradients.
- `layer_norm_onednn`: inference LayerNorm as the op pattern that
  TensorFlow's oneDNN remapper fuses into one kernel, in any graph and in
  exported SavedModels, with no XLA (which TF Serving's CPU builds run only
  behind a flag).
- `self_attention`: multi-head self-attention from
  `keras.layers.MultiHeadAttention`'s own variables as 2-D matmuls, because
  TensorFlow computes the gradients of its einsums per example and sums them.
- `int8_dense`: an int8-quantized `Dense` or attention projection as
  Keras computes it, with the integer product on oneDNN's int8 kernel
  (VNNI, AMX) instead of TensorFlow's generic one; Keras and TensorFlow
  offer no other route to it.
- `int8_block`: a whole int8 `TransformerBlock` for inference: its six
  products as `int8_dense`'s, and what lies between two products (LayerNorm,
  quantization, de-scaling, head split and merge, GELU, residual sums) as
  one XLA kernel each, where a layer-by-layer call runs some 60 ops.
"""

import functools
import math

import tensorflow as tf

from keras_vit._backend import tensorflow_onednn_enabled
from keras_vit.backend import _projections

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Under these the whole step is compiled by XLA anyway.
_TPU_STRATEGIES = tuple(
    cls for cls in (getattr(tf.distribute, "TPUStrategy", None),
                    getattr(tf.distribute.experimental, "TPUStrategy", None))
    if cls is not None
)


def on_tpu():
    """Whether the current strategy runs on TPUs (where XLA compiles the whole step)."""
    return isinstance(tf.distribute.get_strategy(), _TPU_STRATEGIES)


def _normal_cdf(xf):
    # Phi(x) = (1 + erf(x / sqrt(2))) / 2, PyTorch's form: XLA computes erf as
    # one polynomial, cheaper than Keras' erfc form (which costs an exp).
    # Absolute error at most about 1.6e-7 * |x| on [-12, 12].
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
    # `tf.reduce_mean(v, axis=-1, keepdims=True)` as a product with a vector
    # of 1/n: XLA's CPU backend runs a row reduction on one thread and a dot
    # on all of them.
    shape = tf.shape(v)
    width = shape[-1]
    rows = tf.reshape(v, tf.stack([-1, width]))
    mean = tf.matmul(rows, tf.fill(tf.stack([width, 1]), 1.0 / tf.cast(width, v.dtype)))
    return tf.reshape(mean, tf.concat([shape[:-1], [1]], 0))


def _normalise(x, gamma, beta, epsilon):
    """LayerNorm of float32 `x` over the last axis: `(outputs, mean, 1/std)`."""
    mean = _mean_over_last_axis(x)
    centred = x - mean
    inv_std = tf.math.rsqrt(_mean_over_last_axis(centred * centred) + epsilon)
    return centred * inv_std * gamma + beta, mean, inv_std


@tf.function(jit_compile=True, reduce_retracing=True)
def _layer_norm_forward(x, gamma, beta, epsilon):
    outputs, mean, inv_std = _normalise(tf.cast(x, tf.float32), gamma, beta, epsilon)
    return tf.cast(outputs, x.dtype), mean, inv_std


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


@functools.lru_cache(maxsize=None)
def onednn_enabled():
    """Whether this TensorFlow runs its oneDNN graph optimisations
    (`TF_ENABLE_ONEDNN_OPTS`, on by default in x86 Linux builds)."""
    return tensorflow_onednn_enabled()


def layer_norm_onednn(layer, x):
    """`layer(x)` (inference) as the op pattern that TensorFlow's oneDNN
    graph remapper fuses into one `_MklLayerNorm` kernel.

    The pattern is the one Keras 2's `LayerNormalization` used: the tokens
    reshaped to `(1, rows, width, 1)` and normalised as "channels" by
    `FusedBatchNormV3` (NCHW, batch statistics, unit scale and zero offset
    of shape `(rows,)`), reshaped back, then multiplied by gamma and
    shifted by beta. Keras 3 writes LayerNorm as a dozen elementwise ops,
    which no CPU kernel fuses. Where the remapper does not fuse (another
    build), the same ops compute the same values.

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


# MultiHeadAttention's projections of 3-D inputs: (query/key/value, output).
_PROJECTION_EQUATIONS = {"abc,cde->abde": 1, "abcd,cde->abe": 2}


def in_xla_context():
    """Whether the graph being traced is compiled by XLA (`jit_compile`),
    which cannot compile oneDNN's int8 op."""
    from tensorflow.python.ops import control_flow_util

    graph = tf.compat.v1.get_default_graph()
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(graph)


def int8_dense_supports(layer):
    """Whether `int8_dense` computes `layer`: a `Dense` without activation,
    or a `MultiHeadAttention` projection, quantized by Keras with its
    per-token input quantizer."""
    import keras
    from keras import quantizers

    if type(getattr(layer, "inputs_quantizer", None)) is not quantizers.AbsMaxQuantizer \
            or not hasattr(layer, "kernel_scale"):
        return False
    if isinstance(layer, keras.layers.Dense):
        return layer.activation in (None, keras.activations.linear)
    if isinstance(layer, keras.layers.EinsumDense):
        return layer.equation in _PROJECTION_EQUATIONS and layer.activation in (None, keras.activations.linear)
    return False


def _quantize(rows, low, high, epsilon):
    """Keras' `abs_max_quantize(rows, axis=-1)` (one scale per row) as
    unsigned bytes `q + 128` (one XOR of the sign bit), with one more row of
    128s: `(bytes, scales)`."""
    from keras import quantizers

    quantized, scale = quantizers.abs_max_quantize(rows, axis=-1, value_range=(low, high), epsilon=epsilon)
    unsigned = tf.bitwise.bitwise_xor(tf.bitcast(quantized, tf.uint8), tf.constant(128, tf.uint8))
    return tf.concat([unsigned, tf.fill(tf.stack([1, tf.shape(rows)[1]]), tf.constant(128, tf.uint8))], 0), scale


def _descale(product, kernel_scale, rows_scale, bias, dtype):
    """Keras' de-scaling of an int8 product, whose last row is the offset to
    take out, plus the bias."""
    outputs = tf.cast(product[:-1] - product[-1:], dtype) / (kernel_scale * rows_scale)
    return outputs if bias is None else outputs + tf.cast(bias, dtype)


# Each one XLA kernel instead of a dozen TensorFlow ops per layer.
_int8_rows = tf.function(_quantize, jit_compile=True, reduce_retracing=True)
_int8_outputs = tf.function(_descale, jit_compile=True, reduce_retracing=True)


def _int8_operands(layer):
    """What `int8_dense` needs of `layer`: `(kernel, kernel_scale, bias,
    quantizer)`: the int8 kernel as a `(depth, width)` qint8 matrix, its
    scale and the bias (or None) as `(width,)` vectors, and the input
    quantizer's `(low, high, epsilon)`."""
    kernel = tf.convert_to_tensor(layer._kernel)
    reduced = _PROJECTION_EQUATIONS.get(getattr(layer, "equation", None), 1)
    depth = math.prod(kernel.shape[:reduced])
    free = tuple(kernel.shape[reduced:])
    width = math.prod(free)
    scale = tf.convert_to_tensor(layer.kernel_scale)
    dims = list(scale.shape)
    while len(dims) > len(free) and dims[0] == 1:
        dims.pop(0)
    scale = tf.reshape(tf.broadcast_to(tf.reshape(scale, dims), free), (width,))
    bias = None if layer.bias is None else tf.reshape(layer.bias, (width,))
    return tf.bitcast(tf.reshape(kernel, (depth, width)), tf.qint8), scale, bias, _quantizer(layer)


def _quantizer(layer):
    """The layer's input quantizer as `_quantize`'s `(low, high, epsilon)`."""
    quantizer = layer.inputs_quantizer
    return float(quantizer.value_range[0]), float(quantizer.value_range[1]), float(quantizer.epsilon)


def _int8_product(unsigned, kernel):
    """oneDNN's u8 x s8 product of `_quantize`'s bytes and a qint8 kernel, as int32."""
    product, _, _ = tf.raw_ops.QuantizedMatMulWithBias(
        a=tf.bitcast(unsigned, tf.quint8), b=kernel, bias=tf.zeros(kernel.shape[1:], tf.qint32),
        min_a=0.0, max_a=255.0, min_b=-127.0, max_b=127.0, Toutput=tf.qint32, input_quant_mode="MIN_FIRST")
    return tf.bitcast(product, tf.int32)


def _lora(layer, rows):
    """Keras' LoRA term of an int8 layer (`enable_lora`) for `rows` of
    shape `(n, depth)`: `(alpha / rank) * einsum(rows, lora_kernel_a) @
    lora_kernel_b` as `(n, width)`, the factors in the kernel's layout
    (`(depth, rank)` for a `Dense`, `(depth, heads, rank)` for the q/k/v
    projections, `(heads, head_dim, rank)` for the attention output)."""
    a, b = tf.convert_to_tensor(layer.lora_kernel_a), tf.convert_to_tensor(layer.lora_kernel_b)
    reduced = _PROJECTION_EQUATIONS.get(getattr(layer, "equation", None), 1)
    low_rank = tf.matmul(tf.cast(rows, a.dtype), tf.reshape(a, (math.prod(a.shape[:reduced]), -1)))
    lora = tf.matmul(tf.reshape(low_rank, (-1, a.shape[-1])), b)  # (n * heads, head_dim) or (n, width)
    return (layer.lora_alpha / layer.lora_rank) * tf.reshape(lora, (tf.shape(rows)[0], -1))


def int8_dense(layer, x):
    """`layer(x)` for an int8 `Dense` or attention projection of Keras'
    `quantize("int8")`, for `x` of shape `(..., input width)` (an attention
    projection's heads flattened into the width); returns
    `(..., output width)`.

    What Keras computes (`Dense._int8_call`, `EinsumDense._int8_call`): the
    rows quantized to int8 by the layer's abs-max quantizer (one scale per
    row), their int32 product with the int8 kernel, cast to the compute
    dtype, divided by the product of the two scales, plus the bias. Only
    the product's kernel differs: oneDNN's u8 x s8 int8 product
    (`QuantizedMatMulWithBias`, VNNI or AMX; a (1576, 768) x (768, 3072)
    product 12 ms against XLA's int8 26, bfloat16's 25 and float32's 37 on
    an AMD EPYC Zen 4, 2 cores). It takes unsigned activations: the rows
    become `q + 128`, and a last row of 128s gives `128 * (column sums of
    the kernel)` to subtract (summing the kernel apart would read it again,
    as int32, each call). oneDNN sums in int32 and then, for its scales,
    converts through float32, as Keras' cast does: the outputs are Keras'
    value for value while the sums stay under 2**24 in magnitude (a sum of
    768 or 3072 int8 products gets there only if nearly all are large and
    of one sign); past that, both round to float32, at different points.
    """
    kernel, scale, bias, quantizer = _int8_operands(layer)
    depth, width = kernel.shape
    shape = tf.shape(x)
    rows = x if x.shape.rank == 2 else tf.reshape(x, (-1, depth))
    unsigned, rows_scale = _int8_rows(rows, *quantizer)
    product = _int8_product(unsigned, kernel)
    if getattr(layer, "lora_enabled", False):
        # Keras' order: the de-scaled product, plus the LoRA term, then the bias.
        outputs = _int8_outputs(product, scale, rows_scale, None, layer.compute_dtype)
        outputs = outputs + tf.cast(_lora(layer, rows), layer.compute_dtype)
        outputs = outputs if bias is None else outputs + tf.cast(bias, layer.compute_dtype)
    else:
        outputs = _int8_outputs(product, scale, rows_scale, bias, layer.compute_dtype)
    return outputs if x.shape.rank == 2 else tf.reshape(outputs, tf.concat([shape[:-1], [width]], 0))


def self_attention(block, x, training, class_token_only=False, int8=False):
    """`block.attn(x, x)` from `block.attn`'s own variables, with the weights.

    Each projection is one matmul over the tokens as a 2-D matrix (a plain
    MatMul whose bias add oneDNN fuses), the heads are split by one
    transpose each, and the attention is two batched matmuls; the softmax
    runs in float32. Separate q, k and v matmuls rather than one on
    concatenated kernels, which would copy the kernels at every call. With
    `class_token_only`, only the first token queries: `block.attn(x[:, :1], x)`.
    """
    from keras import ops

    attn = block.attn
    batch = ops.shape(x)[0]
    width, heads, head_dim = block.hidden_dim, block.num_heads, block.head_dim

    def dense(inputs, layer):
        if int8:
            return int8_dense(layer, tf.reshape(inputs, (-1, width)))
        return ops.add(
            ops.matmul(ops.reshape(inputs, (-1, width)),
                       ops.reshape(ops.cast(layer.kernel, x.dtype), (width, width))),
            ops.reshape(ops.cast(layer.bias, x.dtype), (width,)),
        )

    def project(inputs, layer):  # (batch, heads, tokens, head_dim)
        return ops.transpose(ops.reshape(dense(inputs, layer), (batch, -1, heads, head_dim)), (0, 2, 1, 3))

    key, value = project(x, attn.key_dense), project(x, attn.value_dense)
    query = project(x[:, :1] if class_token_only else x, attn.query_dense)
    query = query * ops.cast(1.0 / math.sqrt(head_dim), x.dtype)
    logits = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
    weights = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), x.dtype)
    outputs = ops.matmul(block.attn_weights_dropout(weights, training=training), value)
    outputs = ops.reshape(ops.transpose(outputs, (0, 2, 1, 3)), (-1, width))
    outputs = dense(outputs, attn.output_dense)
    return ops.reshape(outputs, (batch, -1, width)), weights


def int8_block_supports(block):
    """Whether `int8_block` computes `block`: every projection int8 as
    `int8_dense` computes it, without LoRA (a block with LoRA goes layer by
    layer), float32 compute throughout, LayerNorms over the last axis with
    scale and centre, and one quantizer for q, k and v."""
    layers = _projections(block)
    if not all(int8_dense_supports(layer) and not getattr(layer, "lora_enabled", False) for layer in layers):
        return False
    dtypes = {layer.compute_dtype for layer in (block, block.attn, block.norm1, block.norm2) + layers}
    quantizers = {_quantizer(layer) for layer in layers[:3]}
    return (dtypes == {"float32"} and len(quantizers) == 1
            and all(getattr(norm, "fast_kernels", False) for norm in (block.norm1, block.norm2)))


# The XLA kernels between the products of `int8_block`, in its order.
@tf.function(jit_compile=True, reduce_retracing=True)
def _int8_norm_rows(x, gamma, beta, norm_epsilon, quantizer, class_token_only):
    """norm1 of `(batch, tokens, width)`, then its rows quantized for k and
    v, and for q (the class tokens alone with `class_token_only`)."""
    # Shapes from tf.shape, which XLA knows when it compiles: the static
    # shapes are None once reduce_retracing has generalised the signature.
    normed = _normalise(x, gamma, beta, norm_epsilon)[0]
    rows = _quantize(tf.reshape(normed, (-1, tf.shape(x)[-1])), *quantizer)
    return rows + (_quantize(normed[:, 0], *quantizer) if class_token_only else rows)


@tf.function(jit_compile=True, reduce_retracing=True)
def _int8_heads(products, scales, biases, rows_scales, sizes, heads, head_dim):
    """The q, k and v products de-scaled and split into heads: q `(batch,
    heads, queries, head_dim)` times `1 / sqrt(head_dim)` (Keras' factor),
    k transposed to `(batch, heads, head_dim, tokens)`, v `(batch, heads,
    tokens, head_dim)`; `sizes` is `(queries, tokens, tokens)`."""
    split = []
    for product, scale, bias, rows_scale, size in zip(products, scales, biases, rows_scales, sizes):
        outputs = _descale(product, scale, rows_scale, bias, tf.float32)
        split.append(tf.reshape(outputs, (-1, size, heads, head_dim)))
    query, key, value = split
    query = tf.transpose(query, (0, 2, 1, 3)) * (1.0 / math.sqrt(head_dim))
    return query, tf.transpose(key, (0, 2, 3, 1)), tf.transpose(value, (0, 2, 1, 3))


@tf.function(jit_compile=True, reduce_retracing=True)
def _int8_merge_rows(attended, quantizer):
    """The heads `(batch, heads, queries, head_dim)` merged into rows
    `(batch * queries, width)` and quantized for the output projection."""
    shape = tf.shape(attended)
    rows = tf.reshape(tf.transpose(attended, (0, 2, 1, 3)), (-1, shape[1] * shape[3]))
    return _quantize(rows, *quantizer)


@tf.function(jit_compile=True, reduce_retracing=True)
def _int8_residual_norm_rows(product, scale, rows_scale, bias, residual, gamma, beta, norm_epsilon, quantizer):
    """The residual plus the de-scaled output projection, and its norm2
    quantized for fc1: `(sum, bytes, scales)`."""
    x = residual + _descale(product, scale, rows_scale, bias, tf.float32)
    return (x,) + _quantize(_normalise(x, gamma, beta, norm_epsilon)[0], *quantizer)


@tf.function(jit_compile=True, reduce_retracing=True)
def _int8_gelu_rows(product, scale, rows_scale, bias, quantizer):
    """fc1 de-scaled, its exact GELU, quantized for fc2."""
    y = _descale(product, scale, rows_scale, bias, tf.float32)
    return _quantize(y * _normal_cdf(y), *quantizer)


@tf.function(jit_compile=True, reduce_retracing=True)
def _int8_residual(product, scale, rows_scale, bias, residual):
    return residual + _descale(product, scale, rows_scale, bias, tf.float32)


def int8_block(block, x, class_token_only=False):
    """`block(x)` of a `TransformerBlock` whose six projections are int8
    (Keras' `quantize("int8")`), for inference: `(outputs, attention
    weights)`.

    The six products are `int8_dense`'s (oneDNN's int8 kernel, Keras'
    quantizers); everything between two of them is one XLA kernel:
    norm1 and the quantization of its rows (once for q, k and v), the
    de-scaling and head split of q, k and v, the merge of the heads and
    their quantization, the residual sum with norm2 and its quantization,
    fc1's de-scaling with the GELU and the quantization for fc2, fc2's
    de-scaling with the residual sum. Called layer by layer, a block runs
    about 60 TensorFlow ops (LayerNorm, GELU, transposes, ten XLA calls);
    here 6 XLA calls and the attention's two batched matmuls and softmax.
    The LayerNorms and GELU are computed as the fast training kernels
    compute them (within float32 rounding of Keras'), the products and
    scales as Keras' int8 layers.
    """
    kernels, scales, biases, quantizers = zip(*(_int8_operands(layer) for layer in _projections(block)))
    tokens, width = x.shape[1], x.shape[2]
    queries, heads, head_dim = 1 if class_token_only else tokens, block.num_heads, block.head_dim
    rows, rows_scale, query_rows, query_scale = _int8_norm_rows(
        x, *_layer_norm_arguments(block.norm1), quantizers[0], bool(class_token_only))
    products = [_int8_product(query_rows, kernels[0]), _int8_product(rows, kernels[1]),
                _int8_product(rows, kernels[2])]
    query, key, value = _int8_heads(products, scales[:3], biases[:3], (query_scale, rows_scale, rows_scale),
                                    (queries, tokens, tokens), heads, head_dim)
    # Shapes for grappler, which cannot infer those of the calls' outputs
    # (its cost model then logs a warning for the softmax at every trace).
    query = tf.ensure_shape(query, (None, heads, queries, head_dim))
    key = tf.ensure_shape(key, (None, heads, head_dim, tokens))
    value = tf.ensure_shape(value, (None, heads, tokens, head_dim))
    weights = tf.nn.softmax(tf.matmul(query, key), axis=-1)
    rows, rows_scale = _int8_merge_rows(tf.matmul(weights, value), quantizers[3])
    residual = tf.reshape(x[:, :1] if class_token_only else x, (-1, width))
    residual, rows, rows_scale = _int8_residual_norm_rows(
        _int8_product(rows, kernels[3]), scales[3], rows_scale, biases[3], residual,
        *_layer_norm_arguments(block.norm2), quantizers[4])
    rows, rows_scale = _int8_gelu_rows(_int8_product(rows, kernels[4]), scales[4], rows_scale, biases[4],
                                       quantizers[5])
    outputs = _int8_residual(_int8_product(rows, kernels[5]), scales[5], rows_scale, biases[5], residual)
    return tf.reshape(outputs, (-1, queries, width)), weights
