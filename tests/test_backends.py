"""keras_vit on Keras' JAX and PyTorch backends, without TensorFlow.

Each backend runs in its own process (tests/_backend_worker.py), with
`import tensorflow` made to fail as on a machine without it. That process
loads a `.keras` file written here under TensorFlow and must give the same
outputs, loads a random timm checkpoint into the builder and must match
timm's logits within the parity tolerance, fine-tunes with the recipe on
NumPy arrays, draws attention maps, runs at bfloat16 and int8, and writes a
fine-tuned `.keras` file that must load here with its outputs.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vit
from tests.conftest import TINY_SHAPE, TINY_VARIANT, randomize, randomize_torch

WORKER = pathlib.Path(__file__).with_name("_backend_worker.py")
ROOT = WORKER.parent.parent


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """What TensorFlow writes for the workers (see the worker's docstring)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(0)
    model = randomize(keras_vit.ViT(TINY_VARIANT, input_shape=TINY_SHAPE, classes=5))
    x = np.random.default_rng(0).uniform(0, 255, (4,) + TINY_SHAPE).astype("float32")
    model.save(directory / "model.keras")
    np.save(directory / "x.npy", x)
    np.save(directory / "expected.npy", model.predict(x, verbose=0))

    reference = randomize_torch(timm.create_model("vit_tiny_patch16_224", pretrained=False), seed=0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(directory / "timm.safetensors"))
    images = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    with torch.no_grad():
        logits = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert logits.std() > 0.1  # far-apart logits, or the parity check is void
    np.save(directory / "images.npy", images)
    np.save(directory / "timm_logits.npy", logits)

    # The tf.data pipeline's first digits validation batch, and a PNG decoded
    # and resized by TensorFlow, for the worker's NumPy / Pillow paths.
    (validation, _) = keras_vit.data.load("digits", image_size=32, batch_size=64, splits=("validation",))
    digits, onehot = next(iter(validation))
    np.save(directory / "digits_images.npy", digits.numpy())
    np.save(directory / "digits_labels.npy", onehot.numpy())
    from PIL import Image

    photo = np.random.default_rng(2).integers(0, 256, (32, 40, 3)).astype("uint8")
    Image.fromarray(photo).save(directory / "photo.png")
    np.save(directory / "photo_pixels.npy", keras_vit.images.load_images([directory / "photo.png"], (20, 28)))
    return directory


def _run_worker(backend, directory):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run([sys.executable, str(WORKER), str(directory)], capture_output=True, text=True,
                               env=env, timeout=900)
    line = next((l for l in completed.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert completed.returncode == 0 and line, completed.stderr[-4000:]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_core_runs_on_jax_and_torch_without_tensorflow(backend, written, tmp_path):
    pytest.importorskip(backend)
    directory = tmp_path / backend
    directory.mkdir()
    for path in written.iterdir():
        (directory / path.name).symlink_to(path)
    result = _run_worker(backend, directory)
    assert result["backend"] == backend
    # The TensorFlow-written .keras file gives TensorFlow's outputs.
    assert result["keras_file_diff"] <= 1e-5, result
    # timm's checkpoint gives timm's logits, as on TensorFlow (test_parity).
    assert result["timm_diff"] <= 1e-4, result
    # Fine-tuning trained every weight and the loss is a number.
    assert all(np.isfinite(result["losses"])) and result["weights_changed"] == result["weights"], result
    assert result["attention_shape"] == [2, 2, 17, 17] and abs(result["attention_row_sum"] - 1) < 1e-5
    assert result["rollout_shape"] == [2, 4, 4] and result["overlay_shape"] == [16, 16, 3]
    assert 0 < result["bfloat16_diff"] < 0.05 and 0 < result["int8_diff"] < 0.05, result
    assert result["model_still_float32"] == 0.0
    assert "keras_vit.export needs TensorFlow" in result["export_error"]
    assert result["strategy"] == "KerasDistribution(None)"
    assert result["loaded_jit_compile"] == (backend == "jax")
    assert result["mirrored_error"].startswith(
        f"strategy='mirrored' is a tf.distribute strategy, which needs Keras' TensorFlow backend; this is the "
        f"{backend} backend: use ")
    # Data without TensorFlow: the tf.data pipeline's batches, augmented
    # there (every pixel in range, mixed labels summing to 1, reshuffled
    # each epoch); Pillow decodes as TensorFlow; folders say what they need.
    assert result["data_class"] == "ArrayBatches" and result["data_labels_equal"], result
    assert result["data_diff"] <= 1e-3, result
    assert result["data_batches"] == [3, 52], result  # 180 validation images
    shape, low, high, label_sum_error, train_batches, reshuffled = result["augmented"]
    assert shape == [32, 16, 16, 3] and 0 <= low and high <= 255 and label_sum_error < 1e-5, result
    assert train_batches == 1258 // 32 and reshuffled, result
    assert result["pillow_diff"] <= 1e-3, result
    assert result["folder_error"].startswith(f"data source {str(directory)!r}: folders and TFDS data sets are "
                                             "read by tf.data, which needs TensorFlow"), result
    # The model fine-tuned there loads here with its outputs.
    tuned = keras_vit.load_model(directory / "trained.keras")
    x = np.load(directory / "x.npy")
    np.testing.assert_allclose(tuned.predict(x, verbose=0), np.load(directory / "trained.npy"), atol=1e-5)


@pytest.mark.parametrize("environment, message", [
    ({"KERAS_BACKEND": "numpy"}, "keras_vit runs on the Keras backends jax, tensorflow, torch; "
                                 "received KERAS_BACKEND='numpy'."),
    ({"KERAS_BACKEND": "tensorflow", "BLOCK": "tensorflow"},
     "keras_vit on the tensorflow backend needs tensorflow: pip install 'keras-vision-transformer[cpu]'"),
    ({"KERAS_BACKEND": "jax", "BLOCK": "jax"}, "keras_vit on the jax backend needs jax: pip install 'jax[cpu]'"),
])
def test_a_backend_without_its_framework_fails_in_one_line(environment, message):
    block = environment.get("BLOCK")
    code = (f"import sys; sys.modules[{block!r}] = None\n" if block else "") + "import keras_vit"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **environment}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith(f"ImportError: {message}")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_cli_trains_evaluates_predicts_and_explains_on_jax_and_torch(backend, tmp_path):
    """`keras-vit` under KERAS_BACKEND=jax without TensorFlow (two virtual
    devices, Keras' DataParallel; the data as ArrayBatches, images decoded
    by Pillow) and under torch with TensorFlow installed (tf.data); export
    says what it needs and writes nothing."""
    pytest.importorskip(backend)
    from PIL import Image

    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    strategy = []
    if backend == "jax":
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
        strategy = ["--strategy", "data_parallel"]
    run = tmp_path / "run"
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype("uint8")).save(image)

    # One process runs the five commands through keras_vit.cli.main, as
    # the `keras-vit` entry point does (a process per command would add
    # half a minute of start-up per backend to the suite).
    commands = [
        ["train", "--epochs", "1", "--num-layers", "1", "--hidden-dim", "32", "--num-heads", "2", "--mlp-dim", "64",
         "--output", str(run), "--verbose", "0", *strategy],
        ["evaluate", str(run)],
        ["predict", str(run), str(image), "--top-k", "2"],
        ["explain", str(run), str(image), "--output", str(tmp_path / "attention.png")],
        ["export", str(run), "--output", str(tmp_path / "export")],
    ]
    block = "from tests import _no_tensorflow\n_no_tensorflow.block()\n" if backend == "jax" else ""
    driver = (block + "import json, sys\nfrom keras_vit import cli\n"
              "codes = [cli.main(arguments) for arguments in json.loads(sys.argv[1])]\n"
              "print('CODES ' + json.dumps(codes))")
    completed = subprocess.run([sys.executable, "-c", driver, json.dumps(commands)], capture_output=True,
                               text=True, env=env, timeout=900, cwd=tmp_path)
    line = next((l for l in completed.stdout.splitlines() if l.startswith("CODES ")), None)
    assert line, completed.stderr[-4000:]
    # train, evaluate, predict and explain succeed; export refuses.
    assert json.loads(line[len("CODES "):]) == [0, 0, 0, 0, 2], completed.stderr[-4000:]
    results = json.loads((run / "results.json").read_text())
    assert results["backend"] == backend and results["num_replicas"] == (2 if backend == "jax" else 1)
    # The test split (359 images) ends in a batch that does not split over
    # 2 devices: padded, every image counts once.
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["num_examples"] == 359 and evaluation["accuracy"] == pytest.approx(
        results["test_accuracy"], abs=1e-6)
    assert any(l.startswith(f"{image}: ") for l in completed.stdout.splitlines())
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert completed.stderr.strip().splitlines()[-1] == ((
        "keras-vit export: error: keras_vit.export needs TensorFlow, which is not installed: pip install "
        "'keras-vision-transformer[cpu]' (CPU) or 'keras-vision-transformer[gpu]' (NVIDIA GPU) (it works beside "
        "JAX or PyTorch as Keras' backend).") if backend == "jax" else (
        f"keras-vit export: error: a SavedModel export needs Keras' TensorFlow backend; this is the {backend} "
        "backend: export with KERAS_BACKEND=tensorflow (a .keras file saved on any backend loads there)."))
    # Without TensorFlow, TensorBoard's logs are the one thing a run leaves out.
    assert (run / "logs").is_dir() == (backend == "torch")
    assert not (tmp_path / "export").exists()
