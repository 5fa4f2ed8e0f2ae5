"""Chooses Keras' backend before Keras is imported, or fails in one line
naming what to install."""

import functools
import importlib.util
import os
import sys

# Keras backend name -> (the module it needs, how to install it).
FRAMEWORKS = {
    "tensorflow": ("tensorflow", "pip install 'keras-vision-transformer[cpu]' (CPU) or "
                                 "'keras-vision-transformer[gpu]' (NVIDIA GPU)"),
    "jax": ("jax", "pip install 'jax[cpu]' (or 'jax[cuda12]'), see https://jax.readthedocs.io"),
    "torch": ("torch", "pip install torch (CPU-only: --index-url https://download.pytorch.org/whl/cpu)"),
}


def select_backend():
    """Returns the Keras backend keras_vit runs on, after checking that its
    framework is installed.

    `KERAS_BACKEND` (or `~/.keras/keras.json`, as Keras reads it) picks
    `tensorflow`, `jax` or `torch`; unset, keras_vit uses TensorFlow, as it
    always has. keras_vit declares TensorFlow through extras (`[cpu]`
    installs `tensorflow-cpu`, `[gpu]` installs `tensorflow[and-cuda]`)
    because `tensorflow-cpu` does not satisfy a requirement on
    `tensorflow`; JAX and PyTorch users install their framework themselves.

    Raises:
        ImportError: the backend's framework is not installed, or the
            backend is one keras_vit does not run on.
    """
    backend = os.environ.get("KERAS_BACKEND") or _configured_backend() or "tensorflow"
    if backend not in FRAMEWORKS:
        raise ImportError(
            f"keras_vit runs on the Keras backends {', '.join(sorted(FRAMEWORKS))}; "
            f"received KERAS_BACKEND={backend!r}."
        )
    module, install = FRAMEWORKS[backend]
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"keras_vit on the {backend} backend needs {module}: {install}.")
    os.environ.setdefault("KERAS_BACKEND", backend)
    enable_onednn()
    if backend == "tensorflow":
        warn_if_onednn_left_off()
        # Hides TensorFlow's cpu_feature_guard INFO lines (its oneDNN notice
        # is logged before the level is read); warnings and errors still print.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return backend


def enable_onednn():
    """Turns on TensorFlow's oneDNN kernels on x86 CPUs where TensorFlow
    leaves them off, when TensorFlow is not imported yet; returns whether it
    set anything.

    TensorFlow's x86 Linux builds enable oneDNN by default only on CPUs with
    AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX. On the others (AMD Zen 2 and
    Zen 3, Intel before Cascade Lake) they fall back to Eigen, and there
    keras_vit runs much slower: on an AMD EPYC (Zen 2, AVX2), the
    Fashion-MNIST recipe's `model.fit` step took 122-141 ms with oneDNN
    against 217-224 ms without, ViT-B/16 float32 inference at batch 8 ran
    at 5.21 against 3.90 img/s (BENCHMARKS.md). `TF_ENABLE_ONEDNN_OPTS` is
    read once, when TensorFlow loads, so this works only before that: the
    CLI and `import keras_vit` before `import tensorflow` (or `keras`) get
    it; otherwise set `TF_ENABLE_ONEDNN_OPTS=1` yourself. A value already
    set, `0` included, is kept.
    """
    if "tensorflow" in sys.modules or not _onednn_left_to_default():
        return False
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


def _onednn_left_to_default():
    """Whether TensorFlow's oneDNN kernels are left to its per-CPU default:
    an x86 CPU and `TF_ENABLE_ONEDNN_OPTS` unset (a user's value is kept)."""
    import platform

    return ("TF_ENABLE_ONEDNN_OPTS" not in os.environ
            and platform.machine().lower() in ("x86_64", "amd64"))


def tensorflow_onednn_enabled():
    """Whether the loaded TensorFlow runs its oneDNN kernels (False for
    builds without the query)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - other builds
        return False


def warn_if_onednn_left_off():
    """Warns (a `UserWarning`, at `import keras_vit`) when TensorFlow was
    imported first and runs without its oneDNN kernels though the user did
    not ask for that (`TF_ENABLE_ONEDNN_OPTS` unset, an x86 CPU): the
    case `enable_onednn` comes too late for. Returns whether it warned."""
    if ("tensorflow" not in sys.modules or not _onednn_left_to_default()
            or tensorflow_onednn_enabled()):
        return False
    import warnings

    warnings.warn(
        "TensorFlow was imported before keras_vit and runs without its oneDNN kernels on this CPU "
        "(TensorFlow turns them on by itself only with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX), "
        "where keras_vit trains and predicts 1.3-1.8x slower (README, 'Speed'). Import keras_vit "
        "before keras and tensorflow, or set TF_ENABLE_ONEDNN_OPTS=1 before Python starts "
        "(TF_ENABLE_ONEDNN_OPTS=0 keeps them off without this warning).",
        UserWarning,
        stacklevel=2,
    )
    return True


def _configured_backend():
    """The backend `~/.keras/keras.json` names (Keras' own configuration
    file, in `KERAS_HOME` if set), or None."""
    import json

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as file:
            backend = json.load(file).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


@functools.lru_cache(maxsize=None)
def cpu_features():
    """`(vendor, flags)` of this machine's CPU as `/proc/cpuinfo` lists them
    (`vendor_id`, and the set of `flags` of the first CPU); `("", frozenset())`
    where the file does not exist (macOS, Windows)."""
    vendor = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    return vendor, frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return vendor, frozenset()


def tensorflow_installed():
    """Whether TensorFlow can be imported (its data pipelines, SavedModel
    export and distribution strategies need it, whatever the backend)."""
    if "tensorflow" in sys.modules:
        # Also keeps AutoGraph out of importlib when a function that checks
        # runs in a tf.data map or a tf.function: it cannot convert
        # `find_spec` and said so in a warning on every `keras-vit train`.
        return True
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # an import hook refusing it; a broken entry in sys.modules
        return False


def require_tensorflow(feature):
    """Raises ImportError naming `feature` when TensorFlow is not installed."""
    if not tensorflow_installed():
        raise ImportError(
            f"{feature} needs TensorFlow, which is not installed: {FRAMEWORKS['tensorflow'][1]} "
            "(it works beside JAX or PyTorch as Keras' backend)."
        )


def is_out_of_memory(error):
    """Whether `error` is a framework's out-of-memory error: Python's
    MemoryError, TensorFlow's ResourceExhaustedError, PyTorch's
    OutOfMemoryError, or XLA's RESOURCE_EXHAUSTED (JAX). Told by name, so
    that no framework is imported to check. The CLI's one-line error and
    the server's 429 both use it."""
    return (isinstance(error, MemoryError)
            or type(error).__name__ in ("ResourceExhaustedError", "OutOfMemoryError")
            or (isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error)))
