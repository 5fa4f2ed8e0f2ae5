"""Tests of the TF Serving export: layout and versions, signatures listed by
saved_model_cli, the SavedModel run by TensorFlow alone in a fresh process
and by `saved_model_cli run`, equal to `model.predict`."""

import io
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

import keras_vit
from keras_vit import cli, export, inference
from keras_vit import images as vit_images
from tests.conftest import randomize

PYTHON = sys.executable
SAVED_MODEL_CLI = os.path.join(os.path.dirname(PYTHON), "saved_model_cli")
NAMES = ["cat", "dog", "bird", "fish", "frog", "horse"]
SIZE = (32, 32)


def classifier(**kwargs):
    model = keras_vit.ViT("Test/8", input_shape=SIZE + (3,), classes=len(NAMES), **kwargs)
    return randomize(model, seed=1)


def photos(directory):
    """Real photos as JPEG, PNG and BMP files of different sizes, plus a
    grayscale PNG and an RGBA PNG."""
    arrays = {
        "astronaut.jpg": skimage.data.astronaut(),
        "chelsea.png": skimage.data.chelsea(),
        "coffee.bmp": skimage.data.coffee(),
        "camera.png": skimage.data.camera(),
        "rgba.png": np.dstack([skimage.data.chelsea(), np.full(skimage.data.chelsea().shape[:2], 200, np.uint8)]),
    }
    paths = []
    for name, array in arrays.items():
        path = directory / name
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("export")
    model = classifier()
    base = directory / "vit"
    version_path = export.export_saved_model(model, base, class_names=NAMES)
    paths = photos(directory)
    expected = model.predict(vit_images.load_images(paths, SIZE), verbose=0)
    return dict(model=model, base=base, version=version_path, paths=paths, expected=expected)


def _stored_values(version_dir):
    """How many numbers the SavedModel's variables hold."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    return sum(int(np.prod(shape)) for key, shape in reader.get_variable_to_shape_map().items()
               if key.endswith("VARIABLE_VALUE"))


def test_layout_and_versions(exported, tmp_path):
    assert exported["version"] == str(exported["base"] / "1")
    assert sorted(os.listdir(exported["version"])) == ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb",
                                                       "variables"]
    assert export.read_metadata(exported["version"]) == {
        "precision": "float32", "jit_compile": False, "tta": "none", "top_k": 5, "classes": 6,
        "keras_vit_version": keras_vit.__version__}
    # Serving graphs use the plain ops: the XLA-compiled training kernels
    # (keras_vit.backend.tensorflow) would need a TF Serving built with XLA.
    with open(os.path.join(exported["version"], "saved_model.pb"), "rb") as f:
        assert b"_XlaMustCompile" not in f.read()
    model = exported["model"]
    # Each weight stored once: Keras' ExportArchive with the model tracked
    # stores it twice (keras-team/keras#23553).
    assert _stored_values(exported["version"]) == model.count_params()
    base = tmp_path / "models" / "vit"
    # Also after the model's other inference graphs (predict above, and the
    # compiled direct call) were traced.
    model(np.zeros((1, *SIZE, 3), "float32"))
    assert export.export_saved_model(model, base) == str(base / "1")
    with open(base / "1" / "saved_model.pb", "rb") as f:
        assert b"_XlaMustCompile" not in f.read()
    assert export.export_saved_model(model, base) == str(base / "2")
    assert export.export_saved_model(model, base, version=7) == str(base / "7")
    assert export.export_saved_model(model, base) == str(base / "8")
    # Only integer version folders, no temporary directory left behind.
    assert sorted(os.listdir(base)) == ["1", "2", "7", "8"]
    assert export.list_versions(base) == [1, 2, 7, 8]


def test_existing_version_is_kept_unless_overwrite(exported, tmp_path):
    model = exported["model"]
    base = tmp_path / "vit"
    export.export_saved_model(model, base, class_names=NAMES)
    before = (base / "1" / "saved_model.pb").read_bytes()
    with pytest.raises(FileExistsError, match=r"vit/1 exists; pass overwrite=True .* version 2"):
        export.export_saved_model(model, base, class_names=NAMES[::-1], version=1)
    assert (base / "1" / "saved_model.pb").read_bytes() == before
    export.export_saved_model(model, base, class_names=NAMES[::-1], version=1, overwrite=True)
    assert (base / "1" / "saved_model.pb").read_bytes() != before
    assert b"horse" in (base / "1" / "saved_model.pb").read_bytes()
    assert sorted(os.listdir(base)) == ["1"]


def test_failed_write_leaves_no_version(exported, tmp_path, monkeypatch):
    def fail(path, **kwargs):
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise OSError("No space left on device")

    build = export.build_archive

    def failing_archive(*args, **kwargs):
        archive = build(*args, **kwargs)
        archive.write_out = fail
        return archive

    monkeypatch.setattr(export, "build_archive", failing_archive)
    base = tmp_path / "vit"
    with pytest.raises(OSError, match="No space left"):
        export.export_saved_model(exported["model"], base)
    assert os.listdir(base) == []


def test_saved_model_cli_lists_the_signatures(exported):
    out = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", exported["version"], "--all"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    for signature, inputs in (("serving_default", "image_bytes"), ("predict_images", "images"),
                              ("embeddings", "image_bytes")):
        block = out.split(f"signature_def['{signature}']:")[1].split("signature_def[")[0]
        assert f"inputs['{inputs}'] tensor_info" in block
        outputs = ["embeddings"] if signature == "embeddings" else [
            "probabilities", "top_k_indices", "top_k_labels", "top_k_scores"]
        for name in outputs:
            assert f"outputs['{name}'] tensor_info" in block
        assert "Method name is: tensorflow/serving/predict" in block
    images_block = out.split("signature_def['predict_images']:")[1]
    assert "shape: (-1, 32, 32, 3)" in images_block.split("outputs")[0]
    assert "dtype: DT_STRING\n        shape: (-1)" in out


# Run with an empty stand-in `keras` package first on the path (TensorFlow
# itself looks keras up when imported) and a `keras_vit` that cannot be
# imported: the SavedModel must load and run with TensorFlow alone.
FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
import keras
assert keras.__file__.startswith(sys.argv[1]), keras.__file__
sys.argv.pop(1)

version, npy, *paths = sys.argv[1:]
loaded = tf.saved_model.load(version)
serve = loaded.signatures["serving_default"]
out = serve(image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
images = loaded.signatures["predict_images"](images=tf.constant(np.load(npy)))
emb = loaded.signatures["embeddings"](image_bytes=tf.constant([open(paths[0], "rb").read()]))
print(json.dumps({
    "probabilities": out["probabilities"].numpy().tolist(),
    "probabilities_dtype": out["probabilities"].dtype.name,
    "top_k_labels": [[b.decode() for b in row] for row in out["top_k_labels"].numpy()],
    "top_k_indices": out["top_k_indices"].numpy().tolist(),
    "top_k_indices_dtype": out["top_k_indices"].dtype.name,
    "top_k_scores": out["top_k_scores"].numpy().tolist(),
    "images_probabilities": images["probabilities"].numpy().tolist(),
    "embeddings": emb["embeddings"].numpy().tolist(),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "keras_vit", "tf_keras")),
    "keras_attributes": sorted(a for a in vars(keras) if not a.startswith("__")),
}))
"""


def test_tensorflow_alone_gives_model_predict(exported, tmp_path):
    npy = tmp_path / "images.npy"
    images = vit_images.load_images(exported["paths"], SIZE)
    np.save(npy, images)
    stub = tmp_path / "stub"
    (stub / "keras").mkdir(parents=True)
    (stub / "keras" / "__init__.py").write_text("# empty: the SavedModel must not need Keras\n")
    (stub / "keras_vit").mkdir()
    (stub / "keras_vit" / "__init__.py").write_text("raise ImportError('keras_vit must not be needed')\n")
    env = dict(os.environ, PYTHONPATH=str(stub))
    result = subprocess.run(
        [PYTHON, "-c", FRESH_PROCESS, str(stub), exported["version"], str(npy)]
        + [str(p) for p in exported["paths"]],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    # Only the empty stand-in was imported, and nothing was added to it.
    assert got["modules"] == ["keras"] and got["keras_attributes"] == []
    expected = exported["expected"]
    assert expected.std(axis=-1).min() > 1e-3  # a model whose outputs depend on the image
    np.testing.assert_allclose(got["probabilities"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["images_probabilities"], expected, rtol=0, atol=1e-5)
    assert got["probabilities_dtype"] == "float32" and got["top_k_indices_dtype"] == "int32"
    order = np.argsort(-expected, axis=-1)[:, :5]
    assert got["top_k_indices"] == order.tolist()
    assert got["top_k_labels"] == [[NAMES[i] for i in row] for row in order]
    np.testing.assert_allclose(got["top_k_scores"], np.take_along_axis(expected, order, -1), atol=1e-5)
    features = keras.Model(exported["model"].inputs, exported["model"].get_layer("head").input)
    np.testing.assert_allclose(got["embeddings"], features.predict(images[:1], verbose=0), atol=1e-5)


def test_saved_model_cli_run(exported, tmp_path):
    images = vit_images.load_images(exported["paths"][:2], SIZE)
    np.save(tmp_path / "x.npy", images)
    subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", exported["version"], "--tag_set", "serve",
         "--signature_def", "predict_images", "--inputs", f"images={tmp_path / 'x.npy'}",
         "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"), exported["expected"][:2],
                               rtol=0, atol=1e-5)
    labels = np.load(tmp_path / "out" / "top_k_labels.npy", allow_pickle=True)
    assert labels[:, 0].tolist() == [NAMES[i].encode() for i in exported["expected"][:2].argmax(-1)]


def test_undecodable_bytes_fail_clearly(exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(exported["version"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown image format: expected one of JPEG, PNG, GIF, BMP, WebP"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))


def test_mixed_precision_model_exports_float32(tmp_path):
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(0, 255, (3,) + SIZE + (3,)).astype("float32")
    reference = classifier().predict(images, verbose=0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = classifier()
    assert model.get_layer("block_0").compute_dtype == "bfloat16"
    path = export.export_saved_model(model, tmp_path / "vit", class_names=NAMES)
    keras.config.set_dtype_policy("float32")
    out = tf.saved_model.load(path).signatures["predict_images"](images=tf.constant(images))
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy(), reference, atol=0.03)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)


def test_logits_model_exports_probabilities(tmp_path):
    import tensorflow as tf

    model = classifier(classifier_activation=None)
    images = np.random.default_rng(0).uniform(0, 255, (2,) + SIZE + (3,)).astype("float32")
    logits = model.predict(images, verbose=0)
    path = export.export_saved_model(model, tmp_path / "vit", top_k=2)
    out = tf.saved_model.load(path).signatures["predict_images"](images=tf.constant(images))
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-6)
    assert out["top_k_labels"].shape == (2, 2)
    assert [b.decode() for b in out["top_k_labels"].numpy()[:, 0]] == [str(i) for i in logits.argmax(-1)]
    # With flip TTA: the mean of the two images' probabilities (softmax first).
    path = export.export_saved_model(model, tmp_path / "vit", top_k=2, tta="flip")
    out = tf.saved_model.load(path).signatures["predict_images"](images=tf.constant(images))
    mirrored = model.predict(images[:, :, ::-1], verbose=0)
    softmax = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(out["probabilities"].numpy(), (expected + softmax(mirrored)) / 2, atol=1e-6)


def test_int8_export_compiled_by_xla_on_request(tmp_path):
    import tensorflow as tf

    model = inference.with_precision(classifier(), "int8")
    images = np.random.default_rng(0).uniform(0, 255, (3,) + SIZE + (3,)).astype("float32")
    expected = model.predict(images, verbose=0)
    plain = export.export_saved_model(model, tmp_path / "vit", class_names=NAMES)
    compiled = export.export_saved_model(model, tmp_path / "vit", class_names=NAMES, jit_compile=True)
    for path, jit in ((plain, False), (compiled, True)):
        assert export.read_metadata(path)["jit_compile"] is jit
        assert export.read_metadata(path)["precision"] == "int8"
        assert _stored_values(path) == model.count_params()  # each int8 kernel and scale once
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            assert (b"_XlaMustCompile" in f.read()) is jit
        loaded = tf.saved_model.load(path)
        out = loaded.signatures["predict_images"](images=tf.constant(images))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
        embeddings = loaded.signatures["embeddings"](
            image_bytes=tf.constant([tf.io.encode_png(images[0].astype("uint8")).numpy()]))["embeddings"]
        assert embeddings.shape == (1, model.get_layer("head").input.shape[-1])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(jit_compile="yes"), ValueError, "jit_compile must be True or False, received 'yes'"),
        (dict(class_names=["a", "b"]), ValueError, "class_names has 2 names but the model has 6 classes"),
        (dict(class_names="abcdef"), TypeError, "class_names must be a list of strings"),
        (dict(top_k=7), ValueError, r"top_k must be an integer in \[1, 6\], received top_k=7"),
        (dict(version=0), ValueError, "version must be a positive integer, received version=0"),
        (dict(version="2"), ValueError, "version must be a positive integer, received version='2'"),
        (dict(tta="hflip"), ValueError, "tta must be one of 'none', 'flip'; received tta='hflip'"),
    ],
)
def test_bad_arguments(exported, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export.export_saved_model(exported["model"], tmp_path / "vit", **kwargs)
    assert not (tmp_path / "vit").exists() or os.listdir(tmp_path / "vit") == []


def test_models_that_cannot_be_exported(tmp_path):
    with pytest.raises(ValueError, match="no classification head .* include_top=True"):
        export.export_saved_model(keras_vit.ViT("Test/8", input_shape=(32, 32, 3), include_top=False),
                                  tmp_path / "a")
    with pytest.raises(TypeError, match="model must be a keras.Model, received str"):
        export.export_saved_model("runs/x", tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        export.export_saved_model(classifier(), tmp_path / "file")


def test_cli_export_of_a_training_run(tmp_path, capsys):
    run = tmp_path / "runs" / "digits"
    assert cli.main(["train", "--epochs", "1", "--output", str(run), "--hidden-dim", "16", "--num-heads", "2",
                     "--mlp-dim", "32", "--num-layers", "1", "--verbose", "0"]) == 0
    base = tmp_path / "export" / "digits"
    assert cli.main(["export", str(run), "--output", str(base)]) == 0
    assert f"to {base / '1'}" in capsys.readouterr().out
    assert cli.main(["export", str(run), "--output", str(base), "--version", "1"]) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err

    import tensorflow as tf

    config = json.loads((run / "config.json").read_text())
    size = config["image_size"]
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    loaded = tf.saved_model.load(str(base / "1"))
    out = loaded.signatures["predict_images"](images=tf.constant(images))
    model = keras.saving.load_model(run / "best.keras")
    np.testing.assert_allclose(out["probabilities"].numpy(), model.predict(images, verbose=0), atol=1e-5)
    labels = [b.decode() for b in out["top_k_labels"].numpy()[0]]
    assert set(labels) <= set(config["class_names"]) and len(labels) == 5
    buffer = io.BytesIO()
    Image.fromarray(images[0].astype(np.uint8)).save(buffer, format="PNG")
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([buffer.getvalue()]))
    np.testing.assert_allclose(out["probabilities"].numpy()[0],
                               model.predict(images[:1].astype(np.uint8).astype("float32"), verbose=0)[0],
                               atol=1e-5)

    # --mixed-precision: the same model computing in bfloat16 (the fast path
    # on CPUs with AVX-512-BF16), float32 in and out.
    assert cli.main(["export", str(run), "--output", str(base), "--mixed-precision"]) == 0
    assert f"to {base / '2'}" in capsys.readouterr().out
    fast = tf.saved_model.load(str(base / "2"))
    out = fast.signatures["predict_images"](images=tf.constant(images))
    assert out["probabilities"].dtype == tf.float32
    expected = model.predict(images, verbose=0)
    assert not np.array_equal(out["probabilities"].numpy(), expected)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=0.03)
    embeddings = fast.signatures["embeddings"](image_bytes=tf.constant([buffer.getvalue()]))["embeddings"]
    assert embeddings.dtype == tf.float32


def test_versions_are_claimed_once_and_never_replaced_without_overwrite(exported, tmp_path, monkeypatch):
    """Issue 30: two exports at once picked the same number and the second
    replaced the first, even without overwrite; a folder named "²" (a
    digit to str.isdigit, not to int) crashed the version listing."""
    model = exported["model"]
    base = tmp_path / "vit"
    base.mkdir()
    (base / "²").mkdir()
    (base / "notes").mkdir()
    build = export.build_archive
    inner = {}

    def archive_exporting_meanwhile(*args, **kwargs):
        archive = build(*args, **kwargs)
        write_out = archive.write_out

        def write_out_while_another_exports(path, **options):
            if not inner:  # the first export has claimed version 1: a second starts now
                inner["started"] = True
                inner["auto"] = export.export_saved_model(model, base)
                with pytest.raises(FileExistsError, match=r"vit/1 is being written by another export \(its "
                                                          r"claim .*vit/.claim-1 is held\)"):
                    export.export_saved_model(model, base, version=1)
            return write_out(path, **options)

        archive.write_out = write_out_while_another_exports
        return archive

    monkeypatch.setattr(export, "build_archive", archive_exporting_meanwhile)
    assert export.export_saved_model(model, base) == str(base / "1")
    assert inner["auto"] == str(base / "2")
    assert export.list_versions(base) == [1, 2]
    assert sorted(os.listdir(base)) == ["1", "2", "notes", "²"]  # no claim left
    # A claim left by a killed export (its process gone) is taken over.
    (base / ".claim-3").write_text(f"{socket.gethostname()} 999999999\n")
    assert export.export_saved_model(model, base) == str(base / "3")


def test_overwrite_swaps_the_version_in_one_step(exported, tmp_path, monkeypatch):
    """The served version is never missing: the new directory and the old
    are exchanged by one renameat2 call, not two renames."""
    model = exported["model"]
    base = tmp_path / "vit"
    export.export_saved_model(model, base, class_names=NAMES)
    renamed = []
    rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: renamed.append((str(a), str(b))) or rename(a, b))
    export.export_saved_model(model, base, class_names=NAMES[::-1], version=1, overwrite=True)
    assert b"horse" in (base / "1" / "saved_model.pb").read_bytes()
    assert not any(source == str(base / "1") for source, _ in renamed), renamed
    assert sorted(os.listdir(base)) == ["1"]
