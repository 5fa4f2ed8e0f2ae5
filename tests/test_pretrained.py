"""Named pretrained weights, proven on a loopback mirror of Google's bucket.

The mirror (tests/weights_mirror.py) serves, under the real file name of
ViT-Ti/16's `augreg_in21k_ft_in1k` checkpoint, a checkpoint written from a
randomly initialised timm model, so a downloaded model can be compared with
timm (max abs difference of logits <= 1e-4). No test touches the network.
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_vit
from keras_vit import cli
from keras_vit.weights import download, pretrained
from keras_vit.weights import CheckpointError
from tests.conftest import randomize_torch
from tests.weights_mirror import Mirror

torch = pytest.importorskip("torch", reason="the mirror's checkpoints come from timm ([test] extra)")
timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402

ATOL = 1e-4
TI16 = pretrained.resolve("Ti/16", "imagenet")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """timm's ViT-Ti/16 with random weights, its logits on two photos plus
    noise, and the same weights as a Google `.npz` (the bucket's format)."""
    torch.set_num_threads(2)
    model = randomize_torch(timm.create_model("vit_tiny_patch16_224", pretrained=False), seed=0)
    folder = tmp_path_factory.mktemp("reference")
    state = folder / "ti16.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(state))
    from skimage import data, transform

    photos = np.stack([transform.resize(photo, (224, 224), preserve_range=True)
                       for photo in (data.astronaut(), data.chelsea())])
    noise = np.random.default_rng(0).uniform(0, 255, photos.shape)
    images = keras_vit.preprocess_input(np.concatenate([photos, noise]))
    with torch.no_grad():
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    keras_model = keras_vit.ViTTi16(weights=str(state), classifier_activation=None)
    npz = keras_vit.save_npz(keras_model, folder / "ti16.npz").read_bytes()
    return {"npz": npz, "images": images, "logits": logits}


@pytest.fixture
def mirror(reference, tmp_path, monkeypatch):
    """The mirror, serving the Ti/16 checkpoint; Keras' cache in tmp_path."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KERAS_VIT_DOWNLOAD_TIMEOUT", "2")
    with Mirror({TI16.file: reference["npz"]}) as server:
        monkeypatch.setenv("KERAS_VIT_WEIGHTS_BASE_URL", server.url)
        yield server


def _cache_contents(tmp_path):
    root = tmp_path / "keras" / "models"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _assert_close(actual, expected):
    difference = float(np.max(np.abs(actual - expected)))
    assert difference <= ATOL, f"max abs difference {difference:.3g} > {ATOL}"
    assert float(np.std(expected)) > 0.1  # random weights: logits far apart


def test_default_weights_download_once_and_match_timm(mirror, reference, tmp_path):
    model = keras_vit.ViTTi16(classifier_activation=None)  # weights="imagenet" by default
    assert mirror.requests == [TI16.file]
    assert TI16.file.startswith("vit_models/augreg/Ti_16-i21k-300ep-")
    assert TI16.file.endswith("--imagenet2012-steps_20k-lr_0.03-res_224.npz")
    cached = tmp_path / "keras" / "models" / TI16.file
    assert cached.read_bytes() == reference["npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert cached.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    _assert_close(model.predict(reference["images"], verbose=0), reference["logits"])
    assert model.class_names[281] == "tabby" and len(model.class_names) == 1000

    # The second build reads the cache: no request.
    again = keras_vit.ViTTi16()
    assert mirror.requests == [TI16.file]
    probabilities = again.predict(reference["images"], verbose=0)
    decoded = keras_vit.decode_predictions(probabilities, top=3)
    best = int(np.argmax(probabilities[0]))
    assert decoded[0][0] == (keras_vit.imagenet.wnids()[best], keras_vit.imagenet.class_names()[best],
                             pytest.approx(float(probabilities[0, best])))
    assert _cache_contents(tmp_path) == [TI16.file, TI16.file + ".lock"]


def test_class_names_survive_keras_saving(mirror, tmp_path):
    model = keras_vit.ViTTi16()
    model.save(tmp_path / "ti16.keras")
    assert keras_vit.load_model(tmp_path / "ti16.keras").class_names == model.class_names


def test_fine_tuning_start_keeps_backbone_and_fresh_head(mirror, reference):
    with pytest.warns(UserWarning, match="1000 classes but the model has classes=10"):
        model = keras_vit.ViTTi16(classes=10, input_shape=(160, 160, 3))
    assert model.output_shape == (None, 10)
    assert model.class_names is None  # not ImageNet's classes any more
    grid = keras_vit.ViTTi16(weights=None)
    keras_vit.load_weights(grid, download.cache_dir() / TI16.file)
    expected = keras_vit.resample_position_embedding(
        grid.get_layer("patch_encoder").position_embedding.numpy(), (10, 10))
    np.testing.assert_allclose(model.get_layer("patch_encoder").position_embedding.numpy(), expected,
                               atol=1e-6)


def test_resolution_picks_the_file_of_the_tag(mirror, tmp_path):
    with pytest.raises(download.DownloadError) as error:
        keras_vit.ViTTi16(weights="augreg_in21k_ft_in1k", input_shape=(384, 384, 3))
    wanted = TI16.file.replace("res_224", "res_384")
    assert mirror.requests == [wanted]
    assert f"{mirror.url}/{wanted}" in str(error.value) and "HTTP 404" in str(error.value)
    assert str(tmp_path / "keras" / "models" / wanted) in str(error.value)
    assert pretrained.resolve("Ti/16", "augreg_in21k_ft_in1k", 320).image_size == 384
    assert pretrained.resolve("Ti/16", "augreg_in21k_ft_in1k", 256).image_size == 224
    # L/32's only ImageNet-1k file is at 384: the model defaults to it.
    assert pretrained.resolve("L/32", "imagenet").image_size == 384


@pytest.mark.parametrize("fault, says", [
    ("short", "connection broke"),
    ("long_header", "connection broke after"),
    ("bad_md5", "x-goog-hash"),
    ("404", "HTTP 404"),
    ("500", "HTTP 500"),
])
def test_failed_download_leaves_nothing_and_the_next_call_retries(mirror, reference, tmp_path, fault, says):
    mirror.faults[TI16.file] = fault
    with pytest.raises(download.DownloadError) as error:
        keras_vit.ViTTi16()
    message = str(error.value)
    assert says in message
    if fault == "long_header":  # the whole file, but less than announced
        assert f" bytes of {len(reference['npz']) + 1000} " in message
    assert f"{mirror.url}/{TI16.file}" in message
    assert str(tmp_path / "keras" / "models" / TI16.file) in message
    assert "keras-vit weights download augreg_in21k_ft_in1k --variant Ti/16" in message
    assert _cache_contents(tmp_path) == [TI16.file + ".lock"]  # no file, no partial file
    del mirror.faults[TI16.file]
    model = keras_vit.ViTTi16(classifier_activation=None)
    _assert_close(model.predict(reference["images"], verbose=0), reference["logits"])
    assert mirror.requests == [TI16.file, TI16.file]


def test_stalled_server_times_out_with_a_clear_error(mirror, tmp_path):
    mirror.faults[TI16.file] = "stall"
    started = time.monotonic()
    with pytest.raises(download.DownloadError, match="stopped sending after .* no data for 2 s"):
        keras_vit.ViTTi16()
    assert time.monotonic() - started < 10
    assert _cache_contents(tmp_path) == [TI16.file + ".lock"]


def test_no_network_fails_in_seconds_saying_what_to_do(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with Mirror() as closed:  # a port that is free once the server is gone
        url = closed.url
    monkeypatch.setenv("KERAS_VIT_WEIGHTS_BASE_URL", url)
    started = time.monotonic()
    with pytest.raises(download.DownloadError) as error:
        keras_vit.ViTB16()
    assert time.monotonic() - started < 5
    entry = pretrained.resolve("B/16", "imagenet")
    message = str(error.value)
    assert f"{url}/{entry.file}" in message and "refused" in message
    assert f"put it at {tmp_path / 'keras' / 'models' / entry.file}" in message
    assert "keras-vit weights download augreg_in21k_ft_in1k --variant B/16" in message


def test_known_hash_mismatch_is_refused(mirror, reference, tmp_path, monkeypatch):
    good = hashlib.sha256(reference["npz"]).hexdigest()
    original = pretrained.TABLE
    for sha256, fails in (("0" * 64, True), (good, False)):
        table = tuple(e if e != TI16 else pretrained.PretrainedWeights(**{**e.__dict__, "sha256": sha256})
                      for e in original)
        monkeypatch.setattr(pretrained, "TABLE", table)
        if fails:
            with pytest.raises(download.DownloadError, match=f"SHA-256 {good} differs from the expected"):
                keras_vit.ViTTi16()
            assert _cache_contents(tmp_path) == [TI16.file + ".lock"]
        else:
            assert keras_vit.ViTTi16().class_names[0] == "tench"


def test_a_body_that_is_no_checkpoint_is_not_cached(mirror, tmp_path):
    mirror.files[TI16.file] = b"<html>Service Unavailable</html>" * 100
    with pytest.raises(download.DownloadError, match="downloaded but is not a usable checkpoint"):
        keras_vit.ViTTi16()
    assert _cache_contents(tmp_path) == [TI16.file + ".lock"]


def test_a_cached_file_that_does_not_load_is_removed(mirror, reference, tmp_path):
    cached = tmp_path / "keras" / "models" / TI16.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(reference["npz"][:1000])  # a file copied by hand, truncated
    with pytest.raises(CheckpointError) as error:
        keras_vit.ViTTi16()
    assert f"{mirror.url}/{TI16.file}" in str(error.value) and str(cached) in str(error.value)
    assert not cached.exists() and mirror.requests == []
    keras_vit.ViTTi16()
    assert mirror.requests == [TI16.file] and cached.read_bytes() == reference["npz"]


def test_a_model_that_cannot_take_the_file_keeps_the_cache(mirror, tmp_path):
    keras_vit.ViTTi16()
    with pytest.raises(CheckpointError, match="lacks 'pre_logits/kernel'"):
        keras_vit.ViTTi16(representation_size=64)  # a layer the checkpoint does not have
    assert (tmp_path / "keras" / "models" / TI16.file).is_file()
    assert mirror.requests == [TI16.file]


def test_concurrent_first_use_downloads_once(mirror, reference, tmp_path):
    mirror.delay_per_chunk = 0.5  # ~12 s for the 6 MB file: the processes overlap
    script = (
        "import numpy as np, keras_vit\n"
        "m = keras_vit.ViTTi16(classifier_activation=None)\n"
        f"x = np.load({str(tmp_path / 'images.npy')!r})\n"
        "print('LOGITS', repr(m.predict(x, verbose=0).tolist()))\n"
    )
    np.save(tmp_path / "images.npy", reference["images"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_VIT_DOWNLOAD_TIMEOUT="30")
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-2000:]
        line = next(line for line in out.splitlines() if line.startswith("LOGITS"))
        _assert_close(np.array(eval(line[len("LOGITS "):])), reference["logits"])
    assert mirror.requests == [TI16.file]
    assert (tmp_path / "keras" / "models" / TI16.file).read_bytes() == reference["npz"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights="imagnet"), "neither a checkpoint file nor a named checkpoint; named weights for ViT-Ti/16: "
                              "imagenet, imagenet21k, augreg_in21k_ft_in1k, augreg_in21k"),
    (dict(weights="augreg_in1k"), "weights='augreg_in1k' exists for B/16, B/32, S/16, not for ViT-Ti/16"),
    (dict(weights="imagenet", hidden_dim=96),
     "needs that variant's own sizes; received hidden_dim=96 (ViT-Ti/16: 192)"),
])
def test_bad_names_raise_value_errors(kwargs, message):
    variant = "Ti/16"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        keras_vit.ViT(variant, **kwargs)


def test_h14_has_no_imagenet_1k_weights_and_defaults_to_random():
    with pytest.raises(ValueError, match="ViT-H/14 has no 'imagenet' weights"):
        keras_vit.ViT("H/14", weights="imagenet")
    assert pretrained.default_tag("H/14") is None
    assert pretrained.default_tag("H/14", "imagenet21k") == "orig_in21k"
    import inspect

    assert inspect.signature(keras_vit.ViTH14).parameters["weights"].default is None
    assert inspect.signature(keras_vit.ViTB16).parameters["weights"].default == "imagenet"
    assert inspect.signature(keras_vit.ViTTest4).parameters["weights"].default is None
    assert inspect.signature(keras_vit.ViT).parameters["weights"].default is None


@pytest.mark.parametrize("name, value, message", [
    ("KERAS_VIT_WEIGHTS_BASE_URL", "ftp://mirror", "must be an http"),
    ("KERAS_VIT_DOWNLOAD_TIMEOUT", "soon", "positive number of seconds, received 'soon'"),
])
def test_bad_environment_values(monkeypatch, tmp_path, name, value, message):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        keras_vit.ViTTi16()


def test_the_table():
    rows = keras_vit.list_weights(print_table=False)
    assert len(rows) == len(set((r.variant, r.tag, r.image_size) for r in rows)) == 39
    for row in rows:
        assert row.file.startswith("vit_models/") and row.file.endswith(".npz")
        assert row.url == f"https://storage.googleapis.com/{row.file}"
        assert row.classes in (1000, 21843)
        assert (row.classes == 21843) == row.tag.endswith("in21k")
        assert (row.representation_size is not None) == (row.tag == "orig_in21k")
        assert row.timm_name.startswith("vit_") and row.timm_name.endswith("." + row.tag)
    assert TI16.timm_name == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    for variant in ("Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16"):
        assert pretrained.resolve(variant, "imagenet").image_size == 224
        assert pretrained.resolve(variant, "imagenet21k").tag == "augreg_in21k"
    b16 = pretrained.resolve("B/16", "orig_in21k")
    assert b16.file == "vit_models/imagenet21k/ViT-B_16.npz" and b16.representation_size == 768
    assert b16.class_names is None  # the original ImageNet-21k heads are zeros
    assert pretrained.resolve("B/16", "orig_in21k_ft_in1k", 384).file == \
        "vit_models/imagenet21k+imagenet2012/ViT-B_16.npz"


def test_list_weights_prints_the_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    rows = keras_vit.list_weights("B/16")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| size | tag | resolution | classes | top-1 | cached | file |"
    assert len(lines) == 2 + len(rows) == 2 + 8
    assert lines[2].startswith("| B/16 | augreg_in21k_ft_in1k * | 224 | 1000 | 84.53 | no | vit_models/augreg/B_16-")
    assert any("| orig_in21k | 224 | 21843 (zeroed head) | - | no |" in line for line in lines)
    with pytest.raises(ValueError, match="standard sizes only"):
        keras_vit.list_weights("Test/4")


def test_cli_weights_list_and_download(mirror, reference, tmp_path, capsys):
    assert cli.main(["weights", "list", "--variant", "Ti/16"]) == 0
    out = capsys.readouterr().out
    assert "| Ti/16 | augreg_in21k_ft_in1k * | 224 | 1000 | 75.45 | no |" in out
    assert cli.main(["weights", "download", "imagenet", "--variant", "Ti/16"]) == 0
    cached = tmp_path / "keras" / "models" / TI16.file
    assert str(cached) in capsys.readouterr().out
    assert cached.read_bytes() == reference["npz"]
    assert cli.main(["weights", "list", "--variant", "Ti/16"]) == 0
    assert "| Ti/16 | augreg_in21k_ft_in1k * | 224 | 1000 | 75.45 | yes |" in capsys.readouterr().out
    assert cli.main(["weights", "download", "augreg_in1k", "--variant", "Ti/16"]) == 2
    assert "not for ViT-Ti/16" in capsys.readouterr().err
    mirror.faults[TI16.file.replace("res_224", "res_384")] = "404"
    assert cli.main(["weights", "download", "imagenet", "--variant", "Ti/16", "--image-size", "384"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("keras-vit weights: error: downloading ") and "HTTP 404" in error
    assert error.count("\n") == 1



@pytest.fixture
def photo(tmp_path):
    from PIL import Image
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_cli_predict_with_named_weights_prints_imagenet_names(mirror, photo, capsys):
    assert cli.main(["predict", "--variant", "Ti/16", "--weights", "imagenet", "--top-k", "2", str(photo)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    model = keras_vit.ViTTi16(include_preprocessing=True)
    probabilities = model.predict(keras_vit.images.load_images([str(photo)], (224, 224)), verbose=0)[0]
    top = np.argsort(probabilities)[::-1][:2]
    names = keras_vit.imagenet.class_names()
    assert line == f"{photo}: " + ", ".join(f"{names[i]} {probabilities[i]:.4f}" for i in top)
    assert mirror.requests == [TI16.file]


@pytest.mark.parametrize("argv, message", [
    (["predict", "--weights", "imagenet", "x.png"], "needs the model size it is for"),
    (["predict", "--variant", "Ti/16", "runs/x", "x.png"], "--variant applies to --weights"),
    (["export", "runs/x", "--variant", "Ti/16", "--weights", "imagenet"], "a run directory or --weights, not both"),
    (["export"], "export needs a run directory or --weights"),
    (["train", "--weights", "imagenet21k"], "give the size it is for, e.g. variant='B/16'"),
    (["train", "--weights", "imagenet21k", "--variant", "Ti/16", "--hidden-dim", "96"],
     "is a ViT-Ti/16 checkpoint, which needs that variant's own sizes; received hidden_dim=96 (ViT-Ti/16: 192)"),
    (["train", "--weights", "augreg_in1k", "--variant", "Ti/16"], "not for ViT-Ti/16"),
    (["train", "--weights", "nosuchfile.npz"], "weights='nosuchfile.npz': no such checkpoint file"),
    (["train", "--weights", "imagenet22k", "--variant", "Ti/16"], "neither a checkpoint file nor a named checkpoint"),
])
def test_cli_refuses_bad_weights_arguments_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_cli_export_named_weights_carries_imagenet_labels(mirror, photo, tmp_path, capsys):
    import tensorflow as tf

    assert cli.main(["export", "--variant", "Ti/16", "--weights", "imagenet", "--top-k", "3",
                     "--output", str(tmp_path / "export" / "vit")]) == 0
    assert f"to {tmp_path / 'export' / 'vit' / '1'}" in capsys.readouterr().out
    loaded = tf.saved_model.load(str(tmp_path / "export" / "vit" / "1"))
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([photo.read_bytes()]))
    labels = [label.decode() for label in outputs["top_k_labels"].numpy()[0]]
    indices = outputs["top_k_indices"].numpy()[0]
    assert labels == [keras_vit.imagenet.class_names()[i] for i in indices]
    model = keras_vit.ViTTi16(include_preprocessing=True)
    expected = model.predict(keras_vit.images.load_images([str(photo)], (224, 224)), verbose=0)[0]
    assert list(indices) == list(np.argsort(expected)[::-1][:3])
