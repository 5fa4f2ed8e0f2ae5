"""Tests of keras_vit.layers: values against hand computations, Keras'
Conv2D, and timm's Block on the same random weights."""

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import layers
from tests.conftest import run_layer_test


# --- Patches -----------------------------------------------------------------


def test_patches_row_major_order_and_values(rng):
    images = rng.normal(size=(2, 8, 12, 3)).astype("float32")
    patches = keras.ops.convert_to_numpy(layers.Patches(4)(images))
    assert patches.shape == (2, 6, 48)
    # Patch k is at grid row k // 3, column k % 3, flattened (row, col, channel).
    for k in range(6):
        r, c = divmod(k, 3)
        expected = images[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4, :].reshape(2, -1)
        np.testing.assert_array_equal(patches[:, k], expected)


def test_patches_dense_equals_conv2d_patch_embedding(rng):
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    conv = keras.layers.Conv2D(8, 16, strides=16, padding="valid")
    conv_out = keras.ops.convert_to_numpy(conv(images)).reshape(2, 4, 8)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
    dense_out = layers.Patches(16)(images) @ kernel.reshape(16 * 16 * 3, 8) + bias
    np.testing.assert_allclose(dense_out, conv_out, atol=1e-5)


def test_patches_rejects_indivisible_size():
    with pytest.raises(ValueError, match=r"height 30 and width 32 .*patch_size=16"):
        layers.Patches(16)(np.zeros((1, 30, 32, 3), "float32"))


@pytest.mark.parametrize("bad", [0, -4, 2.5, "16", True])
def test_patches_rejects_bad_patch_size(bad):
    with pytest.raises((ValueError, TypeError), match="patch_size"):
        layers.Patches(bad)


def test_patches_layer_contract(rng, tmp_path):
    images = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    _, output = run_layer_test(layers.Patches, {"patch_size": 4}, images, (2, 4, 48), tmp_path)
    np.testing.assert_array_equal(output[:, 3], images[:, 4:, 4:].reshape(2, -1))


# --- PatchEncoder ------------------------------------------------------------


def test_patch_encoder_values(rng):
    patches = rng.normal(size=(2, 4, 12)).astype("float32")
    encoder = layers.PatchEncoder(num_patches=4, hidden_dim=6)
    encoder.build(patches.shape)
    kernel = rng.normal(size=(12, 6)).astype("float32")
    bias = rng.normal(size=(6,)).astype("float32")
    cls = rng.normal(size=(1, 1, 6)).astype("float32")
    pos = rng.normal(size=(1, 5, 6)).astype("float32")
    encoder.projection.kernel.assign(kernel)
    encoder.projection.bias.assign(bias)
    encoder.class_token.assign(cls)
    encoder.position_embedding.assign(pos)
    out = keras.ops.convert_to_numpy(encoder(patches))
    expected = np.concatenate([np.repeat(cls, 2, axis=0), patches @ kernel + bias], axis=1) + pos
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_patch_encoder_weights_for_vit_b16():
    encoder = layers.PatchEncoder(num_patches=196, hidden_dim=768)
    encoder.build((None, 196, 768))
    assert tuple(encoder.position_embedding.shape) == (1, 197, 768)
    assert tuple(encoder.class_token.shape) == (1, 1, 768)
    # Created with add_weight: tracked, trainable, and named like the rest.
    paths = {w.path for w in encoder.trainable_weights}
    assert {"patch_encoder/class_token", "patch_encoder/position_embedding"} <= paths
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(encoder.class_token), 0.0)
    assert 0.015 < float(np.std(keras.ops.convert_to_numpy(encoder.position_embedding))) < 0.025


def test_patch_encoder_rejects_wrong_patch_count():
    with pytest.raises(ValueError, match=r"num_patches=4 but received 9 patches"):
        layers.PatchEncoder(num_patches=4, hidden_dim=8)(np.zeros((1, 9, 12), "float32"))


def test_patch_encoder_dropout_only_in_training():
    encoder = layers.PatchEncoder(num_patches=4, hidden_dim=64, dropout_rate=0.5)
    patches = np.ones((2, 4, 12), "float32")
    np.testing.assert_array_equal(encoder(patches), encoder(patches, training=False))
    trained = keras.ops.convert_to_numpy(encoder(patches, training=True))
    assert 0.3 < float(np.mean(trained == 0.0)) < 0.7


def test_patch_encoder_layer_contract(rng, tmp_path):
    layer, output = run_layer_test(
        layers.PatchEncoder,
        {"num_patches": 4, "hidden_dim": 8, "dropout_rate": 0.1},
        rng.normal(size=(2, 4, 12)).astype("float32"),
        (2, 5, 8),
        tmp_path,
    )
    # Without dropout (inference) the class token row is class token + position 0.
    np.testing.assert_allclose(
        output[:, 0], np.broadcast_to(layer.class_token[0, 0] + layer.position_embedding[0, 0], (2, 8)),
        atol=1e-6,
    )


# --- TransformerBlock --------------------------------------------------------


def test_transformer_block_layer_contract(rng, tmp_path):
    layer, output = run_layer_test(
        layers.TransformerBlock,
        {
            "hidden_dim": 16,
            "num_heads": 4,
            "mlp_dim": 32,
            "dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "drop_path_rate": 0.1,
            "layer_norm_epsilon": 1e-6,
        },
        rng.normal(size=(2, 5, 16)).astype("float32"),
        (2, 5, 16),
        tmp_path,
    )
    assert np.all(np.isfinite(output)) and len(layer.weights) == 16


def _numpy_block(block, x):
    """The ViT block written out in NumPy from the layer's own weights."""
    w = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v) for v in block.weights}

    def layer_norm(v, name):
        mean = v.mean(-1, keepdims=True)
        var = v.var(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + 1e-6) * w[f"{name}/gamma"] + w[f"{name}/beta"]

    from scipy.special import erf

    h = layer_norm(x, "norm1")
    q, k, v = (
        np.einsum("btd,dnh->bnth", h, w[f"attn/{n}/kernel"]) + w[f"attn/{n}/bias"][None, :, None]
        for n in ("query", "key", "value")
    )
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bnth,nhd->btd", probs @ v, w["attn/attention_output/kernel"])
    x = x + attended + w["attn/attention_output/bias"]
    h = layer_norm(x, "norm2") @ w["mlp_fc1/kernel"] + w["mlp_fc1/bias"]
    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # exact GELU
    return x + h @ w["mlp_fc2/kernel"] + w["mlp_fc2/bias"], probs


@pytest.mark.parametrize("fast_kernels", [True, False])
def test_transformer_block_matches_numpy_reference(rng, fast_kernels, fast_kernels_switch):
    # Both paths: the backend's fast kernels and Keras' plain layers.
    fast_kernels_switch(fast_kernels)
    block = layers.TransformerBlock(hidden_dim=12, num_heads=3, mlp_dim=20)
    fast_kernels_switch(None)
    assert block.fast_kernels is fast_kernels and block.norm1.fast_kernels is fast_kernels
    x = rng.normal(size=(2, 7, 12)).astype("float32")
    block.build(x.shape)
    for variable in block.weights:
        variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype("float32"))
    out, scores = block(x, return_attention_scores=True)
    expected_out, expected_scores = _numpy_block(block, x.astype("float64"))
    np.testing.assert_allclose(out, expected_out, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(np.sum(scores, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(block(x), out, atol=1e-5)


@pytest.mark.parametrize("policy, atol", [("float32", 1e-5), ("mixed_bfloat16", 3e-2)])
def test_transformer_block_attention_equals_keras_multi_head_attention(rng, policy, atol):
    # The block computes attention from its `attn` layer's variables by its
    # own (faster) route; Keras' MultiHeadAttention on the same variables is
    # the reference.
    keras.config.set_dtype_policy(policy)
    block = layers.TransformerBlock(hidden_dim=12, num_heads=3, mlp_dim=20)
    x = rng.normal(size=(2, 7, 12)).astype("float32")
    block.build(x.shape)
    for variable in block.attn.weights:
        variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype("float32"))
    x = keras.ops.cast(x, block.compute_dtype)
    from keras_vit.backend import tensorflow as tf_kernels

    out, weights = tf_kernels.self_attention(block, x, training=False)
    expected, expected_weights = block.attn(x, x, return_attention_scores=True)
    assert out.dtype == expected.dtype == block.compute_dtype
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
                               keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")), atol=atol)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(weights, "float32")),
                               keras.ops.convert_to_numpy(keras.ops.cast(expected_weights, "float32")), atol=atol)


@pytest.mark.parametrize("fast_kernels", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_transformer_block_class_token_only_equals_first_row_of_full_block(rng, training, fast_kernels,
                                                                          fast_kernels_switch):
    # training=True takes the fused LayerNorm/GELU kernels; no dropout, so
    # both calls are deterministic. Values and weight gradients of a loss on
    # the class token must equal the full block's.
    import tensorflow as tf

    fast_kernels_switch(fast_kernels)
    block = layers.TransformerBlock(hidden_dim=12, num_heads=3, mlp_dim=20)
    fast_kernels_switch(None)
    x = tf.constant(rng.normal(size=(2, 7, 12)).astype("float32"))
    block.build(x.shape)
    for variable in block.weights:
        variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype("float32"))
    probe = tf.constant(rng.normal(size=(2, 1, 12)).astype("float32"))
    results = {}
    for class_token_only in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out, scores = block(x, training=training, return_attention_scores=True,
                                class_token_only=class_token_only)
            loss = tf.reduce_sum(out[:, :1] * probe)
        grads = tape.gradient(loss, [x] + block.trainable_weights)
        results[class_token_only] = out.numpy(), scores.numpy(), [g.numpy() for g in grads]
    (full, full_scores, full_grads), (cls, cls_scores, cls_grads) = results[False], results[True]
    assert cls.shape == (2, 1, 12) and cls_scores.shape == (2, 3, 1, 7)
    # The first row differs from the others (so the comparison can fail).
    assert np.abs(full[:, :1] - full[:, 1:2]).max() > 0.1
    np.testing.assert_allclose(cls, full[:, :1], atol=1e-5)
    np.testing.assert_allclose(cls_scores, full_scores[:, :, :1], atol=1e-6)
    # Key bias: zero gradient in exact arithmetic (softmax ignores a shared
    # offset), rounding noise in both.
    names = ["inputs"] + [v.path for v in block.trainable_weights]
    for name, a, b in zip(names, full_grads, cls_grads):
        if not name.endswith("key/bias"):
            np.testing.assert_allclose(b, a, atol=2e-5, err_msg=name)
    assert np.abs(full_grads[0]).max() > 1e-2


def test_transformer_block_class_token_only_symbolic_shapes():
    inputs = keras.Input((9, 8))
    outputs, scores = layers.TransformerBlock(8, 2, 16)(
        inputs, return_attention_scores=True, class_token_only=True)
    assert tuple(outputs.shape) == (None, 1, 8)
    assert tuple(scores.shape) == (None, 2, 1, 9)


def test_transformer_block_attention_dropout_only_in_training(rng):
    block = layers.TransformerBlock(hidden_dim=8, num_heads=2, mlp_dim=16, attention_dropout_rate=0.5)
    x = rng.normal(size=(4, 6, 8)).astype("float32")
    inference = block(x, training=False)
    np.testing.assert_allclose(block(x, training=False), inference)
    trained = block(x, training=True)
    assert np.abs(keras.ops.convert_to_numpy(trained) - keras.ops.convert_to_numpy(inference)).max() > 1e-3


def test_transformer_block_symbolic_attention_scores():
    inputs = keras.Input((9, 8))
    outputs, scores = layers.TransformerBlock(8, 2, 16)(inputs, return_attention_scores=True)
    assert tuple(outputs.shape) == (None, 9, 8)
    assert tuple(scores.shape) == (None, 2, 9, 9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_dim=10, num_heads=3, mlp_dim=8), r"hidden_dim=10 must be divisible by num_heads=3"),
        (dict(hidden_dim=8, num_heads=0, mlp_dim=8), "num_heads"),
        (dict(hidden_dim=8, num_heads=2, mlp_dim=-1), "mlp_dim"),
        (dict(hidden_dim=8, num_heads=2, mlp_dim=8, dropout_rate=1.0), "dropout_rate"),
        (dict(hidden_dim=8, num_heads=2, mlp_dim=8, attention_dropout_rate=-0.1), "attention_dropout_rate"),
        (dict(hidden_dim=8, num_heads=2, mlp_dim=8, drop_path_rate="0.1"), "drop_path_rate"),
        (dict(hidden_dim=8, num_heads=2, mlp_dim=8, layer_norm_epsilon=0), "layer_norm_epsilon"),
    ],
)
def test_transformer_block_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layers.TransformerBlock(**kwargs)


def test_transformer_block_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\(batch, tokens, 8\)"):
        layers.TransformerBlock(8, 2, 16)(np.zeros((1, 3, 6), "float32"))


# --- DropPath and pooling ----------------------------------------------------


def test_drop_path_drops_whole_samples_and_rescales():
    layer = layers.DropPath(0.5, seed=1)
    x = np.ones((512, 3, 4), "float32")
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = out.reshape(512, -1)
    # Every sample is either dropped whole or kept whole and scaled by 1/keep.
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert 0.4 < float(np.mean(per_sample[:, 0] == 0.0)) < 0.6
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_drop_path_draws_new_masks_every_step_and_repeats_with_the_seed():
    import tensorflow as tf

    def masks():
        keras.utils.set_random_seed(7)
        layer = layers.DropPath(0.5)
        step = tf.function(lambda x: layer(x, training=True))
        x = np.ones((64, 2, 3), "float32")
        return [keras.ops.convert_to_numpy(step(x))[:, 0, 0] for _ in range(3)]

    first, again = masks(), masks()
    # Inside a compiled training step each call draws a new mask...
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    # ...and the same global seed gives the same sequence of masks.
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_drop_path_layer_contract(rng, tmp_path):
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    _, output = run_layer_test(layers.DropPath, {"rate": 0.2, "seed": 3}, x, (2, 3, 4), tmp_path)
    np.testing.assert_array_equal(output, x)  # identity at inference


def test_pooling_layers(rng, tmp_path):
    tokens = rng.normal(size=(2, 5, 4)).astype("float32")
    np.testing.assert_array_equal(layers.ClassTokenPooling()(tokens), tokens[:, 0])
    np.testing.assert_allclose(
        layers.PatchTokenAveragePooling()(tokens), tokens[:, 1:].mean(axis=1), atol=1e-6
    )
    run_layer_test(layers.ClassTokenPooling, {}, tokens, (2, 4), tmp_path)
    run_layer_test(layers.PatchTokenAveragePooling, {}, tokens, (2, 4), tmp_path)


def test_horizontal_flip_mirrors_the_width_axis_only(rng, tmp_path):
    images = rng.normal(size=(2, 3, 5, 3)).astype("float32")
    _, output = run_layer_test(layers.HorizontalFlip, {}, images, (2, 3, 5, 3), tmp_path)
    np.testing.assert_array_equal(output, images[:, :, ::-1, :])
    # Not an identity, not the height axis, and the same at training time
    # (unlike keras.layers.RandomFlip, which flips at random in training only).
    assert not np.array_equal(output, images)
    assert not np.array_equal(output, images[:, ::-1])
    np.testing.assert_array_equal(layers.HorizontalFlip()(images, training=True), output)


def test_horizontal_flip_rejects_non_images():
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\), received shape \(2, 5\)"):
        layers.HorizontalFlip()(np.zeros((2, 5), "float32"))


def test_layers_exported_at_top_level():
    for name in ("Patches", "PatchEncoder", "TransformerBlock", "HorizontalFlip"):
        assert getattr(keras_vit, name) is getattr(layers, name)
        assert name in keras_vit.__all__
