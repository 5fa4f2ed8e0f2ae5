"""Tests of keras_vit.weights on checkpoints the tests write themselves:
round trips value by value, resampling, the Google layouts' variants, and
every way a checkpoint can fail to fit."""

import os
import zipfile

import h5py
import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import weights
from tests.conftest import TINY_SHAPE, TINY_VARIANT, assert_weights_equal, randomize


def _tiny(**kwargs):
    kwargs.setdefault("input_shape", TINY_SHAPE)
    kwargs.setdefault("classes", 5)
    return keras_vit.ViT(TINY_VARIANT, **kwargs)


@pytest.fixture
def source():
    return randomize(_tiny(), seed=1)


@pytest.fixture
def npz_path(source, tmp_path):
    return keras_vit.save_npz(source, tmp_path / "tiny.npz")


@pytest.fixture
def images(rng):
    return rng.uniform(-1, 1, (2,) + TINY_SHAPE).astype("float32")


def _as_numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def test_npz_has_google_names_and_shapes():
    model = keras_vit.ViTB16(weights=None)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = keras_vit.save_npz(model, os.path.join(tmp, "b16"))
        assert path.name == "b16.npz"
        with np.load(path) as archive:
            shapes = {key: archive[key].shape for key in archive.files}
    assert len(shapes) == 200  # as the ViT-B/16 release, without pre_logits
    assert shapes["embedding/kernel"] == (16, 16, 3, 768)
    assert shapes["cls"] == (1, 1, 768)
    assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 197, 768)
    block = "Transformer/encoderblock_11/"
    assert shapes[block + "MultiHeadDotProductAttention_1/query/kernel"] == (768, 12, 64)
    assert shapes[block + "MultiHeadDotProductAttention_1/query/bias"] == (12, 64)
    assert shapes[block + "MultiHeadDotProductAttention_1/out/kernel"] == (12, 64, 768)
    assert shapes[block + "MlpBlock_3/Dense_0/kernel"] == (768, 3072)
    assert shapes[block + "LayerNorm_2/scale"] == (768,)
    assert shapes["Transformer/encoder_norm/bias"] == (768,)
    assert shapes["head/kernel"] == (768, 1000)


def test_npz_round_trip_value_by_value(source, npz_path, images):
    loaded = _tiny(weights=npz_path)
    assert_weights_equal(source, loaded)
    np.testing.assert_array_equal(loaded(images), source(images))


def test_weights_h5_round_trip(source, tmp_path, images):
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    loaded = _tiny(weights=path)
    assert_weights_equal(source, loaded)
    np.testing.assert_array_equal(loaded(images), source(images))


def test_representation_size_round_trip(tmp_path, images):
    source = randomize(_tiny(representation_size=24), seed=2)
    path = keras_vit.save_npz(source, tmp_path / "rep.npz")
    with np.load(path) as archive:
        assert archive["pre_logits/kernel"].shape == (16, 24)
    loaded = _tiny(representation_size=24, weights=path)
    np.testing.assert_array_equal(loaded(images), source(images))
    # Without representation_size the pre-logits layer is dropped, as vit_jax does.
    with pytest.warns(UserWarning) as record:
        _tiny(weights=path, classes=7)
    messages = " | ".join(str(w.message) for w in record)
    assert "pre-logits layer of width 24" in messages
    assert "has 5 classes but the model has classes=7" in messages


def test_google_prefixes_and_big_vision_names(source, npz_path, tmp_path, images):
    with np.load(npz_path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    renames = {"LayerNorm_2/": "LayerNorm_1/", "MlpBlock_3/": "MlpBlock_0/",
               "MultiHeadDotProductAttention_1/": "MultiHeadDotProductAttention_0/"}
    for prefix in ("opt/target/", "params/"):
        converted = {}
        for key, value in arrays.items():
            if prefix == "params/":
                for old, new in renames.items():
                    key = key.replace(old, new)
            converted[prefix + key] = value
        path = tmp_path / f"{prefix.strip('/').replace('/', '_')}.npz"
        np.savez(path, **converted)
        np.testing.assert_array_equal(_tiny(weights=path)(images), source(images))


def test_headless_model_ignores_head(source, npz_path):
    headless = _tiny(include_top=False, weights=npz_path)
    assert_weights_equal(_tiny(include_top=False, weights=npz_path), headless)
    np.testing.assert_array_equal(
        _as_numpy(headless.get_layer("patch_encoder").position_embedding),
        _as_numpy(source.get_layer("patch_encoder").position_embedding),
    )


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_head_of_other_size_is_left_fresh_with_warning(source, npz_path, tmp_path, fmt):
    path = npz_path
    if fmt == "h5":
        path = tmp_path / "tiny.weights.h5"
        source.save_weights(path)
    with pytest.warns(UserWarning, match=r"has 5 classes but the model has classes=10"):
        model = _tiny(classes=10, weights=path)
    np.testing.assert_array_equal(_as_numpy(model.get_layer("head").kernel), 0.0)
    np.testing.assert_array_equal(
        _as_numpy(model.get_layer("block_1").mlp_fc2.kernel),
        _as_numpy(source.get_layer("block_1").mlp_fc2.kernel),
    )


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_position_embedding_resampled_for_new_resolution(source, npz_path, tmp_path, fmt):
    path = npz_path
    if fmt == "h5":
        path = tmp_path / "tiny.weights.h5"
        source.save_weights(path)
    model = _tiny(input_shape=(24, 32, 3), weights=path)
    old = _as_numpy(source.get_layer("patch_encoder").position_embedding)
    new = _as_numpy(model.get_layer("patch_encoder").position_embedding)
    assert new.shape == (1, 1 + 6 * 8, 16)
    np.testing.assert_allclose(new, keras_vit.resample_position_embedding(old, (6, 8)), atol=1e-6)
    np.testing.assert_array_equal(new[:, 0], old[:, 0])  # class token kept
    np.testing.assert_array_equal(
        _as_numpy(model.get_layer("patch_encoder").projection.kernel),
        _as_numpy(source.get_layer("patch_encoder").projection.kernel),
    )


def test_resample_identity_and_constant():
    rng = np.random.default_rng(3)
    embedding = rng.normal(size=(1, 17, 5)).astype("float32")
    for interpolation in ("bilinear", "bicubic"):
        for antialias in (False, True):
            same = keras_vit.resample_position_embedding(
                embedding, (4, 4), interpolation=interpolation, antialias=antialias
            )
            np.testing.assert_allclose(same, embedding, atol=1e-6)
            constant = np.full((1, 10, 2), 0.7, "float32")
            resized = keras_vit.resample_position_embedding(
                constant, (5, 7), interpolation=interpolation, antialias=antialias
            )
            np.testing.assert_allclose(resized, 0.7, atol=1e-6)


def test_resample_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"not a square grid"):
        keras_vit.resample_position_embedding(np.zeros((1, 11, 4)), (4, 4))
    with pytest.raises(ValueError, match=r"interpolation must be one of"):
        keras_vit.resample_position_embedding(np.zeros((1, 17, 4)), (4, 4), interpolation="area")
    with pytest.raises(ValueError, match=r"\(1, tokens, hidden_dim\)"):
        keras_vit.resample_position_embedding(np.zeros((17, 4)), (4, 4))


# --- errors ----------------------------------------------------------------


def _rewrite(npz_path, out_path, drop=(), add=None, change=None):
    with np.load(npz_path) as archive:
        arrays = {key: archive[key] for key in archive.files if key not in drop}
    arrays.update(add or {})
    for key, shape in (change or {}).items():
        arrays[key] = np.zeros(shape, "float32")
    np.savez(out_path, **arrays)
    return out_path


def _assert_unchanged(model, before):
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(_as_numpy(variable), value)


def test_missing_key_names_variable_and_shape(npz_path, tmp_path):
    bad = _rewrite(npz_path, tmp_path / "bad.npz",
                   drop=["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"])
    model = _tiny()
    before = [_as_numpy(v) for v in model.weights]
    with pytest.raises(keras_vit.CheckpointError,
                       match=r"lacks 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias', needed for "
                             r"variable 'block_1/mlp_fc1/bias' of shape \(32,\)"):
        keras_vit.load_weights(model, bad)
    _assert_unchanged(model, before)


def test_unexpected_key_is_an_error(npz_path, tmp_path):
    bad = _rewrite(npz_path, tmp_path / "bad.npz",
                   add={"Transformer/encoderblock_2/LayerNorm_0/scale": np.ones(16, "float32")})
    with pytest.raises(keras_vit.CheckpointError,
                       match=r"1 array\(s\) that model 'vit_test4' has no variable for: "
                             r"'Transformer/encoderblock_2/LayerNorm_0/scale' \(16,\)"):
        _tiny(weights=bad)


def test_shape_mismatch_names_variable_and_both_shapes(npz_path, tmp_path):
    bad = _rewrite(npz_path, tmp_path / "bad.npz",
                   change={"Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel": (16, 48)})
    model = _tiny()
    before = [_as_numpy(v) for v in model.weights]
    with pytest.raises(keras_vit.CheckpointError,
                       match=r"'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel' has shape "
                             r"\(16, 48\) but variable 'block_0/mlp_fc1/kernel' expects \(16, 32\)"):
        keras_vit.load_weights(model, bad)
    _assert_unchanged(model, before)


def test_other_architecture_is_rejected(npz_path):
    with pytest.raises(keras_vit.CheckpointError, match=r"'embedding/kernel' has shape \(4, 4, 3, 16\) but "
                                                        r"variable 'patch_encoder/projection/kernel' expects \(48, 24\)"):
        keras_vit.ViT("Test/4", hidden_dim=24, input_shape=TINY_SHAPE, classes=5, weights=npz_path)


def test_h5_of_other_architecture_is_rejected(tmp_path):
    path = tmp_path / "deeper.weights.h5"
    keras_vit.ViT("Test/4", num_layers=3, input_shape=TINY_SHAPE, classes=5).save_weights(path)
    with pytest.raises(keras_vit.CheckpointError, match=r"has 16 array\(s\) that model 'vit_test4' has no"):
        _tiny(weights=path)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("notes.txt", b"hello, not weights", r"notes.txt is not a checkpoint keras_vit can read"),
        ("broken.npz", b"PK\x03\x04 truncated", r"Cannot read .*broken.npz as a '.npz' checkpoint"),
        ("broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1", r"Cannot read .*broken.safetensors"),
        ("broken.weights.h5", b"\x89HDF\r\n\x1a\n garbage", r"Cannot read .*broken.weights.h5 as a '.weights.h5'"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(keras_vit.CheckpointError, match=match):
        _tiny(weights=path)


def test_truncated_npz(npz_path, tmp_path):
    data = npz_path.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(keras_vit.CheckpointError, match=r"truncated.npz"):
        _tiny(weights=path)


def test_npz_without_vit_arrays(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(keras_vit.CheckpointError, match=r"not a ViT checkpoint: it has no 'embedding/kernel'"):
        _tiny(weights=path)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npz_with_pickled_object_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("embedding/kernel.npy", np.zeros(1).tobytes())
        with archive.open("cls.npy", "w") as f:
            np.lib.format.write_array(f, np.array([_Marker(str(marker))], dtype=object),
                                      allow_pickle=True)
    with pytest.raises(keras_vit.CheckpointError, match=r"evil.npz"):
        _tiny(weights=path)
    assert not marker.exists()
    # The file is a real threat: reading it with pickles allowed runs code.
    with np.load(path, allow_pickle=True) as archive:
        archive["cls"]
    assert marker.exists()


def test_safetensors_of_unknown_layout(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": np.zeros((2, 2), "float32")}, str(path))
    with pytest.raises(keras_vit.CheckpointError, match=r"neither a timm nor a Hugging Face ViT state dict"):
        _tiny(weights=path)


def test_load_weights_needs_a_keras_vit_model(npz_path):
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(keras_vit.CheckpointError, match=r"was not built by keras_vit"):
        keras_vit.load_weights(other, npz_path)


def test_save_npz_is_atomic(source, tmp_path, monkeypatch):
    path = keras_vit.save_npz(source, tmp_path / "keep.npz")
    before = path.read_bytes()

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(weights.layout.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        keras_vit.save_npz(randomize(_tiny(), seed=9), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]


def test_h5_groups_are_keras_own(source, tmp_path):
    # The .weights.h5 loader relies on Keras to place variables; this pins
    # that the file it reads is exactly what Keras writes.
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    with h5py.File(path) as f:
        assert "layers" in f


# --- one reconciliation policy for every format ----------------------------


def _load_with_warnings(path, **kwargs):
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = _tiny(**kwargs, weights=path)
    return model, [str(w.message).replace(str(path), "CHECKPOINT") for w in record]


def test_npz_and_weights_h5_go_through_the_same_policy(tmp_path):
    # The same weights as .npz and as .weights.h5, into a model at another
    # resolution (6x8 grid, not 8x8), with another head (10 classes, not 5)
    # and without the source's pre-logits layer.
    source = randomize(_tiny(representation_size=24), seed=4)
    npz = keras_vit.save_npz(source, tmp_path / "source.npz")
    h5 = tmp_path / "source.weights.h5"
    source.save_weights(h5)
    kwargs = {"input_shape": (24, 32, 3), "classes": 10}
    from_npz, npz_warnings = _load_with_warnings(npz, **kwargs)
    from_h5, h5_warnings = _load_with_warnings(h5, **kwargs)
    assert_weights_equal(from_npz, from_h5)
    assert npz_warnings == h5_warnings
    assert len(npz_warnings) == 2
    assert "pre-logits layer of width 24" in npz_warnings[0]
    assert "has 5 classes but the model has classes=10" in npz_warnings[1]
    old = _as_numpy(source.get_layer("patch_encoder").position_embedding)
    np.testing.assert_allclose(
        _as_numpy(from_h5.get_layer("patch_encoder").position_embedding),
        keras_vit.resample_position_embedding(old, (6, 8)), atol=1e-6,
    )
    # A headless model ignores the head of either file alike.
    headless_npz, npz_warnings = _load_with_warnings(npz, include_top=False)
    headless_h5, h5_warnings = _load_with_warnings(h5, include_top=False)
    assert_weights_equal(headless_npz, headless_h5)
    assert npz_warnings == h5_warnings and len(npz_warnings) == 1


def test_weights_h5_errors_name_the_variable_as_npz_errors_do(source, tmp_path):
    h5 = tmp_path / "tiny.weights.h5"
    source.save_weights(h5)
    with h5py.File(h5, "r+") as f:
        del f["layers/transformer_block_1/mlp_fc1/vars/1"]
    model = _tiny()
    before = [_as_numpy(v) for v in model.weights]
    with pytest.raises(keras_vit.CheckpointError,
                       match=r"lacks 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias', needed for "
                             r"variable 'block_1/mlp_fc1/bias' of shape \(32,\)"):
        keras_vit.load_weights(model, h5)
    _assert_unchanged(model, before)


def test_weights_h5_without_layer_names_is_read_by_the_model_layout(source, tmp_path, images):
    # Keras versions that record no layer names in the file: the keys of the
    # model's own weights tell which array is which.
    h5 = tmp_path / "tiny.weights.h5"
    source.save_weights(h5)
    with h5py.File(h5, "r+") as f:
        groups = []
        f.visititems(lambda key, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
        for group in groups + [f]:
            group.attrs.pop("name", None)
    loaded = _tiny(weights=h5)
    assert_weights_equal(source, loaded)
    np.testing.assert_array_equal(loaded(images), source(images))
