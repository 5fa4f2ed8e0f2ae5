"""Tests of keras_vit.inference: dtype-policy copies, flip TTA, the CPU test."""

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import inference
from tests.conftest import TINY_SHAPE, TINY_VARIANT, graph_operations, randomize


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("kwargs", [dict(classes=5), dict(include_top=False, pooling="avg")])
def test_with_dtype_policy_copies_a_float32_model(policy, kwargs, rng, tmp_path):
    images = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, drop_path_rate=0.1, **kwargs))
    # A loaded .keras file records float32 on every layer: the case this is for.
    model.save(tmp_path / "model.keras")
    model = keras_vit.load_model(tmp_path / "model.keras")
    expected = model.predict(images, verbose=0)
    fast = inference.with_dtype_policy(model, policy)
    compute = policy.split("_")[1]
    assert fast.get_layer("block_0").compute_dtype == compute
    assert fast.get_layer("block_0").attn.compute_dtype == compute
    assert fast.get_layer("encoder_norm").compute_dtype == compute
    assert fast.layers[-1].compute_dtype == "float32"  # the output layer keeps its policy
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in fast.weights)
    for original, copied in zip(model.weights, fast.weights):
        np.testing.assert_array_equal(original.numpy(), copied.numpy())
    out = fast.predict(images, verbose=0)
    assert out.dtype == np.float32
    assert not np.array_equal(out, expected)  # computed in 16 bits, so not bit-equal
    np.testing.assert_allclose(out, expected, atol=0.05, rtol=0.05)
    # The original is untouched.
    assert model.get_layer("block_0").compute_dtype == "float32"
    np.testing.assert_array_equal(model.predict(images, verbose=0), expected)


@pytest.mark.parametrize("policy", ["int8", "float128", "mixed_nothing", 3])
def test_with_dtype_policy_rejects_bad_policies(policy):
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
    with pytest.raises(ValueError, match=str(policy)):
        inference.with_dtype_policy(model, policy)
    with pytest.raises(TypeError, match="keras.Model"):
        inference.with_dtype_policy("model.keras", "mixed_bfloat16")


def test_with_flip_tta_averages_each_image_and_its_mirror_image(rng, tmp_path):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    images = rng.uniform(0, 255, (4,) + TINY_SHAPE).astype("float32")
    mirrored = images[:, :, ::-1]  # left-right: the width axis
    plain = model.predict(images, verbose=0)
    expected = (plain + model.predict(mirrored, verbose=0)) / 2
    tta = keras_vit.with_flip_tta(model)
    assert tta.name == f"{model.name}_flip_tta"
    out = tta.predict(images, verbose=0)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(out - plain).max() > 1e-3  # the random model is not flip-invariant
    # The average is the same for an image and its mirror image.
    np.testing.assert_allclose(tta.predict(mirrored, verbose=0), out, atol=1e-6)
    np.testing.assert_allclose(tta(images), out, atol=1e-6)
    # Shared weights: changing the model changes the wrapper.
    assert len(tta.weights) == len(model.weights)
    model.get_layer("head").kernel.assign(np.zeros(model.get_layer("head").kernel.shape))
    new = tta.predict(images, verbose=0)
    np.testing.assert_allclose(new, (model.predict(images, verbose=0) + model.predict(mirrored, verbose=0)) / 2,
                               atol=1e-6)
    # A .keras file holds the wrapper, loaded in safe mode without custom objects.
    tta.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras")
    assert type(loaded) is type(tta) is keras_vit.models.WrapperModel
    np.testing.assert_allclose(loaded.predict(images, verbose=0), new, atol=1e-6)


def test_with_flip_tta_evaluates_and_keeps_float32_outputs_under_mixed_precision(rng):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    fast = keras_vit.with_flip_tta(inference.with_dtype_policy(model, "mixed_bfloat16"))
    images = rng.uniform(0, 255, (6,) + TINY_SHAPE).astype("float32")
    assert fast(images).dtype == "float32"
    assert fast.get_layer("mirror").compute_dtype == "float32"
    tta = keras_vit.with_flip_tta(model)
    tta.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    labels = np.eye(5, dtype="float32")[[0, 1, 2, 3, 4, 0]]
    probabilities = tta.predict(images, verbose=0)
    accuracy = tta.evaluate(images, labels, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(np.mean(probabilities.argmax(-1) == labels.argmax(-1)))


def test_with_flip_tta_rejects_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="keras.Model, received str"):
        keras_vit.with_flip_tta("model.keras")
    tokens = keras.Input((5, 8))
    with pytest.raises(ValueError, match=r"image input .* input shape \(None, 5, 8\)"):
        keras_vit.with_flip_tta(keras.Model(tokens, keras.layers.Dense(2)(tokens)))
    images = keras.Input(TINY_SHAPE)
    two = keras.Model(images, [keras.layers.Flatten()(images)] * 2)
    with pytest.raises(ValueError, match="1 inputs and 2 outputs"):
        keras_vit.with_flip_tta(two)
    with pytest.raises(ValueError, match="tta must be one of 'none', 'flip'; received tta='hflip'"):
        inference.with_tta(two, "hflip")


def test_bfloat16_cpu_reads_cpu_flags(monkeypatch, tmp_path):
    # (vendor, flags, expected): AMD's AVX-512-BF16 runs bfloat16 dot
    # products at twice the float32 rate, Intel's without AMX at the same
    # rate (measured slower end to end), AMX is fast on any Intel CPU.
    cpus = {
        "plain": ("GenuineIntel", "fpu sse avx2", False),
        "zen4": ("AuthenticAMD", "fpu avx512f avx512_bf16", True),
        "zen3": ("AuthenticAMD", "fpu avx2", False),
        "spr_without_amx": ("GenuineIntel", "fpu avx512f avx512_bf16 avx512_fp16", False),
        "spr": ("GenuineIntel", "fpu avx512_bf16 amx_bf16 amx_tile", True),
    }
    import builtins

    from keras_vit import _backend

    real_open = builtins.open
    # The flags are read once per process (cached): the cache is emptied for
    # each fake CPU here and for the real one after the test.
    monkeypatch.setattr(_backend, "cpu_features", _backend.cpu_features.__wrapped__)
    for name, (vendor, line, expected) in cpus.items():
        cpuinfo = tmp_path / name
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {line}\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, _c=cpuinfo, **k: real_open(
            _c if path == "/proc/cpuinfo" else path, *a, **k))
        assert inference.bfloat16_cpu() is expected, name
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(tmp_path / "absent", *a, **k))
    assert inference.bfloat16_cpu() is False


def test_with_precision_copies_and_never_changes_the_model(rng, monkeypatch):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    x = rng.uniform(-1, 1, (4,) + TINY_SHAPE).astype("float32")
    expected = model.predict_on_batch(x)
    assert inference.with_precision(model, "float32") is model
    for precision in ("bfloat16", "int8"):
        copy = inference.with_precision(model, precision)
        assert copy is not model and inference.precision_of(copy) == precision
        got = copy.predict_on_batch(x)
        assert got.dtype == np.float32 and not np.array_equal(got, expected)
        np.testing.assert_allclose(got, expected, atol=0.05)
    assert inference.precision_of(model) == "float32"
    np.testing.assert_array_equal(model.predict_on_batch(x), expected)
    int8 = inference.with_precision(model, "int8")
    assert all(layer.quantization_mode == "int8" for layer in int8._flatten_layers()
               if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)))
    # A bfloat16 model comes back to float32 on request: with float32
    # variables holding its rounded values (as a PyTorch model would after
    # .bfloat16().float()).
    bfloat16 = inference.with_precision(model, "bfloat16")
    back = inference.with_precision(bfloat16, "float32")
    assert inference.precision_of(back) == "float32"
    for restored, rounded in zip(back.weights, bfloat16.weights):
        assert keras.backend.standardize_dtype(restored.dtype) == "float32"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored),
                                      keras.ops.convert_to_numpy(keras.ops.cast(rounded, "float32")))
    np.testing.assert_allclose(back.predict_on_batch(x), expected, atol=0.02)
    for fast_cpu, chosen in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(inference, "bfloat16_cpu", lambda fast_cpu=fast_cpu: fast_cpu)
        assert inference.auto_precision() == chosen
        assert inference.precision_of(inference.with_precision(model, "auto")) == chosen


def test_with_precision_in_place_changes_the_model_itself(rng):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    x = rng.uniform(-1, 1, (4,) + TINY_SHAPE).astype("float32")
    bfloat16 = inference.with_precision(model, "bfloat16")
    # int8 after bfloat16 quantizes the bfloat16 values (rounded once more).
    expected = {"bfloat16": bfloat16.predict_on_batch(x),
                "int8": inference.with_precision(bfloat16, "int8").predict_on_batch(x)}
    model.predict_on_batch(x)  # a float32 predict function traced before
    weights = len(model.weights)
    assert inference.with_precision(model, "bfloat16", copy=False) is model
    assert inference.precision_of(model) == "bfloat16" and len(model.weights) == weights
    np.testing.assert_array_equal(model.predict_on_batch(x), expected["bfloat16"])
    assert inference.with_precision(model, "bfloat16", copy=False) is model
    # From bfloat16 to int8 in place: float32 first, as the copy would be.
    assert inference.with_precision(model, "int8", copy=False) is model
    assert inference.precision_of(model) == "int8" and model.jit_compile is _XLA_FOR_INT8
    np.testing.assert_allclose(model.predict_on_batch(x), expected["int8"], atol=1e-6)
    with pytest.raises(ValueError, match="copy must be True or False, received 'no'"):
        inference.with_precision(model, "float32", copy="no")


def _dtypes(model):
    return {w.path: keras.backend.standardize_dtype(w.dtype) for w in model.weights}


@pytest.mark.parametrize("copy", [True, False])
def test_bfloat16_precision_stores_its_products_weights_in_bfloat16_with_the_same_outputs(rng, tmp_path, copy):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    x = rng.uniform(-1, 1, (4,) + TINY_SHAPE).astype("float32")
    # The reference: Keras' mixed policy, float32 variables cast on each call.
    mixed = inference.with_dtype_policy(model, "mixed_bfloat16")
    expected = mixed.predict_on_batch(x)
    assert set(_dtypes(mixed).values()) == {"float32"}
    paths = [w.path for w in model.weights]
    values = [keras.ops.convert_to_numpy(w) for w in model.weights]
    fast = inference.with_precision(model, "bfloat16", copy=copy)
    assert (fast is model) is not copy
    dtypes = _dtypes(fast)
    # Same variables in the same order: get_weights and .keras files follow it.
    assert list(dtypes) == paths
    norms = {path for path in paths if "norm" in path}
    assert {dtypes[path] for path in norms} == {"float32"} and len(norms) == 2 * 2 * 2 + 2
    assert {dtypes[path] for path in set(paths) - norms} == {"bfloat16"}
    for weight, value in zip(fast.weights, values):
        # Each stored value is the float32 one rounded, as the cast was.
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight),
                                      keras.ops.convert_to_numpy(keras.ops.cast(value, weight.dtype)))
    float32_bytes = sum(v.nbytes for v in values)
    assert sum(np.dtype(keras.ops.convert_to_numpy(w).dtype).itemsize * int(np.prod(w.shape))
               for w in fast.weights) < 0.52 * float32_bytes
    # Bit for bit the outputs of the mixed policy, by each way of calling.
    np.testing.assert_array_equal(fast.predict_on_batch(x), expected)
    np.testing.assert_array_equal(fast.predict(x, verbose=0), expected)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fast(x)), expected)
    # A .keras file keeps the dtypes, the values and the outputs.
    fast.save(tmp_path / "bf16.keras")
    loaded = keras_vit.load_model(tmp_path / "bf16.keras")
    assert _dtypes(loaded) == dtypes and inference.precision_of(loaded) == "bfloat16"
    for saved, restored in zip(fast.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(restored))
    np.testing.assert_array_equal(loaded.predict_on_batch(x), expected)
    # Back to float32 (the values stay rounded) and on to int8.
    back = inference.with_precision(fast, "float32")
    assert set(_dtypes(back).values()) == {"float32"}
    np.testing.assert_allclose(back.predict_on_batch(x), model.predict_on_batch(x) if copy else expected,
                               atol=0.02)
    assert inference.precision_of(inference.with_precision(fast, "int8")) == "int8"


def test_a_block_under_a_pure_16_bit_policy_keeps_float32_layer_norms(rng):
    block = keras_vit.layers.TransformerBlock(8, 2, 16, dtype="bfloat16")
    tokens = rng.normal(size=(2, 5, 8)).astype("float32")
    out = block(tokens)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    dtypes = {w.path.split("/", 1)[1]: keras.backend.standardize_dtype(w.dtype) for w in block.weights}
    assert dtypes.pop("norm1/gamma") == dtypes.pop("norm1/beta") == "float32"
    assert dtypes.pop("norm2/gamma") == dtypes.pop("norm2/beta") == "float32"
    assert set(dtypes.values()) == {"bfloat16"} and len(dtypes) == 12
    assert block.norm1.compute_dtype == "bfloat16"
    # A float32 or mixed block is unchanged.
    assert keras_vit.layers.TransformerBlock(8, 2, 16, dtype="mixed_bfloat16").norm1.dtype_policy.name == \
        "mixed_bfloat16"


def test_with_precision_rejects_what_it_cannot_do():
    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'float32', 'bfloat16', 'int8'; "
                                         "received precision='fp16'"):
        inference.with_precision(model, "fp16")
    with pytest.raises(TypeError, match="model must be a keras.Model"):
        inference.with_precision("model.keras", "int8")
    with pytest.raises(ValueError, match="already quantized"):
        inference.with_precision(inference.with_precision(model, "int8"), "bfloat16")


def _matmuls(model, shape):
    """`{(op type, input dtypes): count}` of the matrix products in the graph
    of `model`'s call, nested functions included."""
    import collections

    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False))
    found = collections.Counter()
    for op in graph_operations(function, tf.TensorSpec((2,) + shape, tf.float32)):
        if op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "_FusedMatMul"):
            found[(op.type, tuple(t.dtype.name for t in op.inputs))] += 1
    return found


# int8 models' steps are compiled by XLA, except where they run oneDNN's
# int8 kernel, which XLA cannot compile.
_XLA_FOR_INT8 = not keras_vit.backend.onednn_int8()


def test_int8_runs_every_projection_and_mlp_product_in_int8_under_xla(rng):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    depth = len(keras_vit.models.get_blocks(model))
    int8 = inference.with_precision(model, "int8")
    # The patch projection, q, k, v, the attention output, both MLP layers of
    # every block and the head: int8 products. Only attention's two products
    # per block (of activations with activations) stay float.
    found = _matmuls(int8, TINY_SHAPE)
    assert found.pop(("BatchMatMulV3", ("int8", "int8"))) == 1 + 6 * depth + 1, found
    assert sum(found.values()) == 2 * depth and all("int8" not in dtypes for _, dtypes in found), found
    assert not any("int8" in dtypes for _, dtypes in _matmuls(model, TINY_SHAPE))
    # Keras compiles the int8 copy's steps (and its wrappers') with XLA,
    # unless they run oneDNN's int8 kernel (tests/test_tf_kernels.py); the
    # float model keeps the default.
    assert int8.jit_compile is _XLA_FOR_INT8 and model.jit_compile is False
    assert inference.with_probabilities(int8).jit_compile is _XLA_FOR_INT8
    assert inference.with_flip_tta(int8).jit_compile is _XLA_FOR_INT8
    assert inference.with_flip_tta(model).jit_compile is False
    x = rng.uniform(-1, 1, (4,) + TINY_SHAPE).astype("float32")
    np.testing.assert_allclose(int8.predict_on_batch(x), keras.ops.convert_to_numpy(int8(x)), atol=1e-5)


def test_int8_direct_call_compiled_by_xla_where_predict_is(rng, monkeypatch):
    # As on a CPU without VNNI: oneDNN's int8 kernel does not apply, the
    # steps are XLA's, and so is the eager call (TensorFlow's own int8
    # product is several times slower than XLA's).
    monkeypatch.setattr(keras_vit.backend, "onednn_int8", lambda: False)
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    int8 = inference.with_precision(model, "int8")
    assert int8.jit_compile is True
    x = rng.uniform(-1, 1, (4,) + TINY_SHAPE).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(int8(x)), int8.predict_on_batch(x), atol=1e-5)
    jit_compile, function, _ = keras_vit.models._INFERENCE_FUNCTIONS[int8]
    assert jit_compile is True and "HloModule" in function.experimental_get_compiler_ir(x)(stage="hlo")
    # The model's jit_compile decides, as for predict.
    int8.jit_compile = False
    np.testing.assert_allclose(keras.ops.convert_to_numpy(int8(x)), int8.predict_on_batch(x), atol=1e-5)
    assert keras_vit.models._INFERENCE_FUNCTIONS[int8][0] is False
    model(x)
    assert keras_vit.models._INFERENCE_FUNCTIONS[model][0] is False


def test_int8_training_step_compiled_by_xla_where_jit_compile_is_false(rng, monkeypatch):
    # Fine-tuning an int8 model with LoRA on Keras' quantized layers (Keras'
    # own recipe for it). Keras' quantize leaves jit_compile at its CPU
    # default, False, as with_precision does where oneDNN's int8 kernel
    # serves predict: the train step is XLA's all the same, the test step
    # follows jit_compile.
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    model.quantize("int8")
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "quantization_mode", None) == "int8":
            layer.enable_lora(2)
    compiled = {}

    def spy(model):
        make = model._make_function

        def make_function(step):
            compiled[step.__name__] = model.jit_compile
            return make(step)

        monkeypatch.setattr(model, "_make_function", make_function)

    spy(model)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    assert model.jit_compile is False
    x = rng.uniform(-1, 1, (8,) + TINY_SHAPE).astype("float32")
    y = rng.integers(0, 5, 8)
    lora = [w for w in model.trainable_weights if "lora_kernel" in w.path]
    before = [keras.ops.convert_to_numpy(w) for w in lora]
    model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), verbose=0)
    assert compiled == {"train_step": True, "test_step": False} and model.jit_compile is False
    assert len(lora) == 2 * 6 * len(keras_vit.models.get_blocks(model)) + 2 * 2  # + patch projection and head
    assert all(not np.array_equal(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, lora))
    # A float model keeps Keras' choice; so does an int8 model run eagerly.
    for quantize, run_eagerly in ((False, False), (True, True)):
        other = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
        if quantize:
            other.quantize("int8")
        compiled.clear()
        spy(other)
        other.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=run_eagerly)
        other.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert compiled == {"train_step": False}


def test_int8_copy_saves_and_loads_value_for_value(rng, tmp_path):
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    int8 = inference.with_precision(model, "int8")
    x = rng.uniform(-1, 1, (3,) + TINY_SHAPE).astype("float32")
    int8.save(tmp_path / "int8.keras")
    loaded = keras_vit.load_model(tmp_path / "int8.keras")
    assert inference.precision_of(loaded) == "int8" and loaded.jit_compile is _XLA_FOR_INT8
    for saved, restored in zip(int8.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(restored))
    np.testing.assert_array_equal(loaded.predict_on_batch(x), int8.predict_on_batch(x))


def test_quantizing_and_loading_int8_collect_garbage_once(tmp_path, monkeypatch):
    # Keras collects garbage after each variable a layer drops (14 times for
    # this model); with_precision and load_model collect once, at the end.
    import gc
    import warnings

    model = keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)
    model.save(tmp_path / "float32.keras")
    calls = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    keras_vit.load_model(tmp_path / "float32.keras")
    assert calls == []  # nothing dropped, nothing collected
    int8 = inference.with_precision(model, "int8")
    assert len(calls) == 1
    int8.save(tmp_path / "int8.keras")
    calls.clear()
    loaded = keras_vit.load_model(tmp_path / "int8.keras")
    assert len(calls) == 1 and inference.precision_of(loaded) == "int8"
    # Keras' own quantize, outside the context, still collects per variable.
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Layer Patches does not have a `quantize` method", ...
        keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5).quantize("int8")
    assert len(calls) == 14
