"""Property-based tests (issue 8) with hypothesis: random valid sizes of the
layers and builders give outputs of the right shape, finite, that survive a
serialization round trip; random invalid arguments each raise ValueError or
TypeError naming the argument; random bytes given as images decode or are
refused, never crash."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_vit
from keras_vit import images as vit_images
from keras_vit import layers

FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def vit_configs(draw):
    heads = draw(st.integers(1, 3))
    patch = draw(st.integers(1, 4))
    return dict(
        patch_size=patch,
        hidden_dim=heads * draw(st.integers(1, 4)),
        num_heads=heads,
        mlp_dim=draw(st.integers(1, 8)),
        num_layers=draw(st.integers(1, 2)),
        input_shape=(patch * draw(st.integers(1, 4)), patch * draw(st.integers(1, 4)),
                     draw(st.sampled_from([1, 3]))),
        include_top=draw(st.booleans()),
        pooling=draw(st.sampled_from(["token", "avg"])),
        classes=draw(st.integers(1, 4)),
        representation_size=draw(st.sampled_from([None, 3])),
        drop_path_rate=draw(st.sampled_from([0.0, 0.3])),
        dropout_rate=draw(st.sampled_from([0.0, 0.2])),
    )


@FUZZ
@given(config=vit_configs(), batch=st.integers(1, 3),
       policy=st.sampled_from(["float32", "mixed_bfloat16"]))
def test_random_valid_vits_give_finite_outputs_and_round_trip(config, batch, policy):
    keras.config.set_dtype_policy(policy)
    try:
        if not config["include_top"]:
            config["representation_size"] = None
        model = keras_vit.ViT(**config)
        images = np.random.default_rng(0).uniform(-1, 1, (batch,) + config["input_shape"]).astype("float32")
        outputs = keras.ops.convert_to_numpy(model(images, training=False)).astype("float32")
        width = config["classes"] if config["include_top"] else config["hidden_dim"]
        assert outputs.shape == (batch, width)
        assert np.isfinite(outputs).all()
        if config["include_top"]:
            np.testing.assert_allclose(outputs.sum(axis=-1), 1.0, atol=1e-2)
        # The model's own class (as `.keras` files restore it): its predict
        # graph computes the LayerNorms with the compiled kernel, which in
        # bfloat16 rounds differently (one bfloat16 step) from a plain
        # functional model's Keras ops.
        clone = type(model).from_config(model.get_config())
        assert type(clone) is keras_vit.models.VisionTransformer
        clone.set_weights(model.get_weights())
        # The same execution mode on both sides: the model's direct call runs
        # a compiled graph, whose fused bfloat16 kernels round differently
        # from Keras' op-by-op path (one bfloat16 step).
        expected = model.predict(images, verbose=0).astype("float32")
        again = clone.predict(images, verbose=0).astype("float32")
        np.testing.assert_allclose(again, expected, atol=1e-6)
        np.testing.assert_allclose(outputs, expected, atol=1e-2 if policy != "float32" else 1e-5)
        # Training mode (dropout, stochastic depth) stays finite too.
        trained = keras.ops.convert_to_numpy(model(images, training=True)).astype("float32")
        assert trained.shape == outputs.shape and np.isfinite(trained).all()
    finally:
        keras.config.set_dtype_policy("float32")
        keras.backend.clear_session(free_memory=False)


@FUZZ
@given(heads=st.integers(1, 4), head_dim=st.integers(1, 6), mlp_dim=st.integers(1, 16),
       batch=st.integers(1, 3), tokens=st.integers(1, 12), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_random_transformer_blocks(heads, head_dim, mlp_dim, batch, tokens, scale):
    block = layers.TransformerBlock(heads * head_dim, heads, mlp_dim)
    x = np.random.default_rng(1).normal(0, scale, (batch, tokens, heads * head_dim)).astype("float32")
    y = keras.ops.convert_to_numpy(block(x))
    assert y.shape == x.shape and np.isfinite(y).all()
    clone = layers.TransformerBlock.from_config(block.get_config())
    clone(x)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), y, rtol=1e-5, atol=1e-5 * scale)


@FUZZ
@given(patch=st.integers(1, 5), grid_h=st.integers(1, 4), grid_w=st.integers(1, 4),
       channels=st.integers(1, 4), batch=st.integers(1, 3))
def test_random_patches_are_the_image_cut_in_order(patch, grid_h, grid_w, channels, batch):
    images = np.random.default_rng(2).normal(size=(batch, grid_h * patch, grid_w * patch, channels))
    out = keras.ops.convert_to_numpy(layers.Patches(patch)(images.astype("float32")))
    assert out.shape == (batch, grid_h * grid_w, patch * patch * channels)
    row, col = grid_h - 1, grid_w - 1  # the last patch, row-major
    expected = images[:, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch, :]
    np.testing.assert_allclose(out[:, -1], expected.reshape(batch, -1), rtol=1e-6)


# Invalid values, each paired with the argument it is given to.
_BAD_INTS = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(),
                      st.text(max_size=3), st.none())
_BAD_RATES = st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.just(math.nan),
                       st.booleans(), st.text(max_size=3))
_INT_ARGUMENTS = ["patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim", "classes",
                  "representation_size"]
_RATE_ARGUMENTS = ["dropout_rate", "attention_dropout_rate", "drop_path_rate"]
_VALID = dict(patch_size=2, hidden_dim=4, num_layers=1, num_heads=2, mlp_dim=4,
              input_shape=(4, 4, 3), classes=3)


@FUZZ
@given(argument=st.sampled_from(_INT_ARGUMENTS), value=_BAD_INTS)
def test_invalid_sizes_raise_naming_the_argument(argument, value):
    if value is None and argument in ("representation_size", "classes"):
        return  # None is their default (classes: the named checkpoint's, else 1000)
    kwargs = dict(_VALID, **{argument: value})
    with pytest.raises((ValueError, TypeError), match=argument):
        keras_vit.ViT(**kwargs)


@FUZZ
@given(argument=st.sampled_from(_RATE_ARGUMENTS), value=_BAD_RATES)
def test_invalid_rates_raise_naming_the_argument(argument, value):
    with pytest.raises((ValueError, TypeError), match=argument):
        keras_vit.ViT(**dict(_VALID, **{argument: value}))


@FUZZ
@given(argument=st.sampled_from(["pooling", "include_top", "include_preprocessing", "weights"]),
       value=st.one_of(st.text(max_size=4), st.integers(), st.floats(allow_nan=False)))
def test_invalid_choices_raise_naming_the_argument(argument, value):
    if argument == "weights" and isinstance(value, str):
        value = 3  # a string is a checkpoint path: tested with the weights
    with pytest.raises((ValueError, TypeError), match=argument):
        keras_vit.ViT(**dict(_VALID, **{argument: value}))


@FUZZ
@given(patch=st.integers(2, 5), offset=st.integers(1, 4))
def test_image_not_divisible_by_patch_size_is_refused(patch, offset):
    size = patch * 2 + (offset % patch or 1)
    with pytest.raises(ValueError, match=f"patch_size={patch}"):
        keras_vit.ViT(**dict(_VALID, patch_size=patch, input_shape=(size, size, 3)))


_MAGICS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
           b"RIFF\x00\x00\x00\x00WEBPVP8X"]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(magic=st.sampled_from(_MAGICS), body=st.binary(max_size=300))
def test_random_bytes_as_images_decode_or_are_refused(magic, body):
    try:
        image = vit_images.decode_image(tf.constant(magic + body), (4, 4)).numpy()
    except tf.errors.InvalidArgumentError as error:
        assert vit_images.tf_error_message(error)
    else:
        assert image.shape == (4, 4, 3) and np.isfinite(image).all()
        assert image.min() >= 0 and image.max() <= 255
