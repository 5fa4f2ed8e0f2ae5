"""Tests of the builders: parameter counts, output shapes, argument checks,
serialization, and mixed precision."""

import gc

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import models, variants
from tests.conftest import TINY_SHAPE, TINY_VARIANT, randomize
from tests.test_variants import REFERENCE_PARAMS

_LARGE = {"L/16", "L/32", "H/14"}


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=pytest.mark.slow) if v in _LARGE else v for v in sorted(REFERENCE_PARAMS)],
)
def test_builder_param_count_equals_reference(variant):
    model = models.BUILDERS[variant](weights=None)
    try:
        assert model.count_params() == REFERENCE_PARAMS[variant]
        assert model.output_shape == (None, 1000)
        assert model.name == "vit_" + variant.lower().replace("/", "")
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def test_vit_b16_count_params():
    assert keras_vit.ViTB16(weights=None).count_params() == 86_567_656


def test_builders_are_the_table():
    for variant, builder in models.BUILDERS.items():
        assert builder.__name__ == "ViT" + variant.replace("/", "")
        assert getattr(keras_vit, builder.__name__) is builder


def test_headless_b16_has_85798656_params():
    model = keras_vit.ViTB16(include_top=False, weights=None)
    assert model.count_params() == 85_798_656
    assert model.output_shape == (None, 197, 768)


def test_ti16_token_features(rng):
    images = rng.uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    features = keras_vit.ViTTi16(include_top=False, pooling=None, weights=None)(images)
    assert tuple(features.shape) == (2, 197, 192)
    # The final LayerNorm is applied: every token is normalised.
    np.testing.assert_allclose(np.mean(features, axis=-1), 0.0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(), (None, 5)),
        (dict(include_top=False, pooling="token"), (None, 16)),
        (dict(include_top=False, pooling="avg"), (None, 16)),
        (dict(include_top=False), (None, 17, 16)),
        (dict(pooling="avg"), (None, 5)),
        (dict(representation_size=24), (None, 5)),
    ],
)
def test_pooling_and_head_shapes(kwargs, shape):
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, **kwargs)
    assert model.output_shape == shape


def test_pooling_values(rng):
    images = rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    tokens_model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, include_top=False))
    tokens = keras.ops.convert_to_numpy(tokens_model(images))
    for pooling, expected in (("token", tokens[:, 0]), ("avg", tokens[:, 1:].mean(axis=1))):
        pooled = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, include_top=False, pooling=pooling)
        pooled.set_weights(tokens_model.get_weights())
        np.testing.assert_allclose(pooled(images), expected, atol=1e-5)


def test_head_values_and_activation(rng):
    images = rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    logits_model = randomize(
        keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, classifier_activation=None)
    )
    softmax_model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
    softmax_model.set_weights(logits_model.get_weights())
    logits = keras.ops.convert_to_numpy(logits_model(images))
    features = keras.ops.convert_to_numpy(
        keras.Model(logits_model.input, logits_model.get_layer("token_pooling").output)(images)
    )
    head = logits_model.get_layer("head")
    np.testing.assert_allclose(
        logits, features @ keras.ops.convert_to_numpy(head.kernel) + keras.ops.convert_to_numpy(head.bias),
        atol=1e-5,
    )
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(softmax_model(images), exp / exp.sum(-1, keepdims=True), atol=1e-6)


def test_original_initialisation():
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
    encoder = model.get_layer("patch_encoder")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(encoder.class_token), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("head").kernel), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("head").bias), 0.0)
    # Uniform predictions from a zero head.
    np.testing.assert_allclose(model(np.zeros((1,) + TINY_SHAPE, "float32")), 0.2, atol=1e-6)


@pytest.mark.parametrize("input_shape, patches", [((48, 32, 3), 96), ((8, 8, 1), 4), ((64, 64, 3), 256)])
def test_any_input_size_divisible_by_patch(input_shape, patches, rng):
    model = keras_vit.ViT(TINY_VARIANT, input_shape=input_shape, include_top=False)
    assert model.output_shape == (None, patches + 1, 16)
    out = model(rng.uniform(-1, 1, (2,) + input_shape).astype("float32"))
    assert tuple(out.shape) == (2, patches + 1, 16)


def test_custom_sizes():
    model = keras_vit.ViT(
        patch_size=4, hidden_dim=24, num_layers=3, num_heads=4, mlp_dim=48,
        input_shape=(32, 32, 3), classes=10,
    )
    config = variants.ViTConfig(patch_size=4, hidden_dim=24, num_layers=3, num_heads=4, mlp_dim=48)
    assert model.count_params() == config.num_params(image_size=32, classes=10)
    assert len([layer for layer in model.layers if isinstance(layer, keras_vit.TransformerBlock)]) == 3
    overridden = keras_vit.ViT("Ti/16", num_layers=2, input_shape=(32, 32, 3), classes=10)
    assert overridden.count_params() == variants.ViTConfig(16, 192, 2, 3, 768).num_params(32, 10)


def test_drop_path_grows_linearly_with_depth():
    model = keras_vit.ViT("Test/4", num_layers=5, input_shape=TINY_SHAPE, drop_path_rate=0.2)
    rates = [layer.drop_path_rate for layer in model.layers if isinstance(layer, keras_vit.TransformerBlock)]
    np.testing.assert_allclose(rates, [0.0, 0.05, 0.1, 0.15, 0.2])


def test_input_tensor():
    inputs = keras.Input((16, 16, 3))
    model = keras_vit.ViT(TINY_VARIANT, input_tensor=inputs, classes=3)
    assert model.inputs[0] is inputs
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(pooling="max"), ValueError, r"pooling must be one of 'token', 'avg', None; received pooling='max'"),
        (dict(classes=0), ValueError, r"classes=0"),
        (dict(classes=2.5), TypeError, r"classes=2.5"),
        (dict(input_shape=(30, 32, 3)), ValueError, r"height 30 and width 32 must both be divisible by patch_size=4"),
        (dict(input_shape=(None, None, 3)), ValueError, r"received height=None"),
        (dict(input_shape=(32, 32)), ValueError, r"input_shape must be \(height, width, channels\)"),
        (dict(include_top=False, representation_size=8), ValueError, r"representation_size=8 .*include_top=True"),
        (dict(representation_size=0), ValueError, r"representation_size=0"),
        (dict(dropout_rate=1.5), ValueError, r"dropout_rate"),
        (dict(drop_path_rate=-0.1), ValueError, r"drop_path_rate"),
        (dict(weights=3), TypeError, r"weights=3"),
        (dict(weights="imagenet"), ValueError, r"standard sizes only .*; received variant='Test/4'"),
        (dict(weights="missing.npz"), ValueError, r"Checkpoint file not found: missing.npz"),
        (dict(include_top="yes"), TypeError, r"include_top='yes'"),
    ],
)
def test_invalid_arguments_name_argument_and_value(kwargs, error, match):
    kwargs.setdefault("input_shape", TINY_SHAPE)
    with pytest.raises(error, match=match):
        keras_vit.ViT(TINY_VARIANT, **kwargs)


def test_missing_sizes_without_variant():
    with pytest.raises(ValueError, match=r"missing num_layers, num_heads"):
        keras_vit.ViT(patch_size=4, hidden_dim=8, mlp_dim=16)


def test_keras_file_round_trip_without_custom_objects(tmp_path, rng):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, pooling="avg"))
    images = rng.uniform(-1, 1, (2,) + TINY_SHAPE).astype("float32")
    expected = model.predict(images, verbose=0)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


def _full_last_block_copy(model):
    """`model` rebuilt from its own layers with every block computing all
    tokens (the last one too), as a model without the class-token-only
    shortcut would."""
    x = inputs = keras.Input(model.input_shape[1:])
    for layer in model.layers[1:]:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("kwargs", [{}, {"include_top": False, "pooling": "token"},
                                    {"representation_size": 8}])
def test_class_token_pooling_last_block_computes_the_class_token_only(rng, tmp_path, kwargs):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, **kwargs))
    last = model.get_layer("block_1")
    assert tuple(last.output.shape) == (None, 1, 16)
    assert tuple(model.get_layer("encoder_norm").output.shape) == (None, 1, 16)
    assert tuple(model.get_layer("block_0").output.shape) == (None, 17, 16)
    full = _full_last_block_copy(model)
    images = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    expected = full.predict(images, verbose=0)
    assert np.abs(expected - expected[::-1]).max() > 1e-3  # the output depends on the image
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(model(images), expected, atol=1e-5)
    # Kept by a .keras round trip and by with_dtype_policy's clone.
    model.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras")
    assert tuple(loaded.get_layer("block_1").output.shape) == (None, 1, 16)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)
    copy = keras_vit.with_dtype_policy(model, "float32")
    assert tuple(copy.get_layer("block_1").output.shape) == (None, 1, 16)
    np.testing.assert_allclose(copy.predict(images, verbose=0), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"pooling": "avg"}, {"include_top": False, "pooling": None},
                                    {"include_top": False, "pooling": "avg"}])
def test_other_poolings_keep_every_token_of_the_last_block(kwargs):
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, **kwargs)
    assert tuple(model.get_layer("block_1").output.shape) == (None, 17, 16)


def test_class_token_only_trains_like_the_full_model(rng):
    # Two model.fit steps from the same weights: the same losses and weights
    # as the model whose last block computes every token.
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    full = _full_last_block_copy(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    full.set_weights(model.get_weights())
    images = rng.uniform(-1, 1, (8,) + TINY_SHAPE).astype("float32")
    labels = rng.integers(0, 5, 8)
    losses = []
    for m in (model, full):
        keras.utils.set_random_seed(0)
        m.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
        losses.append(m.fit(images, labels, batch_size=8, epochs=2, verbose=0, shuffle=False)
                      .history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert abs(losses[0][1] - losses[0][0]) > 1e-3  # the weights moved
    for a, b in zip(model.weights, full.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_model(policy, rng):
    images = rng.uniform(-1, 1, (2,) + TINY_SHAPE).astype("float32")
    reference = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    keras.config.set_dtype_policy(policy)
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
    model.set_weights(reference.get_weights())
    out = model(images)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    block = model.get_layer("block_0")
    assert block.compute_dtype == policy.split("_")[1]
    np.testing.assert_allclose(out, reference(images), atol=0.05)


def test_direct_call_runs_compiled_and_equals_predict(rng, tmp_path):
    import tensorflow as tf

    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    assert isinstance(model, models.VisionTransformer)
    images = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(model(images).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model(tf.constant(images), training=False).numpy(), expected, atol=1e-6)
    jit_compile, function, _ = models._INFERENCE_FUNCTIONS[model]
    assert jit_compile is False
    # Other batch sizes share one generalised trace instead of one each.
    for batch in (1, 2, 4, 5, 7):
        np.testing.assert_allclose(model(images[:1].repeat(batch, 0)).numpy()[0], expected[0], atol=1e-6)
    assert function.experimental_get_tracing_count() <= 3
    # Keras' op-by-op path gives the same numbers.
    op_by_op = keras.Model.__call__(model, images, training=False)
    np.testing.assert_allclose(model(images).numpy(), op_by_op.numpy(), atol=1e-6)
    # Gradients flow through the compiled call.
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x)[:, 0])
    with tf.GradientTape() as tape2:
        tape2.watch(x)
        loss2 = tf.reduce_sum(keras.Model.__call__(model, x, training=False)[:, 0])
    np.testing.assert_allclose(tape.gradient(loss, x), tape2.gradient(loss2, x), atol=1e-6)
    # Symbolic calls still build models.
    inputs = keras.Input(TINY_SHAPE)
    outer = keras.Model(inputs, model(inputs))
    np.testing.assert_allclose(outer.predict(images, verbose=0), expected, atol=1e-6)
    # The cached function is not saved into SavedModels or .keras files.
    tf.saved_model.save(model, str(tmp_path / "saved"))
    assert not [name for name in dir(tf.saved_model.load(str(tmp_path / "saved"))) if "inference" in name]
    model.save(tmp_path / "model.keras")
    loaded = keras_vit.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, models.VisionTransformer)
    np.testing.assert_allclose(loaded(images).numpy(), expected, atol=1e-6)


def test_direct_call_follows_a_model_changed_in_place(rng):
    # The compiled direct call traced before the change must not keep
    # computing the model as it was (Keras resets its predict function on
    # quantize; a layer's enable_lora and an in-place precision change add
    # or replace variables too).
    images = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")

    def lora(model):
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and layer is not model.head:
                layer.enable_lora(2, b_initializer="random_normal")

    changes = {"quantize": lambda m: m.quantize("int8"), "lora": lora,
               "bfloat16": lambda m: keras_vit.with_precision(m, "bfloat16", copy=False)}
    for name, change in changes.items():
        model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5,
                                        classifier_activation=None))
        before = model(images).numpy()
        change(model)
        after = model(images).numpy()
        op_by_op = keras.ops.convert_to_numpy(keras.Model.__call__(model, images, training=False))
        assert np.abs(op_by_op - before).max() > 1e-3, name
        assert not np.array_equal(after, before), name  # what the graph before the change gives
        # bfloat16: the compiled graph's kernels round otherwise than op by op.
        np.testing.assert_allclose(after, op_by_op, atol=2e-2 if name == "bfloat16" else 1e-5, err_msg=name)


def test_direct_call_in_training_mode_is_keras_path(rng):
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, dropout_rate=0.5)
    randomize(model)
    images = rng.uniform(-1, 1, (2,) + TINY_SHAPE).astype("float32")
    first, second = model(images, training=True).numpy(), model(images, training=True).numpy()
    assert not np.allclose(first, second)  # dropout is on: a fresh mask per call
    assert model not in models._INFERENCE_FUNCTIONS
    np.testing.assert_array_equal(model(images).numpy(), model(images).numpy())


def test_preprocess_input():
    pixels = np.array([[0.0, 63.75, 127.5, 255.0]])
    np.testing.assert_allclose(keras_vit.preprocess_input(pixels), [[-1.0, -0.5, 0.0, 1.0]])
    tensor = keras_vit.preprocess_input(keras.ops.convert_to_tensor(np.array([255], "uint8")))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor), [1.0])
    assert keras_vit.preprocess_input(np.uint8([0])).dtype == np.float32


def test_trains_with_fit(rng):
    # Two separable classes: a few steps of fit must lower the loss.
    images = np.concatenate([np.full((16,) + TINY_SHAPE, -0.5), np.full((16,) + TINY_SHAPE, 0.5)])
    images = (images + rng.normal(0, 0.1, images.shape)).astype("float32")
    labels = np.array([0] * 16 + [1] * 16)
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=2, drop_path_rate=0.1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(images, labels, epochs=15, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] == 1.0


def test_include_preprocessing_equals_preprocess_input(rng):
    pixels = rng.uniform(0, 255, (2,) + TINY_SHAPE).astype("float32")
    plain = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    with_pre = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, include_preprocessing=True)
    with_pre.set_weights(plain.get_weights())
    assert with_pre.count_params() == plain.count_params()
    np.testing.assert_allclose(with_pre(pixels), plain(keras_vit.preprocess_input(pixels)), atol=1e-6)


def test_named_parts_are_the_model_layers():
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5, representation_size=8,
                          include_preprocessing=True)
    assert model.patch_encoder is model.get_layer("patch_encoder")
    assert isinstance(model.patch_encoder, keras_vit.PatchEncoder)
    assert [b.name for b in model.blocks] == [f"block_{i}" for i in range(len(model.blocks))]
    assert len(model.blocks) == variants.get_config(TINY_VARIANT).num_layers
    assert model.encoder_norm is model.get_layer("encoder_norm")
    assert model.pre_logits.units == 8 and model.head.units == 5
    assert model.preprocessing is model.get_layer("preprocessing")
    features = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, include_top=False, pooling="avg")
    assert features.head is None and features.pre_logits is None and features.preprocessing is None
    patch = variants.get_config(TINY_VARIANT).patch_size
    assert model.patch_grid == (TINY_SHAPE[0] // patch, TINY_SHAPE[1] // patch)
    # The module functions find the same parts in a plain functional copy.
    plain = keras.Model(model.inputs, model.outputs)
    assert models.get_part(plain, "head") is model.head
    assert models.get_blocks(plain) == model.blocks
    with pytest.raises(ValueError, match="'classifier'.*expected one of"):
        models.get_part(model, "classifier")
