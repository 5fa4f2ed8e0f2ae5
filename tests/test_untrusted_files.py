"""Untrusted checkpoint and model files (issue 8): loading never runs code
from a file, and a damaged file is refused with an error naming it before
any variable of the model changes."""

import json
import os
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file as safetensors_load
from safetensors.numpy import save_file

import keras_vit
from keras_vit import cli, runs, weights
from tests.conftest import TINY_SHAPE, TINY_VARIANT, randomize


def _tiny():
    return keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5)


def _timm_state_dict(model, directory):
    """The model's weights under timm's names (for a `.safetensors` file),
    converted back from the Google-named `.npz` arrays."""
    arrays = dict(np.load(keras_vit.save_npz(model, directory / "timm-source.npz")))
    state = {
        "cls_token": arrays["cls"],
        "pos_embed": arrays["Transformer/posembed_input/pos_embedding"],
        "patch_embed.proj.weight": arrays["embedding/kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": arrays["embedding/bias"],
        "norm.weight": arrays["Transformer/encoder_norm/scale"],
        "norm.bias": arrays["Transformer/encoder_norm/bias"],
        "head.weight": arrays["head/kernel"].T,
        "head.bias": arrays["head/bias"],
    }
    for i in range(2):
        g = f"Transformer/encoderblock_{i}/"
        t = f"blocks.{i}."
        att = g + "MultiHeadDotProductAttention_1/"
        width = arrays[att + "query/kernel"].shape[0]
        state[t + "attn.qkv.weight"] = np.concatenate(
            [arrays[att + f"{n}/kernel"].reshape(width, width).T for n in ("query", "key", "value")]
        )
        state[t + "attn.qkv.bias"] = np.concatenate(
            [arrays[att + f"{n}/bias"].reshape(width) for n in ("query", "key", "value")]
        )
        state[t + "attn.proj.weight"] = arrays[att + "out/kernel"].reshape(width, width).T
        state[t + "attn.proj.bias"] = arrays[att + "out/bias"]
        for k, norm in ((1, "LayerNorm_0"), (2, "LayerNorm_2")):
            state[t + f"norm{k}.weight"] = arrays[g + norm + "/scale"]
            state[t + f"norm{k}.bias"] = arrays[g + norm + "/bias"]
        for k in (1, 2):
            mlp = g + f"MlpBlock_3/Dense_{k - 1}/"
            state[t + f"mlp.fc{k}.weight"] = arrays[mlp + "kernel"].T
            state[t + f"mlp.fc{k}.bias"] = arrays[mlp + "bias"]
    return {key: np.ascontiguousarray(value, dtype="float32") for key, value in state.items()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One good file per format, all holding the same random weights."""
    directory = tmp_path_factory.mktemp("checkpoints")
    model = randomize(_tiny(), seed=3)
    files = {"npz": keras_vit.save_npz(model, directory / "model.npz")}
    model.save_weights(directory / "model.weights.h5")
    files["weights.h5"] = directory / "model.weights.h5"
    save_file(_timm_state_dict(model, directory), str(directory / "model.safetensors"))
    files["safetensors"] = directory / "model.safetensors"
    model.save(directory / "model.keras")
    files["keras"] = directory / "model.keras"
    expected = [v.numpy() for v in model.weights]
    return files, expected


def _damaged(data, how, rng):
    if how == "empty":
        return b""
    if how == "first 8 bytes":
        return data[:8]
    if how == "half":
        return data[: len(data) // 2]
    if how == "all but the last byte":
        return data[:-1]
    if how == "zeroed header":
        return bytes(64) + data[64:]
    if how == "noise in the middle":
        middle = len(data) // 2
        return data[:middle] + rng.integers(0, 256, 256, dtype=np.uint8).tobytes() + data[middle + 256:]
    raise AssertionError(how)


DAMAGE = ["empty", "first 8 bytes", "half", "all but the last byte", "zeroed header",
          "noise in the middle"]


def test_good_files_load_value_by_value(checkpoints):
    """The damaged files below are these, which load exactly when intact."""
    files, expected = checkpoints
    for fmt, path in files.items():
        if fmt == "keras":
            model = keras_vit.load_model(path)
        else:
            model = keras_vit.load_weights(_tiny(), path)
        for variable, value in zip(model.weights, expected):
            np.testing.assert_allclose(variable.numpy(), value, rtol=0, atol=1e-6, err_msg=fmt)


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "weights.h5"])
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_checkpoint_is_refused_and_model_unchanged(checkpoints, tmp_path, fmt, how):
    files, expected = checkpoints
    data = files[fmt].read_bytes()
    path = tmp_path / f"damaged.{fmt}"
    path.write_bytes(_damaged(data, how, np.random.default_rng(0)))
    model = randomize(_tiny(), seed=11)
    before = [v.numpy().copy() for v in model.weights]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            keras_vit.load_weights(model, path)
        except keras_vit.CheckpointError as error:
            assert str(path) in str(error)
        else:
            # Damage a format cannot detect (safetensors and HDF5 keep no
            # checksum of the data) may load, but only ever as a whole file
            # of the right shapes: never a half-loaded model.
            assert how == "noise in the middle" and fmt in ("safetensors", "weights.h5"), how
            for variable, value in zip(model.weights, before):
                assert not np.array_equal(variable.numpy(), value), variable.path
            return
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_keras_file_is_refused_naming_it(checkpoints, tmp_path, how):
    files, _ = checkpoints
    path = tmp_path / "damaged.keras"
    path.write_bytes(_damaged(files["keras"].read_bytes(), how, np.random.default_rng(0)))
    try:
        model = keras_vit.load_model(path)
    except keras_vit.CheckpointError as error:
        assert str(path) in str(error)
        assert "File not found" not in str(error) or how == "missing"
    else:
        # A zip's first local header is not needed to read it: the model
        # loads whole, with the intact file's weights.
        assert how == "zeroed header", how
        for variable, value in zip(model.weights, checkpoints[1]):
            np.testing.assert_array_equal(variable.numpy(), value)


def test_damaged_run_model_fails_the_cli_in_one_line(checkpoints, tmp_path, capsys):
    files, _ = checkpoints
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"data": "digits", "image_size": 16}')
    (run / "last.keras").write_bytes(files["keras"].read_bytes()[:1000])
    code = cli.main(["evaluate", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"Cannot load {run / 'last.keras'}" in err and "truncated or corrupted" in err


def test_keras_file_with_code_is_refused_in_safe_mode(tmp_path):
    marker = tmp_path / "code-ran"
    marker_name = str(marker)
    inputs = keras.Input((4,))
    # The lambda would create the marker file when the layer runs.
    outputs = keras.layers.Lambda(lambda x: x + float(open(marker_name, "w").close() or 0))(inputs)
    evil = keras.Model(inputs, outputs)
    marker.unlink()  # building the model ran the lambda once
    path = tmp_path / "evil.keras"
    evil.save(path)
    with pytest.raises(keras_vit.CheckpointError, match=r"evil.keras.*(unsafe|safe_mode)"):
        keras_vit.load_model(path)
    assert not marker.exists()
    with pytest.raises(keras_vit.CheckpointError, match=r"run-with-code/last.keras: Requested the deserialization of a .Lambda"):
        runs.load_run_model(_run_with(tmp_path, path))  # what the CLI commands load
    assert not marker.exists()
    # The file is a real threat: trusted, it runs its code.
    loaded = keras_vit.load_model(path, safe_mode=False)
    loaded(np.zeros((1, 4), "float32"))
    assert marker.exists()


def _config_payload_keras_file(path, marker):
    """A `.keras` archive with no code in it, only config: a Functional model
    whose "layer" is `os.system` (module "os", class_name "function"), which
    Keras before 3.9 imported and, rebuilding the graph, called with the
    node's arguments: a shell command (CVE-2025-1550, a safe-mode bypass)."""
    config = {
        "module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
        "config": {
            "name": "innocent", "trainable": True,
            "layers": [
                {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None, "name": "x",
                 "config": {"batch_shape": [None, 1], "dtype": "float32", "sparse": False, "name": "x"},
                 "inbound_nodes": []},
                {"module": "os", "class_name": "function", "config": "system", "registered_name": "function",
                 "name": "payload", "inbound_nodes": [{"args": [f"touch {marker}"], "kwargs": {}}]},
            ],
            "input_layers": [["x", 0, 0]], "output_layers": [["x", 0, 0]],
        },
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.8.0", "date_saved": "2025-03-01@00:00:00"}))
        archive.writestr("model.weights.h5", b"")
    return path


_LOAD_IN_ANOTHER_KERAS = """
import sys
import keras
try:
    keras.saving.load_model(sys.argv[1], safe_mode=True)
except Exception as error:
    print(type(error).__name__, error)
"""


def test_keras_file_with_a_config_level_module_import_payload_is_refused(tmp_path):
    """Issue 30: beside Lambda bytecode, the config-only payload of
    CVE-2025-1550 is refused under keras>=3.13.2 and its command never runs;
    the same file ran its command under Keras 3.8.0 (the control, below,
    when PyPI is reachable)."""
    marker = tmp_path / "config-payload-ran"
    path = _config_payload_keras_file(tmp_path / "innocent.keras", marker)
    with pytest.raises(keras_vit.CheckpointError, match=r"innocent.keras"):
        keras_vit.load_model(path)
    with pytest.raises(keras_vit.CheckpointError, match=r"run-with-code/last.keras"):
        runs.load_run_model(_run_with(tmp_path, path))
    with pytest.raises(keras_vit.CheckpointError):
        keras_vit.load_model(path, safe_mode=False)  # Keras 3.9+ refuses modules outside Keras even then
    assert not marker.exists()
    # The control: the file is a real threat under a Keras before the floor.
    old = tmp_path / "keras-3.8.0"
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(old),
                        "keras==3.8.0"], check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as error:
        warnings.warn(f"the Keras 3.8.0 control did not run (pip: {error}); the refusal above was checked")
        return
    env = dict(os.environ, PYTHONPATH=str(old), KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _LOAD_IN_ANOTHER_KERAS, str(path)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert marker.exists(), out.stdout[-2000:] + out.stderr[-2000:]


def _run_with(tmp_path, keras_file):
    run = tmp_path / "run-with-code"
    run.mkdir()
    (run / "last.keras").write_bytes(keras_file.read_bytes())
    return run


def test_load_model_argument_errors(tmp_path):
    with pytest.raises(TypeError, match=r"path must be a file path"):
        keras_vit.load_model(3)
    with pytest.raises(keras_vit.CheckpointError, match=r"Model file not found: .*nothing.keras"):
        keras_vit.load_model(tmp_path / "nothing.keras")


def test_weights_module_exports_load_model():
    assert keras_vit.load_model is weights.load_model


def _rewritten_npz(source, path, **changes):
    arrays = dict(np.load(source))
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


def _assert_refused_and_unchanged(path, match):
    model = randomize(_tiny(), seed=11)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(keras_vit.CheckpointError, match=match):
        keras_vit.load_weights(model, path)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_non_numbers_and_non_finite_values_are_refused_before_any_assignment(checkpoints, tmp_path):
    """Issue 30: a right-shape array of the wrong dtype, or holding NaN or
    infinity, late in the file, used to be found after earlier variables
    were assigned: a half-loaded model."""
    files, _ = checkpoints
    last = "Transformer/encoder_norm/scale"
    good = dict(np.load(files["npz"]))[last]
    _assert_refused_and_unchanged(
        _rewritten_npz(files["npz"], tmp_path / "complex.npz", **{last: good.astype("complex64")}),
        r"complex.npz: array 'Transformer/encoder_norm/scale' has dtype complex64, not numbers")
    _assert_refused_and_unchanged(
        _rewritten_npz(files["npz"], tmp_path / "bool.npz", **{last: good > 0}),
        r"bool.npz: 'Transformer/encoder_norm/scale' has dtype bool but variable .* takes numbers")
    nan = good.copy()
    nan[3] = np.nan
    _assert_refused_and_unchanged(
        _rewritten_npz(files["npz"], tmp_path / "nan.npz", **{last: nan}),
        r"nan.npz: 'Transformer/encoder_norm/scale' \(shape \(16,\)\) holds 1 values that are not finite")
    huge = good.astype("float64")
    huge[0] = 1e300  # finite in the file, infinite as float32
    _assert_refused_and_unchanged(
        _rewritten_npz(files["npz"], tmp_path / "overflow.npz", **{last: huge}),
        r"not finite \(NaN or infinity after the cast to float32\)")
    state = dict(safetensors_load(files["safetensors"]))
    state["norm.weight"] = np.full_like(state["norm.weight"], np.inf)
    save_file(state, str(tmp_path / "inf.safetensors"))
    _assert_refused_and_unchanged(tmp_path / "inf.safetensors", r"holds 16 values that are not finite")


def test_a_forged_npy_header_is_refused_before_numpy_allocates_it(checkpoints, tmp_path):
    """A member declaring shape (2**40,) float32 (4 TiB) in a few bytes."""
    import io
    import zipfile

    files, _ = checkpoints
    path = tmp_path / "forged.npz"
    path.write_bytes(files["npz"].read_bytes())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("bomb.npy", header.getvalue() + b"\0" * 64)
    _assert_refused_and_unchanged(
        path, r"forged.npz: array 'bomb' declares shape \(1099511627776,\) of float32 \(4398046511104 bytes\) "
              r"but holds 64 bytes")


@pytest.mark.parametrize("fmt", ["npz", "weights.h5"])
def test_declared_sizes_are_bounded_by_memory_before_reading(checkpoints, monkeypatch, fmt):
    """What a file's headers declare is summed and refused past the
    machine's memory before any array is read (here a limit of 4 KB)."""
    from keras_vit.weights import formats

    files, _ = checkpoints
    monkeypatch.setattr(formats, "memory_limit", lambda: 4096)
    _assert_refused_and_unchanged(files[fmt], r"declares arrays of more than 4096 bytes, this machine's memory "
                                              r"\(array .* brings the total to \d+\): refused before reading")


def test_an_h5_dataset_of_non_numbers_is_refused(checkpoints, tmp_path):
    import shutil

    import h5py

    files, _ = checkpoints
    path = tmp_path / "strings.weights.h5"
    shutil.copy(files["weights.h5"], path)
    with h5py.File(path, "r+") as f:
        keys = []
        f.visititems(lambda key, obj: keys.append(key) if isinstance(obj, h5py.Dataset) else None)
        shape = f[keys[-1]].shape
        del f[keys[-1]]
        f.create_dataset(keys[-1], data=np.full(shape, "x", dtype="S1"))
    _assert_refused_and_unchanged(path, r"strings.weights.h5: array .* has dtype \|S1, not numbers")
