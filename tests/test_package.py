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
    monkeypatch.delitem(sys.modules, "tensorflow")  # as if never imported (monkeypatch puts it back)
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


def test_tensorflow_check_leaves_importlib_alone_once_tensorflow_is_imported(monkeypatch):
    # The check runs inside tf.data maps (images.to_pixels): AutoGraph
    # cannot convert importlib's find_spec and warned on every
    # `keras-vit train` (test_faults checks a real run's output).
    assert "tensorflow" in sys.modules

    def refuse(name, package=None):
        raise AssertionError(f"find_spec({name!r}) called")

    monkeypatch.setattr(_backend.importlib.util, "find_spec", refuse)
    assert _backend.tensorflow_installed() is True
    _backend.require_tensorflow("this test")


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


def test_the_suite_order_names_real_test_files_once():
    # A renamed or removed file would drop out of the order silently, and
    # its tests would run last again.
    from tests.conftest import LONGEST_FILES_FIRST

    files = {path.stem for path in (ROOT / "tests").glob("test_*.py")}
    assert sorted(set(LONGEST_FILES_FIRST) - files) == []
    assert len(set(LONGEST_FILES_FIRST)) == len(LONGEST_FILES_FIRST)
    assert "--no-loadscope-reorder" in (ROOT / "pyproject.toml").read_text()


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="oneDNN is turned on on x86 only")
@pytest.mark.parametrize("setting, first, expected", [
    (None, "keras_vit", True),  # keras_vit turns it on, whatever the CPU
    ("0", "keras_vit", False),  # the user's choice is kept
    (None, "tensorflow", None),  # too late: TensorFlow's own default for this CPU
    ("0", "tensorflow", False),  # off as asked: no warning
])
def test_importing_keras_vit_first_turns_on_tensorflows_onednn_kernels(setting, first, expected):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = (f"import {first}, keras_vit, os; "
            "print(keras_vit.backend.onednn_enabled(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    enabled, variable = out.stdout.split()
    assert variable == (setting or ("1" if first == "keras_vit" else "None"))
    warned = "TensorFlow was imported before keras_vit and runs without its oneDNN kernels" in out.stderr
    # The warning: only when keras_vit came too late and the kernels are off
    # though the user did not set the variable.
    assert warned == (first == "tensorflow" and setting is None and enabled == "False"), out.stderr[-2000:]
    if expected is not None:
        assert enabled == str(expected)
    else:
        # TensorFlow's default: on only with AVX512-VNNI, AVX512-BF16,
        # AVX-VNNI or AMX (on an AMD Zen 2 this is False: the case the
        # import order fixes).
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
        features = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
        default = bool(flags & features)
        assert enabled == str(default), flags & features
