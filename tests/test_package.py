"""Tests of the package surface: version, public names, the TensorFlow check."""

import inspect
import pathlib
import re
import sys

import pytest

import keras_vit
from keras_vit import _backend

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_matches_changelog_and_setup():
    assert re.fullmatch(r"\d+\.\d+\.\d+", keras_vit.__version__)
    setup = (ROOT / "setup.py").read_text()
    assert 'name="keras-vision-transformer"' in setup
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_all_lists_exactly_the_public_api():
    # Submodules become attributes when anything imports them (keras_vit.cli,
    # keras_vit.version); every other public name must be in __all__.
    exported = {
        name for name in dir(keras_vit)
        if not name.startswith("_") and not inspect.ismodule(getattr(keras_vit, name))
    }
    assert exported | {"__version__"} == {
        name for name in keras_vit.__all__ if not inspect.ismodule(getattr(keras_vit, name))
    }
    for name in keras_vit.__all__:
        assert hasattr(keras_vit, name), name
    assert {"data", "distribute", "layers", "models", "runs", "training", "variants", "weights"} <= set(
        keras_vit.__all__
    )


def test_missing_tensorflow_fails_in_one_line_naming_the_extras(monkeypatch):
    real_find_spec = _backend.importlib.util.find_spec
    monkeypatch.setattr(
        _backend.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a),
    )
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(ImportError) as error:
        _backend.select_backend()
    message = str(error.value)
    assert "\n" not in message
    assert "keras-vision-transformer[cpu]" in message
    assert "keras-vision-transformer[gpu]" in message
    # A TensorFlow-only module, used from another backend without TensorFlow.
    with pytest.raises(ImportError, match=r"^keras_vit.export needs TensorFlow, which is not installed: pip "
                                          r"install 'keras-vision-transformer\[cpu\]'"):
        _backend.require_tensorflow("keras_vit.export")


def test_keras_runs_on_tensorflow():
    import keras

    assert keras.backend.backend() == "tensorflow"


def test_benchmark_scripts_do_not_shadow_standard_modules():
    # A script runs with its folder first on sys.path: benchmarks/profile.py
    # once made torch's `import cProfile` load it instead of the standard
    # `profile`, and every timm run of the benchmarks failed.
    folder = ROOT / "benchmarks"
    names = {path.stem for path in folder.glob("*.py")}
    assert {"inference", "training", "time_to_accuracy"} <= names
    assert not names & set(sys.stdlib_module_names)
