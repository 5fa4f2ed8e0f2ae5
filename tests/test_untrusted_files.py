"""Untrusted checkpoint and model files (issue 8): loading never runs code
from a file, and a damaged file is refused with an error naming it before
any variable of the model changes."""

import warnings

import keras
import numpy as np
import pytest
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
