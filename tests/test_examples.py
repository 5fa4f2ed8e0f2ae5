"""The examples run and print what their docstrings say; the README's
Python blocks run as written."""

import inspect
import json
import pathlib
import re
import runpy
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart(capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        quickstart = runpy.run_path(str(ROOT / "examples" / "quickstart.py"))
    finally:
        sys.path.pop(0)
    names, probabilities = quickstart["main"]([])
    out = capsys.readouterr().out
    assert "ViT-B/16: 86,567,656 parameters" in out
    assert re.search(r"wrote checkpoint .*vit_b16_random\.npz \(200 arrays\)", out)
    assert "loaded it back: max abs difference of probabilities 0\n" in out
    assert names[:3] == ["astronaut", "chelsea", "coffee"]
    assert probabilities.shape == (len(names), 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    for name in names:
        assert re.search(rf"^{name} +top-3: class \d+ \(0\.\d{{4}}\), class \d+", out, re.M), name
    # The docstring's printed example is what seed 0 gives.
    assert "astronaut    top-3: class 660 (0.0263), class 374 (0.0260), class 477 (0.0198)" in out


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(tmp_path)
    # Offline: Keras' cache is filled beforehand with the checkpoints the
    # blocks name, written from random weights under their real paths.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KERAS_VIT_WEIGHTS_BASE_URL", "http://127.0.0.1:9")  # refused, should a file be missing
    import keras_vit
    from keras_vit.weights import pretrained

    for variant, alias in (("B/16", "imagenet"), ("S/16", "imagenet21k")):
        entry = pretrained.resolve(variant, alias)
        model = keras_vit.ViT(variant, classes=entry.classes, weights=None)
        keras_vit.save_npz(model, entry.cache_path)
        del model
    for block in blocks:
        namespace = {}
        if "imagenet21k" in block:
            with pytest.warns(UserWarning, match=r"has 21843 classes but the model has classes=10"):
                exec(compile(block, "README.md", "exec"), namespace)
        else:
            exec(compile(block, "README.md", "exec"), namespace)
        if "decode_predictions" in block:
            decoded = keras_vit.decode_predictions(namespace["probabilities"], top=3)[0]
            assert len(decoded) == 3 and all(len(row) == 3 for row in decoded)
        if "model.fit" in block:
            history = namespace["model"].history.history
            assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0]
        if "export_saved_model" in block:
            assert namespace["path"] == "export/demo/1" and (tmp_path / "export/demo/1/saved_model.pb").is_file()
            labels = namespace["prediction"].labels
            assert sorted(labels) == ["bird", "cat", "dog"]
    out = capsys.readouterr().out.splitlines()
    assert ["86,567,656", "(None, 384)", "(2, 197, 192)"] == [
        line for line in out if line.startswith(("86,", "(None", "(2,"))
    ]
    assert "export/demo/1" in out
    assert "2 (2, 2, 17, 17) (2, 4, 4) uint8" in out  # the explain block
    assert len([line for line in out if line.startswith("['")]) == 2  # one prediction per photo


def _run_example(name, argv):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        module = runpy.run_path(str(ROOT / "examples" / f"{name}.py"))
    finally:
        sys.path.pop(0)
    return module["main"](argv)


@pytest.mark.slow
def test_export_and_serve_example(tmp_path, capsys):
    assert _run_example("export_and_serve", ["--output", str(tmp_path / "export")]) == 0
    out = capsys.readouterr().out
    assert f"exported to {tmp_path / 'export' / 'digits' / '1'}\n" in out
    assert re.search(r"serving http://127\.0\.0\.1:\d+/v1/models/digits, version 1\n", out)
    lines = re.findall(r"^digit_\d\.png \(true (\d)\): (\d) (0\.\d\d), \d 0\.\d\d, \d 0\.\d\d$", out, re.M)
    assert len(lines) == 4
    assert sum(true == predicted for true, predicted, _ in lines) >= 3  # a trained model
    difference = float(re.search(r"REST answers equal model.predict: max abs difference (\S+)", out).group(1))
    assert difference <= 1e-5
    assert "a bad request got HTTP 400: Input 'image_bytes'[0] is not a decodable image" in out


@pytest.mark.slow
def test_fine_tune_example(tmp_path, capsys):
    results = _run_example("fine_tune", ["--work", str(tmp_path)])
    out = capsys.readouterr().out
    pretrained = re.search(r"pre-trained on digits 3-9: validation accuracy (0\.\d\d), checkpoint .*pretrained\.npz",
                           out)
    # 126 validation images of 7 classes (chance 0.14); seeded runs give
    # 0.91-0.95 alone, and 0.89 was seen inside the suite (a Zen 4, the
    # other test worker busy): a bar of 0.9 is three images from failing.
    assert pretrained and float(pretrained.group(1)) >= 0.85
    assert re.search(r"wrote 537 images of 3 classes into", out)
    assert f"fine-tuned (new head, 8 epochs): test accuracy {results['fine-tuned']:.2f}" in out
    # What was learned on 3-9 carries over: more than from random weights.
    # The held-out split is 161 images and runs differ by thread timing
    # (seen on a Zen 1: fine-tuned 0.888-0.99, from random weights 0.84-0.86;
    # a bar of 0.9 failed once at 0.888, two images short).
    assert results["fine-tuned"] >= 0.85 and results["fine-tuned"] > results["scratch"]
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["one", "two", "zero"]


@pytest.mark.slow
def test_fine_tune_example_from_named_weights(tmp_path, capsys, ti16_mirror):
    results = _run_example("fine_tune", ["--work", str(tmp_path / "work"), "--weights", "imagenet21k",
                                         "--variant", "Ti/16", "--image-size", "32", "--epochs", "2",
                                         "--no-compare"])
    out = capsys.readouterr().out
    assert "pre-trained on digits" not in out and "wrote 537 images of 3 classes into" in out
    assert f"fine-tuned (new head, 2 epochs): test accuracy {results['fine-tuned']:.2f}" in out
    assert "from random weights" not in out and list(results) == ["fine-tuned"]
    in21k = keras_vit_pretrained().resolve("Ti/16", "imagenet21k")
    assert ti16_mirror.requests == [in21k.file]  # downloaded once
    config = json.loads((tmp_path / "work" / "runs" / "fine-tuned" / "config.json").read_text())
    assert (config["weights"], config["variant"], config["image_size"]) == ("imagenet21k", "Ti/16", 32)
    assert config["class_names"] == ["one", "two", "zero"]


@pytest.mark.slow
def test_classify_photos_example(capsys, ti16_mirror):
    names, decoded = _run_example("classify_photos", ["--variant", "Ti/16", "--top", "2"])
    out = capsys.readouterr().out
    assert "ViT-Ti/16 (vit_tiny_patch16_224.augreg_in21k_ft_in1k): 5,717,416 parameters, 1000 classes" in out
    assert names[:3] == ["astronaut", "chelsea", "coffee"]
    width = max(len(name) for name in names)
    for name, row in zip(names, decoded):
        line = f"{name:<{width}} " + ", ".join(f"{w} {label} ({score:.2f})" for w, label, score in row)
        assert line in out.splitlines()
        assert all(re.fullmatch(r"n\d{8}", wnid) for wnid, _, _ in row) and row[0][2] >= row[1][2]
    assert ti16_mirror.requests == [keras_vit_pretrained().resolve("Ti/16", "imagenet").file]


def keras_vit_pretrained():
    from keras_vit.weights import pretrained

    return pretrained


@pytest.mark.slow
def test_distributed_example(tmp_path, capsys):
    results = _run_example("distributed", ["--epochs", "3", "--output", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert results["num_replicas"] == 2
    assert f"worker 0 (chief): test accuracy {results['test_accuracy']:.2f}, 2 replicas" in out
    assert (f"run directory {tmp_path / 'run'}: best.keras config.json curves.png last.keras log.csv logs "
            "results.json") in out


@pytest.mark.slow
def test_attention_maps_example(tmp_path, capsys):
    from keras_vit import cli

    run = tmp_path / "digits"
    assert cli.main(["train", "--epochs", "3", "--output", str(run), "--hidden-dim", "32", "--num-heads", "2",
                     "--mlp-dim", "64", "--num-layers", "2", "--verbose", "0"]) == 0
    capsys.readouterr()
    assert _run_example("attention_maps", ["--run", str(run), "--output", str(tmp_path / "gallery")]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^digit_\d\.png \(true \d\): \d 0\.\d{4}$", out, re.M)) == 4
    names = ["last_block_head0.png", "patch_embedding.png", "position_embedding.png", "rollout.png"]
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == names
    assert "wrote " + ", ".join(str(tmp_path / "gallery" / n) for n in
                                ("rollout.png", "last_block_head0.png", "position_embedding.png",
                                 "patch_embedding.png")) in out


def test_train_from_scratch_example(capsys, monkeypatch):
    from keras_vit import runs, training

    asked = []
    augmentation = training.augmentation

    def recording(**kwargs):
        asked.append(kwargs)
        return augmentation(**kwargs)

    monkeypatch.setattr(training, "augmentation", recording)
    # The docstring's quick look: 30 steps and 8 batches of the validation
    # and test splits (evaluating all of them, 6000 validation images and
    # 10000 test images with and without flips, took 46 s of 86 on a Zen 1
    # core pair). On a Zen 1: 0.4219 with flips, 0.4229 without, in 32 s
    # alone; 50 steps and 16 batches gave 0.4624 in 59 s.
    accuracy, plain = _run_example("train_from_scratch", ["--epochs", "1", "--steps", "30", "--eval-steps", "8"])
    out = capsys.readouterr().out
    assert re.search(rf"Fashion-MNIST test accuracy {accuracy:.4f} with flip TTA \({plain:.4f} without\) "
                     rf"on 1024 test images after 1 epochs \(\d+ s\)", out)
    assert accuracy > 0.3 and plain > 0.3  # 30 steps of 128 images: far above chance (0.1)
    # "What keras-vit train --data fashion_mnist does, spelled out": the
    # recipe's augmentation, random erasing included.
    recipe = runs.TrainConfig(data="fashion_mnist").resolved()
    assert len(asked) == 1
    given = inspect.signature(augmentation).bind(**asked[0])
    given.apply_defaults()  # what the example leaves out is the function's default
    keys = ("flip", "crop_scale", "translate", "random_erasing", "rand_augment", "mixup", "cutmix")
    assert {key: given.arguments[key] for key in keys} == {key: getattr(recipe, key) for key in keys}
    assert recipe.tta == "flip"  # and the test accuracy is measured as the recipe measures it


@pytest.mark.parametrize("flag", ["--epochs", "--steps", "--eval-steps"])
def test_train_from_scratch_example_refuses_counts_below_one(flag, capsys):
    with pytest.raises(SystemExit) as raised:
        _run_example("train_from_scratch", [flag, "0"])
    assert raised.value.code == 2
    assert f"{flag} must be a positive integer; received 0" in capsys.readouterr().err
