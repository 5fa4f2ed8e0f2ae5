"""Checks, before Keras is imported, that TensorFlow is there to run it."""

import importlib.util
import os


def require_tensorflow():
    """Selects Keras' TensorFlow backend, or fails in one line naming the extra.

    keras_vit declares TensorFlow through extras (`[cpu]` installs
    `tensorflow-cpu`, `[gpu]` installs `tensorflow[and-cuda]`) because
    `tensorflow-cpu` does not satisfy a requirement on `tensorflow`.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            "keras_vit needs TensorFlow: pip install "
            "'keras-vision-transformer[cpu]' (CPU) or "
            "'keras-vision-transformer[gpu]' (NVIDIA GPU)."
        )
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # Hides TensorFlow's cpu_feature_guard INFO lines (its oneDNN notice is
    # logged before the level is read); warnings and errors still print.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
