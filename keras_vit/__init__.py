"""keras_vit: Vision Transformers for Keras 3 and TensorFlow.

Build any standard ViT in one call, with ImageNet weights downloaded once
(`keras_vit.ViTB16()`; `keras_vit.list_weights()` for every named checkpoint,
`keras_vit.decode_predictions` for the class names) or random
(`keras_vit.ViT("S/32")`), load checkpoint files or Hugging Face Hub
repositories into it (`weights=`, `keras_vit.from_pretrained`), and use its
layers (`Patches`, `PatchEncoder`, `TransformerBlock`) on their own;
train (`runs`, `training`, `data`; `distribute` for tf.distribute and
Keras' distribution API) and export for TF Serving
(`export`, `serving`).
"""

from keras_vit._backend import select_backend as _select_backend
from keras_vit._backend import tensorflow_installed as _tensorflow_installed

_select_backend()

# The core (layers, models, weights, inference, explain, training.compile)
# runs on every Keras backend. The modules below are imported when first
# used (they pull in tf.data, matplotlib, aiohttp); `data`, `images` and
# `runs` work without TensorFlow too (NumPy batches, Pillow decoding), while
# `export` and `serving` need it (SavedModel, the TF Serving stand-in):
# without TensorFlow, using one raises an ImportError naming it.
_LAZY_MODULES = ("data", "export", "images", "runs", "serving")
_TENSORFLOW_MODULES = ("export", "serving")

from keras_vit import (  # noqa: E402
    backend,
    distribute,
    explain,
    imagenet,
    inference,
    layers,
    models,
    training,
    variants,
    weights,
)
from keras_vit.layers import (  # noqa: E402
    ClassTokenPooling,
    DropPath,
    HorizontalFlip,
    LayerNorm,
    PatchEncoder,
    Patches,
    PatchTokenAveragePooling,
    TransformerBlock,
)
from keras_vit.models import (  # noqa: E402
    ViT,
    ViTB8,
    ViTB16,
    ViTB32,
    ViTH14,
    ViTL16,
    ViTL32,
    ViTS16,
    ViTS32,
    ViTTest4,
    ViTTi16,
    preprocess_input,
)
from keras_vit.inference import bfloat16_cpu, with_dtype_policy, with_flip_tta, with_precision  # noqa: E402
from keras_vit.imagenet import decode_predictions  # noqa: E402
from keras_vit.version import __version__  # noqa: E402
from keras_vit.weights.hub import from_pretrained  # noqa: E402
from keras_vit.weights.pretrained import list_weights  # noqa: E402
from keras_vit.weights import (  # noqa: E402
    CheckpointError,
    load_model,
    load_weights,
    resample_position_embedding,
    save_npz,
)

__all__ = [
    "CheckpointError",
    "ClassTokenPooling",
    "DropPath",
    "HorizontalFlip",
    "LayerNorm",
    "PatchEncoder",
    "PatchTokenAveragePooling",
    "Patches",
    "TransformerBlock",
    "ViT",
    "ViTB8",
    "ViTB16",
    "ViTB32",
    "ViTH14",
    "ViTL16",
    "ViTL32",
    "ViTS16",
    "ViTS32",
    "ViTTest4",
    "ViTTi16",
    "__version__",
    "backend",
    "bfloat16_cpu",
    "data",
    "decode_predictions",
    "distribute",
    "explain",
    "export",
    "from_pretrained",
    "imagenet",
    "images",
    "inference",
    "layers",
    "list_weights",
    "load_model",
    "load_weights",
    "models",
    "preprocess_input",
    "resample_position_embedding",
    "runs",
    "save_npz",
    "serving",
    "training",
    "variants",
    "weights",
    "with_dtype_policy",
    "with_flip_tta",
    "with_precision",
]
# `from keras_vit import *` takes the TensorFlow-only modules where they import.
if not _tensorflow_installed():
    __all__ = [name for name in __all__ if name not in _TENSORFLOW_MODULES]


def __getattr__(name):
    # PEP 562: the modules imported on first use.
    if name in _LAZY_MODULES:
        import importlib

        from keras_vit._backend import require_tensorflow

        if name in _TENSORFLOW_MODULES:
            require_tensorflow(f"keras_vit.{name}")
        return importlib.import_module(f"keras_vit.{name}")
    raise AttributeError(f"module 'keras_vit' has no attribute {name!r}")
