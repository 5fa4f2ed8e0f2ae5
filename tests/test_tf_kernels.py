"""Tests of keras_vit.backend (the fast-kernel switch and choice) and
keras_vit.backend.tensorflow: the XLA-compiled LayerNorm and GELU with
hand-written gradients that training calls use, the oneDNN-fused LayerNorm
pattern of float32 inference, and the attention from MultiHeadAttention's
variables: values and gradients against Keras' own ops, and where they are
(and are not) used."""

import collections
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from keras_vit import backend, layers
from keras_vit.backend import tensorflow as _tf_kernels
from tests.conftest import TINY_SHAPE, TINY_VARIANT, graph_operations, randomize


def _value_and_gradients(function, inputs, weights):
    """`function(*inputs)` and the gradients of a fixed random projection of
    it with respect to `inputs`."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = tf.cast(function(*inputs), tf.float32)
        loss = tf.reduce_sum(y * weights)
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, inputs)]


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("bfloat16", 8e-3)])
def test_gelu_equals_keras_gelu_with_gradients(rng, dtype, rtol):
    x = tf.constant(rng.normal(0.0, 2.0, (64, 48)), dtype)
    weights = tf.constant(rng.normal(size=(64, 48)), tf.float32)
    fused, (fused_grad,) = _value_and_gradients(_tf_kernels.gelu, [x], weights)
    # The reference computes in float32 (Keras' gelu would compute in
    # bfloat16 on bfloat16 inputs; the kernel rounds only its result).
    plain, (plain_grad,) = _value_and_gradients(
        lambda v: keras.activations.gelu(tf.cast(v, tf.float32), approximate=False), [x], weights)
    assert _tf_kernels.gelu(x).dtype == x.dtype
    np.testing.assert_allclose(fused, plain, rtol=rtol, atol=1e-6 if dtype == "float32" else 1e-3)
    np.testing.assert_allclose(fused_grad.astype("float32"), plain_grad.astype("float32"),
                               rtol=rtol, atol=rtol)
    # Phi(0) = 0.5 and the slope at 0 is 0.5; far out the GELU is the identity.
    np.testing.assert_allclose(
        _value_and_gradients(_tf_kernels.gelu, [tf.constant([0.0, 8.0])], tf.ones(2))[1][0],
        [0.5, 1.0], atol=1e-6)


def test_gelu_kernel_error_against_float64_over_the_whole_range():
    # The kernels compute Phi(x) = (1 + erf(x / sqrt(2))) / 2, as PyTorch
    # does; in the negative tail 1 + erf(...) loses precision, so the
    # error is bounded relative to |x| (measured: 1.6e-7 * |x|, PyTorch's
    # own GELU 3e-7 * |x|). A tanh approximation (errors up to 1e-3) or a
    # wrong constant fails.
    x = np.linspace(-12.0, 12.0, 24001).astype("float32")
    x64 = x.astype("float64")
    cdf = 0.5 * np.vectorize(math.erfc)(-x64 / math.sqrt(2.0))
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    value, (slope,) = _value_and_gradients(_tf_kernels.gelu, [tf.constant(x)], tf.ones(x.shape))
    assert np.all(np.abs(value - x64 * cdf) <= 2.5e-7 * np.abs(x64) + 1e-30)
    assert np.all(np.abs(slope - (cdf + x64 * pdf)) <= 1e-7 * (1.0 + np.abs(x64)))


def _random_layer_norm(rng, x, policy="float32"):
    """A built `LayerNormalization(epsilon=1e-6)` with random scale and
    offset, `x` as a tensor of its compute dtype, and random loss weights."""
    norm = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy)
    x = tf.constant(x, norm.compute_dtype)
    norm.build(x.shape)
    norm.gamma.assign(rng.uniform(0.5, 1.5, x.shape[-1]).astype("float32"))
    norm.beta.assign(rng.normal(0.0, 0.5, x.shape[-1]).astype("float32"))
    return norm, x, tf.constant(rng.normal(size=x.shape), tf.float32)


def _norm_value_and_gradients(norm, x, weights, function):
    """`function(x)` and the float32 gradients of a weighted sum of it with
    respect to `x` and the layer's scale and offset."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = function(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, norm.gamma, norm.beta])
    return y, [np.asarray(tf.cast(g, tf.float32)) for g in grads]


@pytest.mark.parametrize("policy, rtol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_layer_norm_equals_keras_layer_with_gradients(rng, policy, rtol):
    norm, x, weights = _random_layer_norm(rng, rng.normal(1.0, 3.0, (2, 7, 40)), policy)
    got, got_grads = _norm_value_and_gradients(norm, x, weights, lambda v: _tf_kernels.layer_norm(norm, v))
    expected, expected_grads = _norm_value_and_gradients(norm, x, weights, norm)
    assert got.dtype == expected.dtype == norm.compute_dtype
    np.testing.assert_allclose(np.asarray(tf.cast(got, tf.float32)),
                               np.asarray(tf.cast(expected, tf.float32)), rtol=rtol, atol=rtol)
    for g, e, name in zip(got_grads, expected_grads, ("x", "gamma", "beta")):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * max(1.0, np.abs(e).max()), err_msg=name)
    # The offset's gradient is the loss weights summed over the tokens (each
    # rounded to the compute dtype on its way back through the cast).
    expected_beta = np.sum(tf.cast(tf.cast(weights, norm.compute_dtype), tf.float32), axis=(0, 1))
    np.testing.assert_allclose(got_grads[2], expected_beta, rtol=1e-5, atol=1e-5)


def test_transformer_block_training_call_takes_fused_path_with_same_values_and_gradients(rng):
    block = layers.TransformerBlock(hidden_dim=24, num_heads=3, mlp_dim=40)
    x = tf.constant(rng.normal(size=(3, 9, 24)), tf.float32)
    block.build(x.shape)
    for variable in block.weights:
        value = (rng.uniform(0.5, 1.5, variable.shape) if variable.path.endswith("gamma")
                 else rng.normal(0.0, 0.3, variable.shape))
        variable.assign(value.astype("float32"))
    weights = tf.constant(rng.normal(size=(3, 9, 24)), tf.float32)

    def value_and_gradients(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x, training=training) * weights)
        return loss, tape.gradient(loss, [x] + block.trainable_weights)

    # In a graph, the training call holds the XLA-compiled kernels and the
    # inference call does not.
    for training, compiled in ((True, True), (False, False)):
        graph = tf.function(lambda: value_and_gradients(training)).get_concrete_function().graph
        text = str(graph.as_graph_def())
        assert ("_XlaMustCompile" in text) == compiled, training
    trained_loss, trained_grads = value_and_gradients(True)
    loss, grads = value_and_gradients(False)
    np.testing.assert_allclose(trained_loss, loss, rtol=1e-5)
    for got, expected, name in zip(trained_grads, grads, ["x"] + [v.path for v in block.trainable_weights]):
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, atol=1e-5 * max(scale, 1.0), err_msg=name)


def _graph_text(function, *args):
    return str(function.get_concrete_function(*args).graph.as_graph_def())


def test_onednn_layer_norm_equals_keras_layer_with_gradients(rng):
    x = rng.normal(1.0, 3.0, (2, 7, 40))
    # Tokens of tiny variance (1e-6): with the epsilon that
    # tf.nn.fused_batch_norm would impose (1.001e-5 instead of the layer's
    # 1e-6) they would come out about 2.3x too small.
    x[0, :3] = rng.normal(0.0, 1e-3, (3, 40))
    norm, x, weights = _random_layer_norm(rng, x)
    expected, expected_grads = _norm_value_and_gradients(norm, x, weights, norm)
    for name, function in [("eager", lambda v: _tf_kernels.layer_norm_onednn(norm, v)),
                           ("graph", tf.function(lambda v: _tf_kernels.layer_norm_onednn(norm, v))),
                           ("XLA", tf.function(lambda v: _tf_kernels.layer_norm_onednn(norm, v),
                                               jit_compile=True))]:
        got, got_grads = _norm_value_and_gradients(norm, x, weights, function)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=2e-5, err_msg=name)
        for g, e, what in zip(got_grads, expected_grads, ("x", "gamma", "beta")):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(e).max()),
                                       err_msg=f"{name}: {what}")


def _profiled_op_types(run):
    """The TensorFlow op types that ran in `run()`, from the profiler's trace."""
    import glob
    import tempfile

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    return {plane.event_metadata[event.metadata_id].name.rsplit(":", 1)[1]
            for plane in space.planes for line in plane.lines for event in line.events
            if ":" in plane.event_metadata[event.metadata_id].name}


@pytest.mark.skipif(not _tf_kernels.onednn_enabled(), reason="TensorFlow's oneDNN optimisations are off")
def test_onednn_layer_norm_is_fused_in_predict_and_in_the_exported_model(rng, tmp_path):
    # The point of the pattern: TensorFlow's remapper turns it into one
    # _MklLayerNorm kernel, in the in-process graphs (static batch size) and
    # in the exported SavedModel (dynamic batch size) alike.
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    x = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    model.predict_on_batch(x)
    assert "_MklLayerNorm" in _profiled_op_types(lambda: model.predict_on_batch(x))
    path = keras_vit.export.export_saved_model(model, str(tmp_path))
    signature = tf.saved_model.load(path).signatures["predict_images"]
    images = tf.constant((x + 1) * 127.5)
    signature(images)
    assert "_MklLayerNorm" in _profiled_op_types(lambda: signature(images))


def _twin_without_fast_kernels(model, switch):
    switch(False)
    plain = keras_vit.models.VisionTransformer.from_config(model.get_config())
    switch(None)
    plain.set_weights(model.get_weights())
    return plain


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_inference_graphs_use_fast_layer_norms_with_same_values(fast_kernels_switch, rng, policy):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    model = keras_vit.with_dtype_policy(model, policy)
    x = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    plain_model = _twin_without_fast_kernels(model, fast_kernels_switch)
    plain = keras.Model.__call__(plain_model, x, training=False).numpy()  # eager: Keras' ops
    rtol = 1e-5 if policy == "float32" else 2e-2
    for name, got in [("predict_on_batch", model.predict_on_batch(x)),
                      ("predict", model.predict(x, verbose=0)),
                      ("direct call", model(x).numpy()),
                      ("eager call", keras.Model.__call__(model, x, training=False).numpy())]:
        np.testing.assert_allclose(got, plain, rtol=rtol, atol=rtol / 10, err_msg=name)
    labels = np.eye(5, dtype="float32")[[0, 3, 4]]
    model.compile(loss="categorical_crossentropy")
    expected_loss = float(keras.losses.categorical_crossentropy(labels, plain).numpy().mean())
    assert model.evaluate(x, labels, verbose=0) == pytest.approx(expected_loss, rel=rtol)
    # Every inference graph of one model holds the same LayerNorm: in
    # float32 on this CPU the oneDNN pattern, otherwise Keras' ops; none
    # needs XLA (so an export of any of them serves without it). The model
    # built with the switch off holds Keras' ops everywhere.
    onednn = policy == "float32" and _tf_kernels.onednn_enabled()
    spec = tf.TensorSpec((None,) + TINY_SHAPE, tf.float32)
    from keras_vit import models

    def graphs(m):
        m.compile(loss="categorical_crossentropy")
        m(x)
        return [_graph_text(tf.function(m.predict_step), spec),
                _graph_text(tf.function(m.test_step), (spec, tf.TensorSpec((None, 5), tf.float32))),
                _graph_text(models._INFERENCE_FUNCTIONS[m][1], spec),
                _graph_text(tf.function(lambda v: m(v, training=False)), spec),
                _graph_text(tf.function(lambda v: m(v)), spec)]

    for text in graphs(model):
        assert "_XlaMustCompile" not in text
        assert ("FusedBatchNormV3" in text) == onednn
    for text in graphs(plain_model):
        assert "_XlaMustCompile" not in text and "FusedBatchNormV3" not in text


def test_layer_norm_choice_follows_training_and_dtype(rng):
    norm, x, _ = _random_layer_norm(rng, rng.normal(size=(2, 3, 8)))
    onednn = _tf_kernels.onednn_enabled() and not tf.config.list_logical_devices("GPU")
    for training in (None, False):
        assert backend.layer_norm(norm, tf.cast(x, tf.bfloat16), training) is None
        assert backend.layer_norm(norm, tf.cast(x, tf.float16), training) is None
        assert (backend.layer_norm(norm, x, training) is not None) == onednn
    # A training call takes the compiled kernel with its own gradient.
    graph = tf.function(lambda v: backend.layer_norm(norm, v, True)).get_concrete_function(x).graph
    assert "_XlaMustCompile" in str(graph.as_graph_def())


def test_fused_gelu_only_in_training_calls():
    x = tf.constant([[-1.0, 0.5]])
    assert backend.gelu(x, True) is not None
    for training in (False, None, 1, tf.constant(True)):
        assert backend.gelu(x, training) is None, training


def test_switch_reads_the_environment_and_names_a_bad_value(monkeypatch, fast_kernels_switch):
    for value, expected in (("1", True), ("0", False), ("off", False), (" True ", True)):
        monkeypatch.setenv(backend.ENVIRONMENT_VARIABLE, value)
        assert backend.use_fast_kernels() is expected, value
        assert layers.TransformerBlock(8, 2, 16).fast_kernels is expected
        assert layers.LayerNorm().fast_kernels is expected
    fast_kernels_switch(True)  # the call wins over the environment
    assert backend.use_fast_kernels() is True
    fast_kernels_switch(None)
    monkeypatch.setenv(backend.ENVIRONMENT_VARIABLE, "fast")
    with pytest.raises(ValueError, match=r"KERAS_VIT_FAST_KERNELS must be 1 or 0 .*received KERAS_VIT_FAST_KERNELS='fast'"):
        backend.use_fast_kernels()
    with pytest.raises(TypeError, match=r"received enabled='yes'"):
        fast_kernels_switch("yes")
    # A layer normalising over another axis never takes the fast kernels.
    monkeypatch.setenv(backend.ENVIRONMENT_VARIABLE, "1")
    assert not layers.LayerNorm(axis=1).fast_kernels


def test_quantized_model_is_called_through_its_keras_sublayers(rng):
    # Keras' int8 `quantize` replaces the Dense and attention sublayers'
    # kernels; the blocks must call the quantized layers rather than read
    # float kernels that are no longer there.
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5,
                                    classifier_activation=None))
    x = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    expected = model.predict_on_batch(x)
    model.quantize("int8")
    block = model.get_layer("block_0")
    assert block.mlp_fc1.quantization_mode == "int8" and block.attn.query_dense.quantization_mode == "int8"
    assert backend.self_attention(block, tf.zeros((1, 3, block.hidden_dim)), False, False) is None
    got = model.predict_on_batch(x)
    assert not np.array_equal(got, expected)  # int8 rounding shows
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())


@pytest.mark.parametrize("lora", [False, True])
def test_fit_with_fused_kernels_matches_plain_ops_step_by_step(fast_kernels_switch, rng, lora):
    # Two identical models, one step of AdamW each, one with the fused
    # kernels switched off: the updated weights agree. With Keras' LoRA on
    # the attention projections and MLP layers, the fused attention reads
    # each projection's `kernel`, which Keras merges with its LoRA factors:
    # the factors train, the frozen kernels stay as they were.
    x = rng.uniform(0, 255, (8,) + TINY_SHAPE).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 5, 8), 5)
    results = []
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        fast_kernels_switch(fused)
        model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5,
                                        include_preprocessing=True))
        blocks = keras_vit.models.get_blocks(model)
        if lora:
            for layer in (layer for block in blocks for layer in backend._projections(block)):
                layer.enable_lora(2, b_initializer="random_normal")  # not zero: the factors count from step 1
        # Blocks call the fused attention only with fast kernels on.
        assert backend.self_attention(blocks[0], tf.zeros((1, 3, blocks[0].hidden_dim)), True, False) is not None
        assert blocks[0].fast_kernels is fused
        frozen = [w.numpy() for w in model.non_trainable_weights]
        keras_vit.training.compile(model, steps=10, learning_rate=1e-2, warmup_steps=0)
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        for before, after in zip(frozen, model.non_trainable_weights):
            np.testing.assert_array_equal(before, after.numpy())
        results.append((history.history["loss"], [w.numpy() for w in model.weights]))
    trained = [w.path for w in model.trainable_weights if "lora_kernel" in w.path]
    assert len(trained) == (2 * 6 * len(blocks) if lora else 0)
    (fused_loss, fused_weights), (plain_loss, plain_weights) = results
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=1e-5)
    for got, expected in zip(fused_weights, plain_weights):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert fused_loss[1] < fused_loss[0]


def test_exported_layer_norm_pattern_runs_where_onednn_is_off(rng, tmp_path):
    # A SavedModel exported with the oneDNN pattern, served by a TensorFlow
    # without oneDNN's optimisations (another build, or
    # TF_ENABLE_ONEDNN_OPTS=0): FusedBatchNormV3 then runs unfused, with
    # the same results.
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    path = keras_vit.export.export_saved_model(model, str(tmp_path / "export"))
    images = rng.uniform(0, 255, (3,) + TINY_SHAPE).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = tf.saved_model.load(path).signatures["predict_images"](tf.constant(images))["probabilities"]
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from tensorflow.python.util import _pywrap_util_port\n"
        "assert not _pywrap_util_port.IsMklEnabled()\n"
        "x = np.load(sys.argv[2])\n"
        "out = tf.saved_model.load(sys.argv[1]).signatures['predict_images'](tf.constant(x))\n"
        "np.save(sys.argv[3], out['probabilities'].numpy())\n"
    )
    subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
                   check=True, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)


_ONEDNN_INT8 = pytest.mark.skipif(
    not backend.onednn_int8(), reason="oneDNN's int8 kernel needs TensorFlow's oneDNN and a CPU with VNNI or AMX")


def _int8_layers(rng):
    """Keras int8 layers as keras_vit's models quantize them: a Dense (the
    MLP's, the patch projection's) and MultiHeadAttention's projections."""
    dense = keras.layers.Dense(24)
    dense.build((None, 40))
    attn = keras.layers.MultiHeadAttention(num_heads=4, key_dim=10)
    attn.build((None, 7, 40), (None, 7, 40))
    for layer in (dense, attn.query_dense, attn.key_dense, attn.value_dense, attn.output_dense):
        for weight in layer.weights:
            weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
        layer.quantize("int8")
    return dense, attn


@_ONEDNN_INT8
def test_int8_dense_computes_what_keras_int8_layers_compute(rng):
    dense, attn = _int8_layers(rng)
    tokens = rng.normal(0, 1, (3, 7, 40)).astype("float32")
    # Rows at the extremes of int8: every product is 127 * +-127, the case
    # where kernels without VNNI saturate their 16-bit partial sums.
    tokens[0, :2] = np.where(rng.uniform(size=(2, 40)) < 0.5, -1.0, 1.0)
    dense.kernel_scale.assign(np.ones(dense.kernel_scale.shape, "float32"))
    dense._kernel.assign(np.where(rng.uniform(size=(40, 24)) < 0.5, -127, 127).astype("int8"))
    heads = rng.normal(0, 1, (3, 7, 4, 10)).astype("float32")
    cases = [
        (dense, tokens, tokens.reshape(21, 40), (21, 24)),
        (dense, tokens, tokens, (3, 7, 24)),
        (attn.query_dense, tokens, tokens.reshape(21, 40), (21, 40)),
        (attn.value_dense, tokens, tokens, (3, 7, 40)),
        (attn.output_dense, heads, heads.reshape(21, 40), (21, 40)),
    ]
    for layer, keras_input, rows, shape in cases:
        assert _tf_kernels.int8_dense_supports(layer), layer.name
        expected = keras.ops.convert_to_numpy(layer(keras_input)).reshape(shape)
        got = tf.function(lambda x, _layer=layer: _tf_kernels.int8_dense(_layer, x))(rows).numpy()
        # The integer products are exact on both sides; the float steps
        # after them are Keras' own, in its order.
        np.testing.assert_array_equal(got, expected, err_msg=layer.name)
    # With Keras' LoRA on each layer (the factors not zero), its term is
    # added as Keras adds it; only its two small float products may round
    # otherwise than Keras' einsum.
    without_lora = [keras.ops.convert_to_numpy(layer(keras_input)) for layer, keras_input, _, _ in cases]
    for layer in {id(case[0]): case[0] for case in cases}.values():
        layer.enable_lora(3, lora_alpha=6, b_initializer="random_normal")
    for (layer, keras_input, rows, shape), before in zip(cases, without_lora):
        expected = keras.ops.convert_to_numpy(layer(keras_input))
        assert np.abs(expected - before).max() > 0.01, layer.name
        got = tf.function(lambda x, _layer=layer: _tf_kernels.int8_dense(_layer, x))(rows).numpy()
        np.testing.assert_allclose(got, expected.reshape(shape), rtol=1e-6, atol=1e-6, err_msg=layer.name)
    # Another equation, an activation: Keras' call.
    other = keras.layers.EinsumDense("ab,bc->ac", output_shape=5)
    other.build((None, 3))
    other.quantize("int8")
    relu = keras.layers.Dense(3, activation="relu")
    relu.build((None, 3))
    relu.quantize("int8")
    assert not _tf_kernels.int8_dense_supports(other) and not _tf_kernels.int8_dense_supports(relu)
    assert not _tf_kernels.int8_dense_supports(keras.layers.Dense(3))


def _graph_op_types(function, *args):
    """`{op type: count}` of `function`'s graph for `args`, nested functions included."""
    return collections.Counter(op.type for op in graph_operations(function, *args))


def _int8_block(rng, **kwargs):
    """A TransformerBlock with random weights, quantized by Keras."""
    inputs = keras.Input((7, kwargs["hidden_dim"]))
    model = randomize(keras.Model(inputs, layers.TransformerBlock(**kwargs)(inputs)))
    assert not _tf_kernels.int8_block_supports(model.layers[-1])
    model.quantize("int8")
    return model.layers[-1], rng.normal(0, 1, (3, 7, kwargs["hidden_dim"])).astype("float32")


@_ONEDNN_INT8
@pytest.mark.parametrize("size", [dict(hidden_dim=24, num_heads=4, mlp_dim=40),
                                  dict(hidden_dim=16, num_heads=2, mlp_dim=64)])
def test_int8_block_fuses_what_lies_between_its_products(rng, size):
    # Two sizes: the XLA kernels are shared by every block of the process.
    block, tokens = _int8_block(rng, **size)
    assert _tf_kernels.int8_block_supports(block)
    spec = tf.TensorSpec((None,) + tokens.shape[1:], tf.float32)
    for class_token_only in (False, True):
        # Outside the model's inference graphs: Keras' int8 layers, one by one.
        expected, expected_weights = block(tokens, return_attention_scores=True, class_token_only=class_token_only)
        fused = tf.function(lambda t, _c=class_token_only: block(t, return_attention_scores=True,
                                                                 class_token_only=_c))
        with backend.in_process_inference():
            outputs, weights = fused(tokens)
            # Another batch: the XLA kernels' signatures are then generalised.
            fewer = fused(tokens[:2])[0]
            graph = fused.get_concrete_function(spec).graph
        # Six oneDNN products and six XLA calls between them; the LayerNorms,
        # GELU and head transposes are inside those.
        top = collections.Counter(op.type for op in graph.get_operations())
        assert top["QuantizedMatMulWithBias"] == 6 and top["BatchMatMulV2"] == 2, top
        assert sum(top[t] for t in ("PartitionedCall", "StatefulPartitionedCall")) == 6, top
        assert not {"Transpose", "Erf", "Erfc", "FusedBatchNormV3", "Mean"} & set(top), top
        np.testing.assert_allclose(outputs.numpy(), keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights.numpy(), keras.ops.convert_to_numpy(expected_weights), atol=1e-6)
        np.testing.assert_allclose(fewer.numpy(), outputs.numpy()[:2], rtol=1e-5, atol=1e-5)


@_ONEDNN_INT8
def test_int8_model_with_lora_predicts_on_onednn_int8_products(rng):
    # Keras' LoRA on an int8 model's quantized layers (fine-tuning it):
    # predict keeps oneDNN's int8 products, each with its LoRA term, block
    # by block layer by layer (the fused int8 block has no LoRA term).
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    depth = len(model.blocks)
    int8 = keras_vit.with_precision(model, "int8")
    x = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    before = int8.predict_on_batch(x)
    for layer in int8._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "quantization_mode", None) == "int8" and layer is not int8.head:
            layer.enable_lora(2, b_initializer="random_normal")
    assert not any(_tf_kernels.int8_block_supports(block) for block in int8.blocks)
    int8.predict_function = None
    spec = tf.TensorSpec((None,) + TINY_SHAPE, tf.float32)
    ops = _graph_op_types(tf.function(int8.predict_step), spec)
    assert ops["QuantizedMatMulWithBias"] == 1 + 6 * depth, ops
    reference = tf.function(lambda images: int8(images, training=False))(x).numpy()  # Keras' int8 layers
    predicted = int8.predict_on_batch(x)
    assert np.abs(predicted - before).max() > 1e-3
    np.testing.assert_allclose(predicted, reference, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(int8(x)), reference, atol=1e-5)


def test_int8_dense_only_in_the_models_own_inference_graphs(rng, tmp_path):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    depth = len(model.blocks)
    int8 = keras_vit.with_precision(model, "int8")
    x = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    spec = tf.TensorSpec((None,) + TINY_SHAPE, tf.float32)
    # A graph of the model's call: Keras' int8 layers (it may be saved, or
    # compiled by XLA).
    call = tf.function(lambda images: int8(images, training=False))
    assert "QuantizedMatMulWithBias" not in _graph_op_types(call, spec)
    reference = call(x).numpy()
    predicted = int8.predict_on_batch(x)
    if not backend.onednn_int8():
        assert int8.jit_compile is True
        np.testing.assert_allclose(predicted, reference, atol=1e-5)
        return
    # Where oneDNN's int8 kernel applies, the model's predict and evaluate
    # steps and its eager call run it for the patch projection and every
    # block's six products (not under XLA, which cannot compile it); the
    # head stays Keras'. The values are the same.
    assert int8.jit_compile is False and model.jit_compile is False
    ops = _graph_op_types(tf.function(int8.predict_step), spec)
    assert ops["QuantizedMatMulWithBias"] == 1 + 6 * depth, ops
    assert ops["BatchMatMulV3"] == 1, ops  # the head's int8 product, Keras'
    np.testing.assert_allclose(predicted, reference, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(int8(x)), reference, atol=1e-5)
    int8.compile(loss="sparse_categorical_crossentropy")
    assert _graph_op_types(tf.function(int8.test_step), (spec, tf.TensorSpec((None,), tf.int32)))[
        "QuantizedMatMulWithBias"] == 1 + 6 * depth
    # A user's jit_compile=True: XLA compiles Keras' int8 path instead.
    int8.jit_compile = True
    int8.predict_function = None
    np.testing.assert_allclose(int8.predict_on_batch(x), reference, atol=1e-5)
    # An export holds Keras' int8 graph, which any TensorFlow build serves.
    path = keras_vit.export.export_saved_model(int8, str(tmp_path))
    saved = next(pathlib.Path(path).rglob("saved_model.pb")).read_bytes()
    assert b"QuantizedMatMulWithBias" not in saved and b"BatchMatMulV3" in saved
