"""Shared fixtures and helpers: the tiny test variant, seeded randomness, and
one layer-test helper used for every layer (config round trip, `.keras`
saving, mixed precision)."""

import gc
import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XLA's backend (LLVM) at optimization level 0 for every XLA compilation of
# the suite, in this process (TensorFlow's jit_compile) and in the JAX
# subprocesses, which inherit it: compiling a small ViT's train step on a
# Zen 1 core took 7 s at the default level and 3 s at 0. The tests check
# results (losses against one device, agreement, exports), never XLA's
# speed. Tests that set XLA_FLAGS themselves append to this value.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
if XLA_TEST_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAGS}".strip()

# torchvision (0.29.1, for timm) crashes the process when it is imported
# after TensorFlow (2.21); the parity tests' references are imported first.
try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:
    pass

# keras_vit before Keras, as a user's `import keras_vit` first: it picks
# the backend and turns on TensorFlow's oneDNN kernels where TensorFlow
# leaves them off (`keras_vit._backend.enable_onednn`), so the tests run
# the kernels users get.
import keras_vit  # noqa: E402, I001

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The tiny variant from the table: 16 wide, 2 deep, 2 heads, 4x4 patches.
TINY_VARIANT = "Test/4"
TINY_SHAPE = (16, 16, 3)


# The test files in the order the two xdist workers take them (pyproject's
# `--dist loadfile --no-loadscope-reorder`): the longest first, by their
# summed durations on the Zen 1 (DEVELOPERS.md), the rest after them in
# name order. xdist's default order (most tests first) left a long file such
# as test_examples to start last, one worker idle for its last minute or so:
# this order took 45-60 s off the suite's wall time in a replay of four
# measured runs.
LONGEST_FILES_FIRST = (
    "test_examples", "test_runs", "test_distribute", "test_export", "test_faults", "test_serving",
    "test_pretrained", "test_backends", "test_training", "test_models", "test_tf_kernels",
    "test_parity", "test_inference", "test_fuzz", "test_server_abuse", "test_untrusted_images",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    # A stable sort: each file's tests keep their order.
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(autouse=True)
def _reset_keras():
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    # Without Keras' full garbage collection after every test (0.3-1 s each
    # in a worker that holds TensorFlow, PyTorch and timm: a third of the
    # suite's time); _collect_per_file runs one per test file instead.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(autouse=True, scope="module")
def _collect_per_file():
    yield
    gc.collect()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def fast_kernels_switch():
    """`keras_vit.backend.set_fast_kernels`, returned to the environment's
    setting afterwards."""
    import keras_vit

    yield keras_vit.backend.set_fast_kernels
    keras_vit.backend.set_fast_kernels(None)


@pytest.fixture
def tiny_model():
    return keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)


def randomize(model, seed=0):
    """Draws every variable at random (LayerNorm scales around 1), so that a
    swapped or transposed mapping cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        variable.assign(value.astype("float32"))
    return model


def randomize_torch(module, seed):
    """A PyTorch reference model with every parameter drawn at random
    (LayerNorm scales in [0.5, 1.5]), in eval mode: the parity tests'
    reference weights."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim == 1 and ("norm" in name and name.endswith("weight")):
                values = torch.rand(parameter.shape, generator=generator) + 0.5
            else:
                values = torch.randn(parameter.shape, generator=generator) * 0.05
            parameter.copy_(values)
    return module.eval()


def assert_weights_equal(model_a, model_b):
    assert len(model_a.weights) == len(model_b.weights)
    for a, b in zip(model_a.weights, model_b.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path
        )


def load_benchmark_script(name):
    """Imports `benchmarks/<name>.py` as a module, leaving `sys.path` as it was
    (the scripts put `benchmarks/` first on it)."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def graph_operations(function, *args):
    """Every operation of `function`'s graph for `args` (a `tf.function`),
    the functions it calls included."""
    graphs = [function.get_concrete_function(*args).graph]
    while graphs:
        graph = graphs.pop()
        graphs.extend(f.graph for f in graph._functions.values() if hasattr(f, "graph"))
        yield from graph.get_operations()


def run_layer_test(layer_cls, init_kwargs, input_data, expected_output_shape, tmp_path):
    """The one test every layer goes through (after keras-hub's run_layer_test).

    Checks that `get_config()` holds exactly the constructor arguments and
    round-trips, that `compute_output_shape` agrees with the real output, that
    a model holding the layer saves to `.keras` and loads back without
    `custom_objects` with the same outputs, and that the layer runs under the
    `mixed_bfloat16` and `mixed_float16` policies with finite outputs close
    to float32.
    """
    layer = layer_cls(**init_kwargs)
    output = layer(input_data)
    assert tuple(output.shape) == tuple(expected_output_shape)
    assert tuple(layer.compute_output_shape(input_data.shape)) == tuple(expected_output_shape)

    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert config[key] == value, key
    base_keys = set(keras.layers.Layer(name="x").get_config())
    constructor_args = (
        set(inspect.signature(layer_cls.__init__).parameters) - {"self", "kwargs"}
        if "__init__" in vars(layer_cls)
        else set()
    )
    assert set(config) - base_keys == constructor_args, (
        "get_config() must hold exactly the constructor arguments"
    )
    restored = layer_cls.from_config(config)
    restored(input_data)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(input_data), output, atol=1e-6)

    inputs = keras.Input(shape=input_data.shape[1:])
    model = keras.Model(inputs, layer_cls(**init_kwargs)(inputs))
    expected = model.predict(input_data, verbose=0)
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert isinstance(loaded.layers[-1], layer_cls)
    np.testing.assert_allclose(loaded.predict(input_data, verbose=0), expected, atol=1e-6)

    for policy, atol in (("mixed_bfloat16", 0.15), ("mixed_float16", 0.02)):
        mixed = layer_cls(**init_kwargs, dtype=policy)
        mixed_output = mixed(input_data)
        if layer.weights:
            mixed.set_weights(layer.get_weights())
            mixed_output = mixed(input_data)
        assert keras.backend.standardize_dtype(mixed_output.dtype) == policy.split("_")[1]
        assert all(
            keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights
        ), "weights stay float32 under mixed precision"
        mixed_output = keras.ops.convert_to_numpy(keras.ops.cast(mixed_output, "float32"))
        assert np.all(np.isfinite(mixed_output))
        np.testing.assert_allclose(mixed_output, keras.ops.convert_to_numpy(output), atol=atol, rtol=0.05)
    return layer, output


@pytest.fixture(scope="session")
def ti16_bucket(tmp_path_factory):
    """ViT-Ti/16's "imagenet" (1000 classes) and "imagenet21k" (21843
    classes) checkpoints, written from random weights under their real
    bucket paths: what the loopback mirror serves to examples and CLI tests."""
    from keras_vit.weights import pretrained

    files = {}
    folder = tmp_path_factory.mktemp("bucket")
    for alias in ("imagenet", "imagenet21k"):
        entry = pretrained.resolve("Ti/16", alias)
        model = randomize(keras_vit.ViTTi16(weights=None, classes=entry.classes), seed=len(files))
        files[entry.file] = keras_vit.save_npz(model, folder / f"{alias}.npz").read_bytes()
        del model
        keras.backend.clear_session()
    return files


@pytest.fixture
def ti16_mirror(ti16_bucket, tmp_path, monkeypatch):
    """A loopback mirror of the bucket holding `ti16_bucket`, with Keras'
    cache in tmp_path: named Ti/16 weights download from it, nothing else."""
    from tests.weights_mirror import Mirror

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with Mirror(ti16_bucket) as server:
        monkeypatch.setenv("KERAS_VIT_WEIGHTS_BASE_URL", server.url)
        yield server
