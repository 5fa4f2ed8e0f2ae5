"""Tests of keras_vit.training: the optimizer, schedule, weight-decay
exclusions, augmentation and backbone freezing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from keras_vit import training
from tests.conftest import TINY_SHAPE, TINY_VARIANT


def _tiny(**kwargs):
    return keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=3, **kwargs)


def test_weight_decay_skips_biases_norms_class_token_and_positions():
    # Behaviour, not configuration: with zero gradients Adam's step is zero,
    # so only decoupled weight decay moves a variable.
    model = _tiny(representation_size=8)
    opt = training.optimizer(steps=10, learning_rate=0.1, weight_decay=0.5, warmup_steps=0,
                             clipnorm=None)
    for v in model.trainable_variables:
        v.assign(np.ones(v.shape, "float32"))
    opt.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    decayed = set()
    for v in model.trainable_variables:
        value = keras.ops.convert_to_numpy(v)
        if np.allclose(value, 1.0 - 0.1 * 0.5):
            decayed.add(v.path)
        else:
            np.testing.assert_array_equal(value, 1.0, err_msg=v.path)
    kernels = {v.path for v in model.trainable_variables if v.path.endswith("kernel")}
    assert decayed == kernels
    assert "patch_encoder/class_token" not in decayed
    assert "patch_encoder/position_embedding" not in decayed
    assert "block_0/norm1/gamma" not in decayed and "block_0/attn/query/bias" not in decayed


def test_schedule_warms_up_then_decays_to_zero():
    opt = training.optimizer(steps=100, learning_rate=1e-3, warmup_steps=10)
    schedule = opt._learning_rate
    values = [float(schedule(step)) for step in range(0, 101, 5)]
    assert values[0] == 0.0
    assert values[1] == pytest.approx(5e-4)  # linear warm-up
    assert values[2] == pytest.approx(1e-3)  # peak at the end of warm-up
    assert all(a >= b for a, b in zip(values[2:], values[3:]))  # cosine decay
    assert values[-1] == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(55)) == pytest.approx(0.5e-3, rel=1e-3)  # half way down
    assert opt.global_clipnorm == 1.0


@pytest.mark.parametrize("kwargs, match", [(dict(steps=0), r"steps=0"),
                                           (dict(steps=10, warmup_steps=10), r"warmup_steps=10")])
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        training.optimizer(**kwargs)


def test_compile_uses_label_smoothing():
    model = training.compile(_tiny(), steps=10, label_smoothing=0.2)
    assert model.loss.get_config()["label_smoothing"] == 0.2
    # Uniform predictions: the smoothed loss equals the plain one.
    loss = model.loss(np.eye(3)[[0]], np.full((1, 3), 1 / 3, "float32"))
    assert float(loss) == pytest.approx(np.log(3), rel=1e-5)


def test_augmentation_flip_crop_and_rand_augment_keep_shapes_and_range():
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)), tf.float32)
    labels = tf.one_hot(np.arange(8) % 3, 3)
    augment = training.augmentation(flip=True, crop_scale=0.8, rand_augment=0.5, seed=1)
    out, out_labels = augment(images, labels)
    assert tuple(out.shape) == (8, 16, 16, 3)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
    np.testing.assert_array_equal(out_labels, labels)
    assert not np.allclose(out, images)


def test_flip_only_mirrors_images():
    images = tf.constant(np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3))
    augment = training.augmentation(flip=True, seed=0)
    out = [augment(images, tf.zeros((2, 3)))[0].numpy() for _ in range(10)]
    for batch in out:
        for image, original in zip(batch, images.numpy()):
            assert np.array_equal(image, original) or np.array_equal(image, original[:, ::-1])
    assert any(not np.array_equal(batch, images.numpy()) for batch in out)


@pytest.mark.parametrize("mixer", [dict(mixup=0.4), dict(cutmix=1.0), dict(mixup=0.4, cutmix=1.0)])
def test_mixup_and_cutmix_mix_labels_in_proportion(mixer):
    images = tf.constant(np.repeat(np.arange(8, dtype="float32")[:, None, None, None] * 30, 16 * 16 * 3)
                         .reshape(8, 16, 16, 3))
    labels = tf.one_hot(np.arange(8) % 4, 4)
    out, mixed = training.augmentation(flip=False, seed=3, **mixer)(images, labels)
    mixed = mixed.numpy()
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    assert (mixed.max(axis=1) < 1.0).any()  # some labels were mixed
    assert tuple(out.shape) == (8, 16, 16, 3)


def test_random_erasing_replaces_one_rectangle_per_image():
    images = tf.fill((16, 20, 20, 3), 100.0)
    labels = tf.one_hot(np.arange(16) % 3, 3)
    out, out_labels = training.augmentation(flip=False, random_erasing=1.0, seed=2)(images, labels)
    out = out.numpy()
    np.testing.assert_array_equal(out_labels, labels)
    assert out.min() >= 0.0 and out.max() <= 255.0
    for image in out:
        changed = (image != 100.0).any(axis=-1)
        rows, cols = np.nonzero(changed)
        assert rows.size > 0  # probability 1: every image is erased
        # The changed pixels lie in one rectangle covering at most a third.
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box <= 0.34 * 20 * 20 + 2 * 20
    kept = training.augmentation(flip=False, random_erasing=0.25, seed=2)
    erased = [int((kept(images, labels)[0].numpy() != 100.0).any(axis=(1, 2, 3)).sum()) for _ in range(8)]
    assert 0 < sum(erased) / (8 * 16) < 0.5  # about a quarter of the images


def _shifted(image, dy, dx):
    """`image` moved down by `dy` and right by `dx` pixels, zeros filled in."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_translate_moves_each_image_by_whole_pixels_within_the_fraction():
    rng = np.random.default_rng(0)
    images = rng.uniform(1, 255, (32, 20, 20, 3)).astype("float32")  # no zeros of its own
    labels = tf.one_hot(np.arange(32) % 3, 3)
    out, out_labels = training.augmentation(flip=False, translate=0.2, seed=4)(tf.constant(images), labels)
    out = out.numpy()
    np.testing.assert_array_equal(out_labels, labels)
    shifts = []
    for image, moved in zip(images, out):
        # 0.2 of 20 pixels: at most 4 either way; every output is the input
        # moved by whole pixels (no interpolated values), zeros filled in.
        found = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)
                 if np.array_equal(_shifted(image, dy, dx), moved)]
        assert len(found) == 1, "not a whole-pixel translation of the input"
        shifts.append(found[0])
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) <= 4
    assert len(set(shifts)) > 4  # drawn per image, in both directions
    assert {np.sign(dy) for dy, _ in shifts} >= {-1, 1} and {np.sign(dx) for _, dx in shifts} >= {-1, 1}
    unchanged, _ = training.augmentation(flip=False, translate=0.0)(tf.constant(images), labels)
    np.testing.assert_array_equal(unchanged, images)


def test_augmentation_argument_errors():
    with pytest.raises(ValueError, match=r"random_erasing=1.5"):
        training.augmentation(random_erasing=1.5)
    with pytest.raises(ValueError, match=r"crop_scale=1.5"):
        training.augmentation(crop_scale=1.5)
    with pytest.raises(ValueError, match=r"rand_augment=2"):
        training.augmentation(rand_augment=2)
    for translate in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"translate={translate}"):
            training.augmentation(translate=translate)


def test_freeze_backbone_trains_only_the_head():
    model = _tiny()
    assert training.freeze_backbone(model) == ["head"]
    assert {v.path for v in model.trainable_variables} == {"head/kernel", "head/bias"}
    before = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    training.compile(model, steps=4, learning_rate=0.1, warmup_steps=0)
    x = np.random.default_rng(0).uniform(-1, 1, (8,) + TINY_SHAPE).astype("float32")
    model.fit(x, np.eye(3)[np.arange(8) % 3], epochs=2, batch_size=4, verbose=0)
    for value, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(value, keras.ops.convert_to_numpy(variable))
    assert np.abs(keras.ops.convert_to_numpy(model.get_layer("head").kernel)).sum() > 0


def test_mixed_bfloat16_training_step():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = training.compile(_tiny(), steps=20, learning_rate=1e-2, warmup_steps=0)
    x = np.random.default_rng(0).uniform(-1, 1, (16,) + TINY_SHAPE).astype("float32")
    y = np.eye(3)[np.arange(16) % 3]
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert keras.backend.standardize_dtype(model(x[:2]).dtype) == "float32"


def test_mixed_float16_scales_the_loss():
    keras.config.set_dtype_policy("mixed_float16")
    model = training.compile(_tiny(), steps=10)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, keras.optimizers.AdamW)


def _fit_adamw(optimizer_class, amsgrad=False, jit_compile=False, steps=3):
    """Losses, weights and optimizer state after a few steps of `fit` with a
    weight-decayed, clipped, scheduled AdamW of `optimizer_class`."""
    keras.utils.set_random_seed(0)
    model = _tiny()
    opt = optimizer_class(learning_rate=training._schedule(1e-2, 20, 2), weight_decay=0.3,
                          global_clipnorm=1.0, amsgrad=amsgrad)
    opt.exclude_from_weight_decay(var_names=list(training.NO_WEIGHT_DECAY))
    model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(), jit_compile=jit_compile)
    x = np.random.default_rng(0).uniform(-1, 1, (8,) + TINY_SHAPE).astype("float32")
    y = np.eye(3)[np.arange(8) % 3]
    history = model.fit(x, y, batch_size=8, epochs=steps, shuffle=False, verbose=0)
    return history.history["loss"], _adamw_weights(model), _adamw_state(model), model, (x, y)


def _adamw_weights(model):
    # The key bias is left out: its gradient is zero in exact arithmetic
    # (softmax ignores a logit offset shared by all keys), so Adam steps it by
    # the sign of rounding noise, in both implementations alike.
    return [keras.ops.convert_to_numpy(v) for v in model.weights if not v.path.endswith("key/bias")]


def _adamw_state(model):
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables
            if "key_bias" not in v.path]


@pytest.mark.parametrize("policy, amsgrad, jit_compile", [
    ("float32", False, False), ("mixed_bfloat16", False, False), ("mixed_float16", False, False),
    ("float32", False, True), ("float32", True, False),
])
def test_fused_adamw_matches_keras_adamw(monkeypatch, policy, amsgrad, jit_compile):
    keras.config.set_dtype_policy(policy)
    # Rounding differences of one float32 ulp in the weights flip 16-bit
    # roundings from the third step on, so mixed precision compares two.
    steps = 3 if policy == "float32" else 2
    expected = _fit_adamw(keras.optimizers.AdamW, amsgrad, jit_compile, steps)
    fused_calls = []
    apply_adam = tf.raw_ops.ResourceApplyAdam
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam",
                        lambda **kw: fused_calls.append(kw) or apply_adam(**kw))
    got = _fit_adamw(training.AdamW, amsgrad, jit_compile, steps)
    # The fused kernels ran (once per variable when the step was traced),
    # except for AMSGrad, which takes Keras' own update.
    assert bool(fused_calls) != amsgrad
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
    for a, b in zip(got[1] + got[2], expected[1] + expected[2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    # The comparison can fail: one more step moves the weights far more.
    model, (x, y) = got[3:]
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    moved = _adamw_weights(model)
    assert max(np.abs(a - b).max() for a, b in zip(moved, expected[1])) > 1e-3


@pytest.mark.parametrize("as_dataset", [False, True])
def test_fit_traces_its_train_step_once_with_the_same_losses(monkeypatch, as_dataset):
    """VisionTransformer builds the optimizer and metrics from the data's
    shapes before the first trace; Keras' TensorFlow trainer builds them
    inside it without a strategy, so TensorFlow traces the step twice."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from keras_vit import models

    traced = []
    for name in ("train_step", "test_step"):
        original = getattr(tf_trainer.TensorFlowTrainer, name)
        monkeypatch.setattr(tf_trainer.TensorFlowTrainer, name,
                            lambda self, data, _original=original, _name=name: traced.append(_name)
                            or _original(self, data))
    x = np.random.default_rng(0).uniform(-1, 1, (16,) + TINY_SHAPE).astype("float32")
    y = np.eye(3)[np.arange(16) % 3]

    def fit():
        keras.utils.set_random_seed(0)
        model = training.compile(_tiny(), steps=6, warmup_steps=1)
        data = dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(8)) if as_dataset else dict(
            x=x, y=y, batch_size=8, shuffle=False)
        history = model.fit(**data, validation_data=(x[:8], y[:8]), epochs=3, verbose=0)
        assert model.optimizer.built
        return history.history

    builds = []
    original_build = keras.Model._symbolic_build
    monkeypatch.setattr(keras.Model, "_symbolic_build",
                        lambda self, **kwargs: builds.append("traced") or original_build(self, **kwargs))
    original_from_outputs = models.VisionTransformer._build_from_outputs
    monkeypatch.setattr(models.VisionTransformer, "_build_from_outputs",
                        lambda self, specs: original_from_outputs(self, specs) and builds.append("outputs") is None)
    ours = fit()
    assert traced == ["train_step", "test_step"]
    # Built once, before the first trace, from the model's output without
    # tracing it (Keras' _symbolic_build traces it); each epoch's validation
    # and later calls find everything built and skip it (they took 25 ms each).
    assert builds == ["outputs"]
    # A model it cannot read the output from goes to Keras' _symbolic_build
    # (one trace of the model), before the step's trace all the same.
    traced.clear()
    builds.clear()
    monkeypatch.setattr(models.VisionTransformer, "_build_from_outputs", lambda self, specs: False)
    traced_build = fit()
    assert traced == ["train_step", "test_step"] and builds == ["traced"]
    traced.clear()
    monkeypatch.setattr(models.VisionTransformer, "_maybe_symbolic_build", keras.Model._maybe_symbolic_build)
    theirs = fit()
    assert traced.count("train_step") == 2  # what the override saves
    assert ours == traced_build == theirs  # every loss and accuracy, bit for bit


def test_evaluate_of_a_wrapper_traces_its_step_once_with_keras_results(monkeypatch):
    """`with_flip_tta` and `with_probabilities` return `WrapperModel`s, which
    build their compiled metrics as `VisionTransformer` does."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from keras_vit import inference, models

    traced = []
    original = tf_trainer.TensorFlowTrainer.test_step
    monkeypatch.setattr(tf_trainer.TensorFlowTrainer, "test_step",
                        lambda self, data: traced.append(1) or original(self, data))
    model = _tiny()
    x = np.random.default_rng(0).uniform(-1, 1, (20,) + TINY_SHAPE).astype("float32")
    y = np.eye(3)[np.arange(20) % 3]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def evaluate(wrapper):
        traced.clear()
        wrapper.compile(loss="categorical_crossentropy", metrics=["accuracy"])
        return wrapper.evaluate(data, verbose=0, return_dict=True)

    tta = inference.with_flip_tta(model)
    assert type(tta) is models.WrapperModel
    ours = evaluate(tta)
    assert len(traced) == 1
    mirrored = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    assert ours["accuracy"] == pytest.approx(float(np.mean(mirrored.argmax(-1) == y.argmax(-1))))
    monkeypatch.setattr(models.WrapperModel, "_maybe_symbolic_build", keras.Model._maybe_symbolic_build)
    theirs = evaluate(inference.with_flip_tta(model))
    assert len(traced) == 2  # Keras' own build: the step traced twice
    assert ours == theirs


def test_fused_adamw_saves_and_resumes_like_keras(tmp_path):
    model = training.compile(_tiny(), steps=20, learning_rate=1e-2, warmup_steps=2)
    assert type(model.optimizer) is training.AdamW
    x = np.random.default_rng(0).uniform(-1, 1, (16,) + TINY_SHAPE).astype("float32")
    y = np.eye(3)[np.arange(16) % 3]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.optimizer) is training.AdamW
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    # Keras' AdamW config drops the exclusions; this one keeps them.
    assert restored.optimizer.get_config()["exclude_from_weight_decay_names"] == sorted(
        training.NO_WEIGHT_DECAY)
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    restored.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6)
