"""Hugging Face Hub handles (`keras_vit.weights.hub`), with no network.

A huggingface_hub cache is written here in the layout the library reads
offline (`models--ORG--NAME/refs/main` holding a commit hash, the files under
`snapshots/<hash>/`), holding random timm and transformers ViTs saved as
their libraries save them. One subprocess, started with `HF_HUB_OFFLINE=1`
and `HF_HUB_CACHE` pointing at that cache (huggingface_hub reads both when it
is imported, as in a user's process), loads every repository and reports back;
the tests compare its outputs with timm's and transformers' on the same
images. Tolerance: max abs difference <= 1e-4 in float32, as in
test_parity.py.
"""

import doctest
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_vit
from tests.conftest import randomize_torch
from keras_vit.weights import hub

torch = pytest.importorskip("torch", reason="hub tests need the [test] extra")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from timm.models import vision_transformer as timm_vit  # noqa: E402

ATOL = 1e-4
COMMIT = "0123456789abcdef0123456789abcdef01234567"

TIMM = "hf://timm/vit_tiny_patch16_224.test"
HF_CLS = "hf://test/vit-hf-cls"
HF_BASE = "hf://test/vit-hf-in21k"
HF_NO_POOLER = "hf://test/vit-hf-no-pooler"
HF_PLACEHOLDER = "hf://test/vit-hf-placeholder-labels"
PICKLE_ONLY = "hf://test/vit-pickle-only"
TIMM_CLIP = "hf://timm/vit_base_patch16_clip_224.test"
TIMM_GAP = "hf://timm/vit_base_patch16_224.gap"
TIMM_MEAN_STD = "hf://timm/vit_small_patch32_384.imagenet-norm"
HF_GRAY = "hf://test/vit-hf-gray"
MISSING = "hf://nobody/not-cached"

HF_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, image_size=32, patch_size=8, layer_norm_eps=1e-6)

pytestmark = pytest.mark.slow

# What the subprocess runs: every load and every error, reported as JSON
# (values and messages) and an .npz (model outputs).
SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import keras
    import numpy as np
    import keras_vit
    from keras_vit.weights import hub
    from keras_vit.weights import CheckpointError

    out = sys.argv[1]
    handles = json.loads(sys.argv[2])
    images = {size: np.load(f"{out}/images{size}.npy") for size in (32, 48)}
    results, arrays = {}, {}

    def run(key, function, *args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = function(*args, **kwargs)
                error = None
            except Exception as e:
                value, error = None, {"type": type(e).__name__, "message": str(e),
                                      "checkpoint_error": isinstance(e, CheckpointError)}
        results[key] = {"error": error, "warnings": [str(w.message) for w in caught]}
        return value

    def logits(model, size):
        return np.asarray(model.predict(images[size], verbose=0))

    for handle in ("TIMM", "HF_CLS", "HF_BASE", "HF_NO_POOLER", "HF_PLACEHOLDER",
                   "TIMM_MEAN_STD"):
        results[f"config:{handle}"] = {"value": run(f"read:{handle}", hub.read_config,
                                                    handles[handle])}

    model = run("timm", hub.from_pretrained, handles["TIMM"], classifier_activation=None)
    arrays["timm32"] = logits(model, 32)
    results["timm_model"] = {"name": model.name, "input_shape": list(model.input_shape),
                             "class_names": list(model.class_names or [])}
    model = run("timm48", hub.from_pretrained, handles["TIMM"], classifier_activation=None,
                input_shape=(48, 48, 3))
    arrays["timm48"] = logits(model, 48)

    model = run("hf_cls", hub.from_pretrained, handles["HF_CLS"], classifier_activation=None)
    arrays["hf32"] = logits(model, 32)
    results["hf_model"] = {"name": model.name, "class_names": list(model.class_names or [])}
    model = run("hf48", hub.from_pretrained, handles["HF_CLS"], classifier_activation=None,
                input_shape=(48, 48, 3))
    arrays["hf48"] = logits(model, 48)
    model = run("hf_new_head", hub.from_pretrained, handles["HF_CLS"], classes=5)
    results["hf_new_head_model"] = {"output_shape": list(model.output_shape),
                                    "class_names": model.class_names}
    # The weights= path: the same file through keras_vit.load_weights.
    manual = keras_vit.ViT(None, patch_size=8, hidden_dim=64, num_layers=2, num_heads=4,
                           mlp_dim=128, input_shape=(32, 32, 3), classes=3,
                           classifier_activation=None, weights=None)
    keras_vit.load_weights(manual, hub.checkpoint_file(handles["HF_CLS"]))
    arrays["hf_manual"] = logits(manual, 32)

    model = run("base", hub.from_pretrained, handles["HF_BASE"])
    arrays["base_tokens"] = logits(model, 32)
    model = run("base_pooled", hub.from_pretrained, handles["HF_BASE"], classes=5,
                representation_size=64)
    pre_logits = keras.Model(model.inputs, model.get_layer("pre_logits").output)
    arrays["base_pooled"] = logits(pre_logits, 32)
    run("base_top_without_classes", hub.from_pretrained, handles["HF_BASE"], include_top=True)

    results["paths"] = {
        key: str(run(f"path:{key}", hub.checkpoint_file, handle))
        for key, handle in (("main", handles["TIMM"]),
                            ("at_main", handles["TIMM"] + "@main"),
                            ("at_commit", handles["TIMM"] + "@" + handles["COMMIT"]))
    }
    for key in ("MISSING", "PICKLE_ONLY", "TIMM_CLIP", "TIMM_GAP", "HF_GRAY"):
        run(f"from_pretrained:{key}", hub.from_pretrained, handles[key])
    run("checkpoint_file:PICKLE_ONLY", hub.checkpoint_file, handles["PICKLE_ONLY"])
    run("checkpoint_file:MISSING", hub.checkpoint_file, handles["MISSING"])
    run("checkpoint_file:uncached_revision", hub.checkpoint_file, handles["TIMM"] + "@v2")

    # weights="hf://..." on a builder: the resolution and class names come
    # from the repository.
    model = run("builder", keras_vit.ViTTi16, weights=handles["TIMM"], classifier_activation=None)
    arrays["builder32"] = logits(model, 32)
    results["builder_model"] = {"input_shape": list(model.input_shape),
                                "class_names": list(model.class_names or [])}
    # keras-vit predict --weights hf://... on an image file, against the
    # same model's own prediction.
    import contextlib, io
    from PIL import Image
    from keras_vit import cli, images
    photo = f"{out}/photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["predict", "--weights", handles["HF_CLS"], "--top-k", "2", photo])
    model = hub.from_pretrained(handles["HF_CLS"], include_preprocessing=True)
    expected = model.predict(images.load_images([photo], (32, 32)), verbose=0)[0]
    top = np.argsort(expected)[::-1][:2]
    results["cli_predict"] = {
        "code": code, "printed": printed.getvalue().strip(),
        "expected": f"{photo}: " + ", ".join(f"{model.class_names[i]} {expected[i]:.4f}" for i in top),
    }

    np.savez(f"{out}/arrays.npz", **arrays)
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f)
    """
)


def _add_repo(cache, handle, files):
    """One repository of a huggingface_hub cache, as `hf_hub_download` left it.

    Offline, huggingface_hub reads `refs/<revision>` verbatim (no newline) as
    the commit hash and returns `snapshots/<hash>/<file>` if it exists; real
    files stand in for its symlinks into `blobs/`.
    """
    repo_id, _ = hub.parse_handle(handle)
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        if isinstance(content, dict):
            content = json.dumps(content)
        if isinstance(content, str):
            content = content.encode()
        (snapshot / name).write_bytes(content)
    return snapshot


def _nchw(images):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _save_state_dict(state, path):
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path.read_bytes()


def _save_pretrained(model, folder):
    """The files transformers' `save_pretrained` writes, as a Hub repository has them."""
    model.save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


def _timm_repo(cache, tmp, images):
    model = randomize_torch(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32), seed=0
    )
    synsets = pathlib.Path(timm.data.__file__).parent / "_info" / "imagenet_synsets.txt"
    config = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 1000,
        "num_features": 192,
        "global_pool": "token",
        # input_size, not the name's 224, is the resolution of these weights.
        "pretrained_cfg": {"tag": "test", "input_size": [3, 32, 32], "fixed_input_size": True,
                           "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 1000},
        "label_names": synsets.read_text().split(),
    }
    _add_repo(cache, TIMM, {"config.json": config,
                            "model.safetensors": _save_state_dict(model.state_dict(),
                                                                  tmp / "timm.safetensors")})
    # timm at another resolution: its own state-dict filter resamples the
    # position embedding (bicubic, antialiased).
    bigger = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48).eval()
    bigger.load_state_dict(timm_vit.checkpoint_filter_fn(model.state_dict(), bigger))
    with torch.no_grad():
        return {"timm32": model(_nchw(images[32])).numpy(),
                "timm48": bigger(_nchw(images[48])).numpy()}


def _transformers_repos(cache, tmp, images):
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    refs = {}
    classifier = randomize_torch(ViTForImageClassification(ViTConfig(
        **HF_SIZES, id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2},
    )), seed=1)
    files = _save_pretrained(classifier, tmp / "cls")
    _add_repo(cache, HF_CLS, files)
    with torch.no_grad():
        refs["hf32"] = classifier(_nchw(images[32])).logits.numpy()
        refs["hf48"] = classifier(_nchw(images[48]), interpolate_pos_encoding=True).logits.numpy()

    config = json.loads(files["config.json"])
    _add_repo(cache, PICKLE_ONLY, {"config.json": config, "pytorch_model.bin": b"not read"})
    _add_repo(cache, HF_GRAY, {"config.json": dict(config, num_channels=1)})
    _add_repo(cache, HF_PLACEHOLDER, {"config.json": dict(
        config, id2label={"0": "LABEL_0", "1": "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1},
    )})

    # An in21k-style repository: ViTModel, no classifier, with its pooler.
    base = randomize_torch(ViTModel(ViTConfig(**HF_SIZES)), seed=2)
    files = _save_pretrained(base, tmp / "base")
    _add_repo(cache, HF_BASE, files)
    with torch.no_grad():
        output = base(_nchw(images[32]))
        refs["base_tokens"] = output.last_hidden_state.numpy()
        refs["base_pooled"] = output.pooler_output.numpy()
    # The same config, and a checkpoint without the pooler
    # (add_pooling_layer=False, which config.json does not record).
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("pooler.")}
    _add_repo(cache, HF_NO_POOLER, {
        "config.json": files["config.json"],
        "model.safetensors": _save_state_dict(state, tmp / "no_pooler.safetensors"),
    })
    return refs


def _config_only_repos(cache):
    timm_config = {"num_classes": 1000, "global_pool": "token",
                   "pretrained_cfg": {"input_size": [3, 224, 224]}}
    _add_repo(cache, TIMM_CLIP, {
        "config.json": dict(timm_config, architecture="vit_base_patch16_clip_224")})
    _add_repo(cache, TIMM_GAP, {
        "config.json": dict(timm_config, architecture="vit_base_patch16_224", global_pool="avg")})
    # No input_size: the resolution is the name's; no head; ImageNet mean/std.
    _add_repo(cache, TIMM_MEAN_STD, {"config.json": {
        "architecture": "vit_small_patch32_384", "num_classes": 0, "global_pool": "token",
        "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Builds the cache, runs the subprocess; returns (results, outputs, references)."""
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hf_home" / "hub"
    rng = np.random.default_rng(0)
    images = {size: keras_vit.preprocess_input(rng.uniform(0, 255, (2, size, size, 3)))
              for size in (32, 48)}
    for size, value in images.items():
        np.save(tmp / f"images{size}.npy", value)
    refs = _timm_repo(cache, tmp, images)
    refs.update(_transformers_repos(cache, tmp, images))
    _config_only_repos(cache)

    handles = {name: value for name, value in globals().items()
               if isinstance(value, str) and value.startswith("hf://")}
    handles["COMMIT"] = COMMIT
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("HF_TOKEN", None)
    script = tmp / "load.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp), json.dumps(handles)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp / "results.json").read_text())
    with np.load(tmp / "arrays.npz") as outputs:
        outputs = dict(outputs)
    return results, outputs, refs, cache


def _assert_close(actual, expected):
    assert actual.shape == expected.shape
    difference = float(np.max(np.abs(actual - expected)))
    assert difference <= ATOL, f"max abs difference {difference:.3g} > {ATOL}"
    # Random weights must give outputs far from each other, or the check is void.
    assert float(np.std(expected)) > 0.1


def _error(results, key):
    error = results[key]["error"]
    assert error is not None, f"{key} raised nothing"
    assert error["checkpoint_error"], error
    return error["message"]


# ---------------------------------------------------------------------------
# Handles (in-process: nothing is downloaded)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("handle, expected", [
    ("hf://google/vit-base-patch16-224", ("google/vit-base-patch16-224", None)),
    ("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k@main",
     ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "main")),
    (f"hf://a/b@{COMMIT}", ("a/b", COMMIT)),
    ("hf://a/b@refs/pr/1", ("a/b", "refs/pr/1")),
])
def test_parse_handle(handle, expected):
    assert hub.is_handle(handle)
    assert hub.parse_handle(handle) == expected


@pytest.mark.parametrize("handle", [
    "hf://", "hf://a", "hf://a/b/c", "hf:/a/b", "hf://a/", "hf:///b", "hf://a/b@",
    "hf://a/b c", "hf://a--x/b", "hf://a/.b", "hf://a/b@x@y", "HF://a/b",
])
def test_malformed_handles_are_refused_by_name(handle):
    with pytest.raises(ValueError, match="Malformed Hugging Face Hub handle") as info:
        hub.parse_handle(handle)
    assert repr(handle) in str(info.value)
    # The same check guards every entry point, before any download.
    with pytest.raises(ValueError, match="Malformed"):
        hub.checkpoint_file(handle)


def test_is_handle_and_types():
    assert not hub.is_handle("imagenet")
    assert not hub.is_handle(pathlib.Path("hf://a/b"))
    assert not hub.is_handle(None)
    with pytest.raises(TypeError, match="received 3 of type int"):
        hub.parse_handle(3)


def test_from_pretrained_refuses_what_the_repository_decides():
    with pytest.raises(TypeError, match=r"patch_size=8.*weights='x'"):
        hub.from_pretrained(TIMM, weights="x", patch_size=8)


def test_docstring_examples():
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in doctest.DocTestFinder().find(hub, globs={"keras_vit": keras_vit})
             if t.examples]
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).attempted >= 4
    assert runner.summarize(verbose=False).failed == 0


def _hub_error(kind, status):
    """An error of huggingface_hub's as its HTTP layer raises it."""
    import httpx2
    from huggingface_hub import errors

    if kind is errors.LocalEntryNotFoundError:
        return kind("An error happened while trying to locate the file on the Hub.")
    request = httpx2.Request("HEAD", "https://huggingface.co/org/name/resolve/main/x")
    return kind(f"{status} error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("kind, status, handle, expected", [
    ("GatedRepoError", 403, "hf://org/name", ["is a gated repository", "HF_TOKEN",
                                              "/org/name"]),
    ("RepositoryNotFoundError", 404, "hf://org/name", ["no repository 'org/name'", "private"]),
    ("RevisionNotFoundError", 404, "hf://org/name@v9", ["has no revision 'v9'"]),
    ("RemoteEntryNotFoundError", 404, "hf://org/name",
     ["has no model.safetensors on the Hub", "it has a pytorch_model.bin", "only safetensors"]),
    ("LocalEntryNotFoundError", None, "hf://org/name",
     ["Cannot download model.safetensors", "HF_ENDPOINT",
      "`hf download org/name model.safetensors config.json`"]),
    ("HfHubHTTPError", 500, "hf://org/name", ["Cannot get model.safetensors", "500 error"]),
])
def test_hub_errors_become_checkpoint_errors(monkeypatch, kind, status, handle, expected):
    """Online failures, with huggingface_hub's download replaced: no network."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    error = _hub_error(getattr(errors, kind), status)

    def download(repo_id, filename, revision=None):
        assert (repo_id, revision) == hub.parse_handle(handle)
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda *a, **k: True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(keras_vit.CheckpointError) as info:
        hub.checkpoint_file(handle)
    assert handle in str(info.value)
    for part in expected:
        assert part in str(info.value)
    assert info.value.__cause__ is error


def test_http_client_errors_are_reported_and_bugs_are_not_disguised(monkeypatch):
    import httpx2
    import huggingface_hub

    raised = []

    def download(repo_id, filename, revision=None):
        raise raised[-1]

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    # huggingface_hub lets its HTTP client's proxy errors through.
    raised.append(httpx2.ProxyError("proxy refused"))
    with pytest.raises(keras_vit.CheckpointError, match=r"hf://org/name: ProxyError: proxy "):
        hub.checkpoint_file("hf://org/name")
    raised.append(KeyError("a bug"))
    with pytest.raises(KeyError, match="a bug"):
        hub.checkpoint_file("hf://org/name")


# ---------------------------------------------------------------------------
# Loading, against the reference implementations
# ---------------------------------------------------------------------------


def test_timm_repository_matches_timm(loaded):
    results, outputs, refs, _ = loaded
    assert results["timm"]["error"] is None
    model = results["timm_model"]
    assert model["name"] == "vit_tiny_patch16_224_test"
    assert model["input_shape"] == [None, 32, 32, 3]
    _assert_close(outputs["timm32"], refs["timm32"])


def test_builder_weights_handle_and_cli_predict(loaded):
    results, outputs, refs, _ = loaded
    assert results["builder"]["error"] is None
    assert results["builder_model"]["input_shape"] == [None, 32, 32, 3]  # the repository's resolution
    assert results["builder_model"]["class_names"][281] == "tabby"
    _assert_close(outputs["builder32"], refs["timm32"])
    cli_predict = results["cli_predict"]
    assert cli_predict["code"] == 0
    assert cli_predict["printed"].splitlines()[-1] == cli_predict["expected"]
    assert cli_predict["expected"].split(": ")[1].split()[0] in ("cat", "dog", "bird")


def test_timm_repository_at_another_resolution_matches_timm(loaded):
    results, outputs, refs, _ = loaded
    assert results["timm48"]["error"] is None
    _assert_close(outputs["timm48"], refs["timm48"])


def test_timm_wordnet_labels_become_imagenet_names(loaded):
    results, _, _, _ = loaded
    names = results["timm_model"]["class_names"]
    assert len(names) == 1000
    try:
        from keras_vit import imagenet
    except ImportError:
        pytest.skip("keras_vit.imagenet is absent: WordNet ids are kept as they are")
    assert names[281] == "tabby"
    assert names == list(imagenet.class_names(1000))


def test_transformers_classifier_matches_transformers(loaded):
    results, outputs, refs, _ = loaded
    assert results["hf_cls"]["error"] is None
    assert results["hf_model"] == {"name": "vit_hf_cls", "class_names": ["cat", "dog", "bird"]}
    _assert_close(outputs["hf32"], refs["hf32"])
    # The weights= path gives the same model.
    np.testing.assert_array_equal(outputs["hf_manual"], outputs["hf32"])


def test_transformers_classifier_at_another_resolution_matches_interpolate_pos_encoding(loaded):
    results, outputs, refs, _ = loaded
    assert results["hf48"]["error"] is None
    _assert_close(outputs["hf48"], refs["hf48"])


def test_another_class_count_gets_a_fresh_head_and_no_names(loaded):
    results, _, _, _ = loaded
    assert results["hf_new_head"]["error"] is None
    assert any("classes=5" in w and "freshly initialised" in w
               for w in results["hf_new_head"]["warnings"])
    assert results["hf_new_head_model"] == {"output_shape": [None, 5], "class_names": None}


def test_vit_model_repository_gives_features_and_its_pooler(loaded):
    results, outputs, refs, _ = loaded
    # Default: no head, every token's features, as ViTModel's last_hidden_state.
    assert results["base"]["error"] is None
    assert any("pre-logits" in w for w in results["base"]["warnings"])
    _assert_close(outputs["base_tokens"], refs["base_tokens"])
    # With a pre-logits layer: ViTModel's pooler_output.
    assert results["base_pooled"]["error"] is None
    _assert_close(outputs["base_pooled"], refs["base_pooled"])
    error = results["base_top_without_classes"]["error"]
    assert error["type"] == "ValueError" and HF_BASE in error["message"]
    assert "classes=N" in error["message"]


# ---------------------------------------------------------------------------
# read_config
# ---------------------------------------------------------------------------


def test_read_config_timm(loaded):
    results, _, _, _ = loaded
    config = results["config:TIMM"]["value"]
    names = config.pop("class_names")
    assert config == {"patch_size": 16, "hidden_dim": 192, "num_layers": 12, "num_heads": 3,
                      "mlp_dim": 768, "image_size": 32, "classes": 1000,
                      "representation_size": None, "library": "timm"}
    assert len(names) == 1000
    assert results["read:TIMM"]["warnings"] == []


def test_read_config_timm_name_resolution_and_normalisation_warning(loaded):
    results, _, _, _ = loaded
    assert results["config:TIMM_MEAN_STD"]["value"] == {
        "patch_size": 32, "hidden_dim": 384, "num_layers": 12, "num_heads": 6, "mlp_dim": 1536,
        "image_size": 384, "classes": 0, "class_names": None, "representation_size": None,
        "library": "timm",
    }
    (warning,) = results["read:TIMM_MEAN_STD"]["warnings"]
    assert "mean=[0.485, 0.456, 0.406]" in warning and "[-1, 1]" in warning


def test_read_config_transformers(loaded):
    results, _, _, _ = loaded
    common = {"patch_size": 8, "hidden_dim": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 128,
              "image_size": 32, "library": "transformers"}
    assert results["config:HF_CLS"]["value"] == dict(
        common, classes=3, class_names=["cat", "dog", "bird"], representation_size=None)
    assert results["config:HF_BASE"]["value"] == dict(
        common, classes=0, class_names=None, representation_size=64)
    # Same config.json, no pooler in the checkpoint.
    assert results["config:HF_NO_POOLER"]["value"] == dict(
        common, classes=0, class_names=None, representation_size=None)
    # transformers' placeholder names are no names.
    assert results["config:HF_PLACEHOLDER"]["value"] == dict(
        common, classes=2, class_names=None, representation_size=None)


# ---------------------------------------------------------------------------
# The cache, and errors
# ---------------------------------------------------------------------------


def test_checkpoint_file_is_the_snapshot_file(loaded):
    results, _, _, cache = loaded
    expected = (cache / "models--timm--vit_tiny_patch16_224.test" / "snapshots" / COMMIT
                / "model.safetensors").resolve()
    for key in ("main", "at_main", "at_commit"):
        assert results[f"path:{key}"]["error"] is None
        assert pathlib.Path(results["paths"][key]).resolve() == expected


def test_offline_and_not_cached(loaded):
    results, _, _, cache = loaded
    for key in ("from_pretrained:MISSING", "checkpoint_file:MISSING"):
        message = _error(results, key)
        assert MISSING in message and "offline" in message and "HF_HUB_OFFLINE=0" in message
        assert "hf download nobody/not-cached model.safetensors config.json" in message
        assert str(cache) in message
    message = _error(results, "checkpoint_file:uncached_revision")
    assert TIMM + "@v2" in message and "--revision v2" in message


def test_pickle_only_repository_is_refused(loaded):
    results, _, _, _ = loaded
    for key in ("from_pretrained:PICKLE_ONLY", "checkpoint_file:PICKLE_ONLY"):
        message = _error(results, key)
        assert PICKLE_ONLY in message and "pytorch_model.bin" in message
        assert "only safetensors" in message


@pytest.mark.parametrize("key, named", [
    ("TIMM_CLIP", "'vit_base_patch16_clip_224'"),
    ("TIMM_GAP", "global_pool='avg'"),
    ("HF_GRAY", "num_channels=1"),
])
def test_unrepresentable_configs_are_refused_by_value(loaded, key, named):
    results, _, _, _ = loaded
    message = _error(results, f"from_pretrained:{key}")
    assert globals()[key] in message and named in message
