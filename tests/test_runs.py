"""Tests of training runs and the keras-vit command line: files written,
evaluate/predict consistency, resume after SIGKILL, NaN handling, errors."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from keras_vit import cli, data, inference, runs
from keras_vit.runs import callbacks as run_callbacks
from keras_vit import images as vit_images

PYTHON = sys.executable
# A small, quick configuration of the digits recipe.
QUICK = ["--hidden-dim", "32", "--num-heads", "2", "--mlp-dim", "64", "--num-layers", "2",
         "--batch-size", "64", "--learning-rate", "5e-3", "--warmup-epochs", "0.5", "--verbose", "2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "digits"
    assert cli.main(["train", "--epochs", "10", "--output", str(output)] + QUICK) == 0
    return output


def _log(output):
    with open(output / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_the_run(trained_run, capsys):
    names = sorted(p.name for p in trained_run.iterdir())
    assert names == ["best.keras", "config.json", "curves.png", "last.keras", "log.csv", "logs", "results.json"]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["class_names"] == [str(i) for i in range(10)]
    assert config["image_size"] == 32 and config["patch_size"] == 8 and config["hidden_dim"] == 32
    assert config["random_erasing"] == 0.0  # the digits recipe erases nothing
    assert [int(row["epoch"]) for row in _log(trained_run)] == list(range(10))
    results = json.loads((trained_run / "results.json").read_text())
    assert results["epochs"] == 10 and results["resumed"] is False
    assert results["test_accuracy"] > 0.5  # 10 short epochs; chance is 0.1
    assert results["best_checkpoint_test_accuracy"] > 0.5
    assert (trained_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = keras.saving.load_model(trained_run / "best.keras")
    assert model.get_layer("preprocessing") is not None  # takes [0, 255] pixels


def test_evaluate_agrees_with_training_results(trained_run, capsys):
    assert cli.main(["evaluate", str(trained_run)]) == 0
    out = capsys.readouterr().out
    evaluation = json.loads((trained_run / "evaluation.json").read_text())
    results = json.loads((trained_run / "results.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert evaluation["loss"] == pytest.approx(results["test_loss"], rel=1e-4)  # model.evaluate's loss
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 359
    assert np.trace(matrix) / matrix.sum() == pytest.approx(evaluation["accuracy"])
    assert f"test accuracy {evaluation['accuracy']:.4f}" in out
    assert (trained_run / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_on_image_files(trained_run, tmp_path, capsys, monkeypatch):
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(3):
        pixels = np.round(digits.images[i] * 255 / 16).astype("uint8")
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(pixels, "L").save(path)
        paths.append(str(path))
    assert cli.main(["predict", str(trained_run)] + paths + ["--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    ranked = runs.predict(trained_run, paths, top_k=3)
    # The 8x8 files resized to the run's input size, as predict reads them.
    size = json.loads((trained_run / "config.json").read_text())["image_size"]
    pixels = vit_images.load_images(paths, size)
    # The run's final model by default.
    expected = keras.saving.load_model(trained_run / "last.keras").predict(pixels, verbose=0)
    for line, path, row, probs in zip(lines, paths, ranked, expected):
        assert line.startswith(f"{path}: ")
        assert [name for name, _ in row] == [str(i) for i in np.argsort(probs)[::-1][:3]]
        assert row[0][1] == pytest.approx(float(probs.max()), abs=1e-5)
        assert row[0][1] >= row[1][1] >= row[2][1]
        assert line == f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in row)
    best = keras.saving.load_model(trained_run / "best.keras").predict(pixels, verbose=0)
    for row, probs in zip(runs.predict(trained_run, paths, top_k=1, which="best"), best):
        assert row[0][1] == pytest.approx(float(probs.max()), abs=1e-5)
    # In 16 bits: close to float32, not bit-equal (so it did compute in bfloat16).
    fast = runs.predict(trained_run, paths, top_k=10, precision="bfloat16")
    for row, probs in zip(fast, expected):
        by_name = dict(row)
        fast_probs = np.array([by_name[str(i)] for i in range(10)])
        assert not np.array_equal(fast_probs, probs)
        np.testing.assert_allclose(fast_probs, probs, atol=0.03)
    # On a CPU without fast bfloat16 the CLI still does as asked, with a warning.
    for fast_cpu in (False, True):
        monkeypatch.setattr(inference, "bfloat16_cpu", lambda fast_cpu=fast_cpu: fast_cpu)
        assert cli.main(["predict", str(trained_run)] + paths + ["--mixed-precision"]) == 0
        captured = capsys.readouterr()
        assert len(captured.out.strip().splitlines()) == 3
        assert ("mixed_bfloat16 will likely run slower than float32" in captured.err) is not fast_cpu


def test_bfloat16_and_int8_agree_with_float32_on_the_digits_test_split(trained_run, capsys):
    model = runs.load_run_model(trained_run)
    (ds_test, _) = data.load("digits", image_size=model.input_shape[1], batch_size=128, splits=("test",))
    images = np.concatenate([x.numpy() for x, _ in ds_test])
    labels = np.concatenate([np.argmax(y.numpy(), axis=-1) for _, y in ds_test])
    reference = model.predict(images, verbose=0)
    top1 = np.argmax(reference, axis=-1)
    print(f"float32 accuracy {np.mean(top1 == labels):.4f}", file=sys.stderr)
    # This quick model (about 80% accurate) has near-ties that 16 or 8 bits may flip: CI
    # on another CPU saw 4 of 359 flipped in bfloat16, each a float32 top-1 margin under
    # 0.03. So the test bounds how far each probability moves (a flip needs a margin
    # under twice that) and keeps a floor on agreement; the issue's >= 0.99 on models
    # trained by the recipes is measured by benchmarks/bf16_agreement.py (BENCHMARKS.md).
    for precision, minimum in (("bfloat16", 0.97), ("int8", 0.97)):
        copy = inference.with_precision(model, precision)
        assert inference.precision_of(copy) == precision and inference.precision_of(model) == "float32"
        probabilities = copy.predict(images, verbose=0)
        assert probabilities.dtype == np.float32
        assert not np.array_equal(probabilities, reference)  # it did compute at that precision
        agreement = np.mean(np.argmax(probabilities, axis=-1) == top1)
        print(f"{precision}: top-1 agreement {agreement:.4f}, accuracy "
              f"{np.mean(np.argmax(probabilities, axis=-1) == labels):.4f}, largest probability change "
              f"{np.abs(probabilities - reference).max():.4f}", file=sys.stderr)
        assert agreement >= minimum, (precision, agreement)
        moved = np.abs(probabilities - reference)
        assert moved.max() <= 0.06 and moved.mean() <= 0.005, (precision, moved.max(), moved.mean())
    # The CLI's evaluate at int8 says so, and its accuracy is the copy's.
    assert cli.main(["evaluate", str(trained_run), "--precision", "int8"]) == 0
    assert "(int8)" in capsys.readouterr().out
    assert json.loads((trained_run / "evaluation.json").read_text())["precision"] == "int8"


def test_export_at_int8_records_its_precision_and_serves_with_tensorflow_alone(trained_run, tmp_path):
    import tensorflow as tf

    from keras_vit import export

    path = runs.export_run(trained_run, tmp_path / "vit", precision="int8")
    assert export.read_metadata(path)["precision"] == "int8"
    assert export.read_metadata(runs.export_run(trained_run, tmp_path / "vit"))["precision"] == "float32"
    quantized = inference.with_precision(runs.load_run_model(trained_run), "int8")
    size = quantized.input_shape[1]
    images = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    served = tf.saved_model.load(path).signatures["predict_images"](images=tf.constant(images))
    # The export holds Keras' int8 graph (oneDNN's int8 kernel is for the
    # process only): the values of the model's Keras int8 layers.
    keras_int8 = tf.function(lambda x: quantized(x, training=False))(tf.constant(images)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), keras_int8, atol=1e-5)
    # predict runs oneDNN's int8 products, with LayerNorm and GELU fused
    # between them within float32 rounding of Keras' ops; a value that
    # rounding moves across an int8 step moves the output a little (1.3e-3
    # in one CI run): close, not equal.
    predicted = quantized.predict(images, verbose=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), predicted, atol=0.01)
    # The command line, compiled by XLA on request (XLA's fusions round
    # otherwise too).
    assert cli.main(["export", str(trained_run), "--output", str(tmp_path / "cli"), "--precision", "int8",
                     "--jit-compile"]) == 0
    metadata = export.read_metadata(tmp_path / "cli" / "1")
    assert (metadata["precision"], metadata["jit_compile"]) == ("int8", True)
    served = tf.saved_model.load(str(tmp_path / "cli" / "1")).signatures["predict_images"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), keras_int8, atol=0.01)


def test_cli_offers_exactly_the_librarys_precisions():
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    found = {name: next(a.choices for a in parser._actions if a.dest == "precision")
             for name, parser in sub.choices.items() if any(a.dest == "precision" for a in parser._actions)}
    assert sorted(found) == ["evaluate", "export", "predict"]
    assert all(tuple(choices) == inference.PRECISIONS for choices in found.values()), found


def test_finished_run_is_never_overwritten_silently(trained_run, capsys):
    before = _log(trained_run)
    argv = ["train", "--epochs", "10", "--output", str(trained_run)] + QUICK
    assert cli.main(argv) == 2
    assert "already holds a finished run: pass --overwrite" in capsys.readouterr().err
    assert _log(trained_run) == before


def test_unfinished_run_with_other_settings_is_refused(trained_run):
    before = _log(trained_run)
    backup = trained_run / "backup"
    backup.mkdir()
    # A resumable state: metadata naming a weights file of its epoch.
    (backup / "training_metadata.json").write_text(
        '{"epoch": 2, "batch": 0, "weights": "epoch-2.weights.h5"}')
    (backup / "epoch-2.weights.h5").write_bytes(b"")
    assert runs.read_backup(backup)["epoch"] == 2
    config_path = trained_run / "config.json"
    written = config_path.read_text()
    # As an earlier keras_vit wrote it, without the settings added since:
    # those count as their defaults, so only the epochs differ.
    older = json.loads(written)
    assert older.pop("translate") == 0.0
    # The test-time augmentation changes only the final evaluation: a run
    # may resume with another.
    assert older["tta"] == "none"
    older["tta"] = "flip"
    config_path.write_text(json.dumps(older))
    try:
        with pytest.raises(runs.RunError, match=r"unfinished run with other settings \(epochs\)"):
            runs.train(runs.TrainConfig(output=str(trained_run), epochs=7, hidden_dim=32, num_heads=2,
                                        mlp_dim=64, num_layers=2, batch_size=64, learning_rate=5e-3,
                                        warmup_epochs=0.5, verbose=2))
    finally:
        shutil.rmtree(backup)
        config_path.write_text(written)
    assert _log(trained_run) == before


def _test_split(image_size):
    (ds_test, _) = data.load("digits", image_size=image_size, batch_size=512, splits=("test",))
    images, onehots = zip(*((x.numpy(), y.numpy()) for x, y in ds_test))
    return np.concatenate(images), np.concatenate(onehots).argmax(-1)


def test_flip_tta_run_reports_both_accuracies_and_evaluate_predict_export_follow_it(tmp_path, capsys):
    import tensorflow as tf

    run = tmp_path / "tta"
    assert cli.main(["train", "--epochs", "3", "--output", str(run), "--tta", "flip"] + QUICK) == 0
    out = capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["tta"] == "flip"
    # The same numbers by hand: the final model on the test split and on
    # its mirror images.
    model = runs.load_run_model(run)
    images, labels = _test_split(32)
    plain = model.predict(images, verbose=0)
    averaged = (plain + model.predict(images[:, :, ::-1], verbose=0)) / 2
    plain_accuracy = np.mean(plain.argmax(-1) == labels)
    tta_accuracy = np.mean(averaged.argmax(-1) == labels)
    assert results["test_accuracy"] == pytest.approx(tta_accuracy, abs=1e-6)
    assert results["test_accuracy_without_tta"] == pytest.approx(plain_accuracy, abs=1e-6)
    # The losses tell the two apart even where the accuracies happen to agree
    # (the run's loss: label smoothing 0.1).
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    onehots = np.eye(10, dtype="float32")[labels]
    plain_loss, tta_loss = float(loss(onehots, plain)), float(loss(onehots, averaged))
    assert abs(plain_loss - tta_loss) > 1e-3
    assert results["test_loss"] == pytest.approx(tta_loss, rel=1e-4)
    assert results["test_loss_without_tta"] == pytest.approx(plain_loss, rel=1e-4)
    assert f"test accuracy {tta_accuracy:.4f} with flip TTA ({plain_accuracy:.4f} without)" in out

    # evaluate and predict use the run's setting unless told otherwise.
    def confusion(probabilities):
        matrix = np.zeros((10, 10), dtype=int)
        np.add.at(matrix, (labels, probabilities.argmax(-1)), 1)
        return matrix.tolist()

    assert confusion(plain) != confusion(averaged)  # digits are not mirror-symmetric
    assert cli.main(["evaluate", str(run)]) == 0
    assert f"test accuracy {tta_accuracy:.4f} with flip TTA" in capsys.readouterr().out
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["tta"] == "flip" and evaluation["confusion_matrix"] == confusion(averaged)
    assert evaluation["loss"] == pytest.approx(tta_loss, rel=1e-4)
    assert runs.evaluate(run, tta="none")["confusion_matrix"] == confusion(plain)
    paths = []
    pixels = images[:2].astype("uint8")  # what the PNG files hold
    for i in range(2):
        paths.append(tmp_path / f"image{i}.png")
        Image.fromarray(pixels[i]).save(paths[i])
    pixels = pixels.astype("float32")
    plain_files = model.predict(pixels, verbose=0)
    averaged_files = (plain_files + model.predict(pixels[:, :, ::-1], verbose=0)) / 2
    assert np.abs(plain_files - averaged_files).max() > 1e-3
    for tta, expected in ((None, averaged_files), ("none", plain_files)):  # None: the run's own, flip
        ranked = runs.predict(run, paths, top_k=1, tta=tta)
        for i, [(name, probability)] in enumerate(ranked):
            assert name == str(expected[i].argmax())
            assert probability == pytest.approx(expected[i].max(), abs=1e-5)

    # The exported model averages the same way (one call on both images).
    version = runs.export_run(run, tmp_path / "export")
    exported = tf.saved_model.load(version).signatures["predict_images"]
    np.testing.assert_allclose(exported(images=tf.constant(images[:5]))["probabilities"].numpy(),
                               averaged[:5], atol=1e-5)
    version = runs.export_run(run, tmp_path / "export", tta="none")
    exported = tf.saved_model.load(version).signatures["predict_images"]
    np.testing.assert_allclose(exported(images=tf.constant(images[:5]))["probabilities"].numpy(),
                               plain[:5], atol=1e-5)

    # A run written before the setting existed had no test-time augmentation.
    config = json.loads((run / "config.json").read_text())
    del config["tta"]
    (run / "config.json").write_text(json.dumps(config))
    assert runs.evaluate(run)["confusion_matrix"] == confusion(plain)


def test_recipes_choose_their_test_time_augmentation():
    assert runs.TrainConfig(data="fashion_mnist").resolved().tta == "flip"  # clothes look the same mirrored
    assert runs.TrainConfig(data="digits").resolved().tta == "none"  # digits do not
    assert runs.TrainConfig(data="fashion_mnist", tta="none").resolved().tta == "none"
    with pytest.raises(ValueError, match="tta must be one of 'none', 'flip'; received tta='mirror'"):
        runs.TrainConfig(tta="mirror").resolved()



def test_cli_offers_exactly_the_librarys_tta_modes():
    # cli.py spells the choices out so that parsing imports no Keras; this
    # keeps them the same as keras_vit.inference.TTA_MODES.
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    found = {name: next(a.choices for a in parser._actions if a.dest == "tta")
             for name, parser in sub.choices.items() if any(a.dest == "tta" for a in parser._actions)}
    assert sorted(found) == ["evaluate", "export", "predict", "train"]
    assert all(tuple(choices) == inference.TTA_MODES for choices in found.values()), found

@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--data", "no_such_data"], r"Unknown data source 'no_such_data'"),
        (["train", "--data", "./missing/folder"], r"Data folder not found: ./missing/folder"),
        (["train", "--image-size", "9"], r"image_size=9 must be divisible by patch_size=8"),
        (["train", "--strategy", "gpus"], r"strategy must be one of"),
        (["train", "--epochs", "0"], r"epochs must be a positive int"),
        (["train", "--checkpoint-every", "-1"], r"checkpoint_every must be a number of seconds >= 0 \(0: every "
                                                 r"epoch\), received checkpoint_every=-1.0"),
        (["train", "--translate", "1.5"], r"translate must be in \[0, 1\), received translate=1.5"),
        (["train", "--weights", "nope.npz"], r"weights='nope.npz': no such checkpoint file"),
        (["train", "--variant", "Q/16"], r"Unknown variant 'Q/16'"),
        (["evaluate", "/nonexistent/run"], r"/nonexistent/run is not a training run"),
        (["predict", "--server", "http://localhost:1", "--model-name", "vit", "x.png", "--tta", "flip"],
         r"--tta applies to a run's model; with --server the exported model decides"),
        (["serve", ".", "--max-request-megapixels", "0"], r"--max-request-megapixels must be > 0, received 0.0"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv + (["--output", str(tmp_path / "o")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"keras-vit {argv[0]}: error: ")
    import re

    assert re.search(match, err), err


def _tensorflow_oom():
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[4096,197,3072]")


@pytest.mark.parametrize("error, shown", [
    (_tensorflow_oom, r"out of memory \(ResourceExhaustedError: OOM when allocating tensor with shape"),
    (lambda: MemoryError(), r"out of memory \(MemoryError: MemoryError\)"),
    (lambda: RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 GiB\n  traceback"),
     r"out of memory \(RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 GiB traceback"),
])
def test_out_of_memory_is_one_line_with_a_hint(error, shown, capsys, tmp_path, monkeypatch):
    """Issue 30: an out-of-memory error printed a traceback."""
    import re

    from keras_vit import runs

    def train(config):
        raise error()

    monkeypatch.setattr(runs, "train", train)
    assert cli.main(["train", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("keras-vit train: error: out of memory (")
    assert re.search(shown, err) and err.endswith("Try a smaller --batch-size, --image-size or model."), err


@pytest.mark.parametrize("command, option", [("train", "--data"), ("evaluate", "--model"),
                                             ("predict", "--top-k")])
def test_help_for_every_subcommand(command, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert option in capsys.readouterr().out


@pytest.mark.parametrize("command", [["keras-vit"], [PYTHON, "-m", "keras_vit"]])
def test_console_script_is_installed(command):
    completed = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    assert completed.stdout.startswith("keras-vit ")


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    import keras_vit

    class PoisonAfterFirstEpoch(keras.callbacks.Callback):
        # Runs after the checkpoint of epoch 1, so that the weights saved are good.
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                for v in self.model.trainable_variables:
                    v.assign(np.full(v.shape, np.nan, "float32"))

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
    y = np.eye(3)[rng.integers(0, 3, 32)].astype("float32")
    model = keras_vit.training.compile(
        keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=3), steps=12, warmup_steps=0
    )
    stop = run_callbacks.StopOnNaN()
    checkpoint = run_callbacks.CheckpointIfFinite(str(tmp_path / "last.keras"))
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[stop, checkpoint, PoisonAfterFirstEpoch()],
              verbose=0)
    assert stop.failed_at == (1, 0)
    assert len(model.history.history["loss"]) == 2  # stopped in the second epoch
    saved = keras.saving.load_model(tmp_path / "last.keras")
    assert all(np.all(np.isfinite(w)) for w in saved.get_weights())


def test_nan_run_raises_run_error(tmp_path):
    x = np.full((40, 8, 8, 1), np.nan, "float32")
    y = np.arange(40) % 2
    with pytest.raises(runs.RunError, match=r"the loss became NaN at epoch 1, batch 0.*--learning-rate"):
        runs.train(runs.TrainConfig(data=(x, y), output=str(tmp_path / "nan"), epochs=2, image_size=8,
                                    patch_size=4, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=16,
                                    batch_size=8, verbose=0))
    assert not (tmp_path / "nan" / "last.keras").exists()


@pytest.mark.slow
def test_sigkill_mid_training_then_same_command_resumes(tmp_path, monkeypatch, capsys):
    output = tmp_path / "killed"
    # --checkpoint-every 0: a backup every epoch, so what a kill loses is known.
    command = [PYTHON, "-m", "keras_vit.cli", "train", "--epochs", "8", "--output", str(output),
               "--checkpoint-every", "0"] + QUICK
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if (output / "log.csv").is_file() and len(_log(output)) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("training did not reach epoch 3 in time")
        time.sleep(0.3)  # inside the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    before = _log(output)
    assert 3 <= len(before) < 8
    backed_up = runs.read_backup(output / "backup")["epoch"]
    # The log row of an epoch is written just before its backup: a kill in
    # between leaves one row of an epoch that will be trained again.
    assert backed_up in (len(before), len(before) - 1)
    # The same command again, in this process (cli.main, as the entry point
    # runs it) so that the weights and optimizer state the resumed run
    # starts from can be compared with the backup file (issue 30).
    backup_file = output / "backup" / runs.read_backup(output / "backup")["weights"]
    stored = _datasets(backup_file)
    restored = {}
    load = run_callbacks.AtomicBackupAndRestore._load_model

    def recording_load(self):
        load(self)
        restored["layers"] = [keras.ops.convert_to_numpy(v) for v in self.model.weights]
        restored["optimizer"] = [keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables]

    monkeypatch.setattr(run_callbacks.AtomicBackupAndRestore, "_load_model", recording_load)
    assert cli.main(command[3:]) == 0
    stdout = capsys.readouterr().out
    assert "(resumed)" in stdout
    for part in ("layers", "optimizer"):
        in_file = sorted(np.asarray(v).tobytes() for k, v in stored.items() if k.startswith(part + "/"))
        assert len(restored[part]) == len(in_file) > 0, part
        assert sorted(np.asarray(v).tobytes() for v in restored[part]) == in_file, part
    after = _log(output)
    # The planned 8 epochs, each once: the run went on where it stopped.
    assert [int(row["epoch"]) for row in after] == list(range(8))
    assert after[:backed_up] == before[:backed_up]  # nothing backed up before the kill is lost
    assert f"Epoch {backed_up + 1}/8" in stdout and "Epoch 1/8" not in stdout
    assert not (output / "backup").exists()
    results = json.loads((output / "results.json").read_text())
    assert results["resumed"] is True and results["epochs"] == 8
    for name in ("best.keras", "last.keras"):
        keras.saving.load_model(output / name)


def test_fine_tune_a_checkpoint_on_a_folder_with_frozen_backbone(tmp_path, capsys):
    import keras_vit

    source = keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=5)
    rng = np.random.default_rng(0)
    for v in source.weights:
        v.assign(rng.normal(0, 0.1, tuple(v.shape)).astype("float32"))
    checkpoint = keras_vit.save_npz(source, tmp_path / "test4.npz")
    for name, colour in (("red", (220, 20, 20)), ("green", (20, 220, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(8):
            noise = rng.integers(-20, 20, (24, 24, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype("uint8")).save(
                tmp_path / "photos" / name / f"{i}.png")
    output = tmp_path / "finetuned"
    with pytest.warns(UserWarning, match=r"has 5 classes but the model has classes=3"):
        code = cli.main(["train", "--data", str(tmp_path / "photos"), "--variant", "Test/4",
                         "--weights", str(checkpoint), "--image-size", "32", "--freeze-backbone",
                         "--epochs", "3", "--batch-size", "4", "--learning-rate", "0.05",
                         "--validation-split", "0.25", "--output", str(output), "--verbose", "0"])
    assert code == 0
    model = keras.saving.load_model(output / "last.keras")
    assert model.input_shape == (None, 32, 32, 3)
    # The frozen backbone is the checkpoint's: same blocks, position embedding resampled 4x4 -> 8x8.
    np.testing.assert_array_equal(model.get_layer("block_1").mlp_fc2.kernel.numpy(),
                                  source.get_layer("block_1").mlp_fc2.kernel.numpy())
    resampled = keras_vit.resample_position_embedding(
        source.get_layer("patch_encoder").position_embedding.numpy(), (8, 8))
    np.testing.assert_allclose(model.get_layer("patch_encoder").position_embedding.numpy(), resampled,
                               atol=1e-6)
    assert np.abs(model.get_layer("head").kernel.numpy()).sum() > 0  # the new head trained
    config = json.loads((output / "config.json").read_text())
    assert config["class_names"] == ["blue", "green", "red"]


def test_recipe_defaults_yield_to_given_values():
    fashion = runs.TrainConfig(data="fashion_mnist").resolved()
    assert (fashion.epochs, fashion.random_erasing, fashion.patch_size) == (24, 0.4, 4)
    given = runs.TrainConfig(data="fashion_mnist", random_erasing=0.0, epochs=3).resolved()
    assert (given.epochs, given.random_erasing) == (3, 0.0)
    assert runs.TrainConfig(data="digits").resolved().random_erasing == 0.0


def test_mixed_precision_run_on_cpu_uses_bfloat16_and_restores_the_policy(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 60, (30, 8, 8, 1)), rng.uniform(190, 255, (30, 8, 8, 1))])
    y = np.array([0] * 30 + [1] * 30)
    run = runs.train(runs.TrainConfig(data=(x, y), output=str(tmp_path / "bf16"), epochs=4,
                                      image_size=8, patch_size=4, hidden_dim=16, num_layers=1,
                                      num_heads=2, mlp_dim=16, batch_size=10, learning_rate=1e-2,
                                      warmup_epochs=0.5, mixed_precision=True, verbose=0))
    assert run.model.get_layer("block_0").compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(run.model(x[:2].repeat(3, -1)).dtype) == "float32"
    assert keras.config.dtype_policy().name == "float32"
    assert np.isfinite(run.results["test_loss"])
    assert run.history["loss"][-1] < run.history["loss"][0]


def test_config_json_holds_the_image_size_once(trained_run):
    text = (trained_run / "config.json").read_text()
    config = json.loads(text)
    assert text.count('"image_size"') == 1 and config["image_size"] == 32
    assert text.count('"class_names"') == 1
    assert sorted(config["dataset"]) == ["name", "num_examples"]
    assert runs.read_run(trained_run)["image_size"] == 32


def test_run_written_in_the_earlier_config_layout_still_reads_and_evaluates(trained_run, tmp_path):
    from keras_vit.runs import config as run_config

    # Before the image size was stored once, config.json also held it, and
    # the class names, under "dataset".
    old = tmp_path / "old"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("logs", "evaluation.json", "confusion.png"))
    config = json.loads((old / "config.json").read_text())
    config["dataset"].update(image_size=[32, 32], class_names=config["class_names"])
    (old / "config.json").write_text(json.dumps(config))
    read = runs.read_run(old)
    assert read["image_size"] == 32 and sorted(read["dataset"]) == ["name", "num_examples"]
    assert read == runs.read_run(trained_run)
    # A resumed run compares its settings with the saved ones: the layouts agree.
    assert run_config.changed_settings(config, runs.read_run(trained_run)) == []
    results = json.loads((old / "results.json").read_text())
    assert runs.evaluate(old)["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
    image = [_digit_png(tmp_path)]
    assert runs.predict(old, image, top_k=3) == runs.predict(trained_run, image, top_k=3)


def _digit_png(tmp_path):
    from sklearn.datasets import load_digits

    path = tmp_path / "digit.png"
    Image.fromarray(np.round(load_digits().images[0] * 255 / 16).astype("uint8"), "L").save(path)
    return str(path)


def test_learning_curves_are_drawn_first_then_at_most_every_interval_and_at_the_end(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(run_callbacks.plots, "plot_learning_curves", lambda log, png: drawn.append(time.monotonic()))
    for every, expected in ((1000.0, 2), (0.0, 5)):
        drawn.clear()
        curves = run_callbacks.LearningCurves(tmp_path / "log.csv", tmp_path / "curves.png", every_seconds=every)
        for epoch in range(5):
            curves.on_epoch_end(epoch)
        curves.on_train_end()
        # Slow drawing interval: the first epoch, then the end (the last 4
        # epochs); none: every epoch and nothing more at the end.
        assert len(drawn) == expected, (every, drawn)


def test_saving_builds_no_reference_layers_once_keras_cache_is_primed(trained_run, tmp_path, monkeypatch):
    """The workaround for Keras' skip-set cache that never hits (see
    `callbacks.prime_keras_saving_cache`): a primed save computes no skip
    set (each one builds reference layers), and writes the same file as an
    unprimed one."""
    import zipfile

    from keras.src.backend.common import global_state

    model = keras.saving.load_model(trained_run / "last.keras")
    for kind in run_callbacks._SKIPSET_KINDS:
        monkeypatch.delattr(global_state.GLOBAL_STATE_TRACKER, f"saving_attr_skiplist_{kind}", raising=False)
    computed = []
    store = global_state.set_global_attribute
    monkeypatch.setattr(global_state, "set_global_attribute",
                        lambda name, value: (computed.append(name) if "skipset" in name else None) or store(name, value))
    model.save(tmp_path / "plain.keras")
    unprimed = len(computed)
    run_callbacks.prime_keras_saving_cache()
    computed.clear()
    model.save(tmp_path / "primed.keras")
    assert computed == [], computed
    print(f"skip sets computed by one save: {unprimed} unprimed, 0 primed", file=sys.stderr)
    plain, primed = (zipfile.ZipFile(tmp_path / name) for name in ("plain.keras", "primed.keras"))
    assert plain.read("config.json") == primed.read("config.json")
    with h5py.File(plain.open("model.weights.h5")) as a, h5py.File(primed.open("model.weights.h5")) as b:
        names = []
        a.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        assert len(names) > 50
        for name in names:
            np.testing.assert_array_equal(a[name][()], b[name][()])


def _datasets(path_or_file):
    found = {}
    with h5py.File(path_or_file, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


def test_backup_copies_the_weights_of_the_epochs_checkpoint(trained_run, tmp_path, monkeypatch):
    """The backup of an epoch whose `last.keras` was just written is the
    `model.weights.h5` inside it, not a second serialisation; it holds
    what `save_weights` writes, value by value (layers and optimizer). A
    backup following a checkpoint skips the epochs the checkpoint skipped;
    one following none writes every epoch with `save_weights`."""
    model = keras.saving.load_model(trained_run / "last.keras")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32,) + tuple(model.input_shape[1:])).astype("float32")
    y = np.eye(10, dtype="float32")[np.arange(32) % 10]  # the recipe trains on one-hot labels
    written = []
    save_weights = keras.Model.save_weights
    monkeypatch.setattr(keras.Model, "save_weights",
                        lambda self, path, **kw: written.append(str(path)) or save_weights(self, path, **kw))
    last = run_callbacks.CheckpointIfFinite(str(tmp_path / "last.keras"))
    backup = run_callbacks.AtomicBackupAndRestore(str(tmp_path / "copied"), weights_from=last)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[last, backup])
    assert written == [] and last.saved == (0, tmp_path / "last.keras")
    copied = tmp_path / "copied" / runs.read_backup(tmp_path / "copied")["weights"]
    model.save_weights(tmp_path / "reference.weights.h5")
    expected = _datasets(tmp_path / "reference.weights.h5")
    assert any(name.startswith("optimizer/") for name in expected) and len(expected) > 50
    got = _datasets(copied)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # The next epoch, without the checkpoint callback: `last.keras` is of
    # epoch 0, so the backup following it writes nothing, not its weights.
    follower = run_callbacks.AtomicBackupAndRestore(str(tmp_path / "skipped"), weights_from=last)
    # Without a checkpoint to follow, each epoch is written by save_weights.
    alone = run_callbacks.AtomicBackupAndRestore(str(tmp_path / "written"))
    written.clear()
    model.fit(x, y, batch_size=16, initial_epoch=1, epochs=2, verbose=0, callbacks=[follower, alone])
    assert runs.read_backup(tmp_path / "skipped") is None
    metadata = runs.read_backup(tmp_path / "written")
    assert metadata["epoch"] == 2 and len(written) == 1
    got = _datasets(tmp_path / "written" / metadata["weights"])
    model.save_weights(tmp_path / "reference.weights.h5")
    for name, value in _datasets(tmp_path / "reference.weights.h5").items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert any(not np.array_equal(got[name], expected[name]) for name in expected)  # it trained


def test_last_checkpoint_and_backup_are_written_at_most_every_n_seconds_and_after_the_last_epoch(
        trained_run, tmp_path, monkeypatch):
    """`--checkpoint-every` (default 10 s): the main job's epochs take about
    a second, and each `last.keras` write a fifth of that."""
    model = keras.saving.load_model(trained_run / "last.keras")
    clock = [100.0]
    monkeypatch.setattr(run_callbacks.time, "monotonic", lambda: clock[0])
    last = run_callbacks.CheckpointIfFinite(str(tmp_path / "last.keras"), every_seconds=10)
    backup = run_callbacks.AtomicBackupAndRestore(str(tmp_path / "backup"), weights_from=last)
    written = []
    for callback in (last, backup):
        callback.set_model(model)
        callback.set_params({"epochs": 7, "verbose": 0, "steps": 1})
    for epoch in range(7):
        clock[0] += 4.0  # a 4-second epoch
        last.on_epoch_end(epoch, {"loss": 1.0})
        backup.on_epoch_end(epoch, {"loss": 1.0})
        if last.saved and last.saved[0] == epoch:
            written.append((epoch, runs.read_backup(tmp_path / "backup")["epoch"]))
    # The first epoch, then once 10 s have passed (epochs 3 and 6: 12 s
    # each), and the last one (6) in any case; each backup the same epoch.
    assert written == [(0, 1), (3, 4), (6, 7)]
    with pytest.raises(ValueError, match="every_seconds=10 cannot be used with save_best_only=True"):
        run_callbacks.CheckpointIfFinite(str(tmp_path / "best.keras"), save_best_only=True, every_seconds=10)


def _event_tags(logdir):
    """{(subfolder, tag): number of values} of the TensorBoard event files
    under `logdir`, and the number of graphs written."""
    import tensorflow as tf

    tags, graphs = {}, 0
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            graphs += bool(event.graph_def)
            for value in event.summary.value:
                key = (path.parent.name, value.tag)
                tags[key] = tags.get(key, 0) + 1
    return tags, graphs


def test_epoch_tensorboard_writes_what_keras_tensorboard_writes_without_its_per_batch_calls(
        trained_run, tmp_path, monkeypatch):
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0, 16, (24, 32, 32, 3)).astype("float32")
    y = np.eye(10)[np.arange(24) % 10]
    calls = []
    scalar = tf.summary.scalar
    monkeypatch.setattr(tf.summary, "scalar", lambda name, *a, **k: calls.append(name) or scalar(name, *a, **k))
    written = {}
    for kind in (keras.callbacks.TensorBoard, run_callbacks.EpochTensorBoard):
        model = keras.saving.load_model(trained_run / "last.keras")
        calls.clear()
        model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]), verbose=0,
                  callbacks=[kind(str(tmp_path / kind.__name__))])
        written[kind] = _event_tags(tmp_path / kind.__name__), [name for name in calls if name.startswith("batch_")]
    (keras_tags, keras_graphs), keras_calls = written[keras.callbacks.TensorBoard]
    (tags, graphs), ours = written[run_callbacks.EpochTensorBoard]
    # Keras: a call per metric and batch (3 batches x 2 epochs), writing
    # nothing; here only in the first batch, where Keras writes the graph.
    assert sorted(keras_calls) == ["batch_accuracy"] * 6 + ["batch_loss"] * 6
    assert sorted(ours) == ["batch_accuracy", "batch_loss"]
    # The same summaries: the epoch metrics of training and validation and
    # the learning rate (and a graph where Keras writes one).
    assert tags == keras_tags and graphs == keras_graphs
    assert tags[("train", "epoch_loss")] == tags[("validation", "epoch_accuracy")] == 2
