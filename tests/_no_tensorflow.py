"""Makes `import tensorflow` fail as on a machine where it is not installed.

    import _no_tensorflow; _no_tensorflow.block()   # before anything imports it

The path finder on `sys.meta_path` is replaced by one that finds no
`tensorflow` module: `import tensorflow` raises ModuleNotFoundError and
`importlib.util.find_spec("tensorflow")` returns None, as without it
(PyTorch's dynamo calls `find_spec` and wants None, not an error), and
`tensorflow` stays out of `sys.modules`: Keras' preprocessing layers ask
`"tensorflow" in sys.modules` to learn whether they run inside tf.data, so
putting `None` there (the usual trick) breaks them where a real
TensorFlow-less install works.
"""

import importlib.machinery
import sys


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        return super().find_spec(name, path, target)


def block():
    if "tensorflow" in sys.modules:
        raise RuntimeError("tensorflow is already imported: block() must run first")
    sys.meta_path[:] = [_PathFinderWithoutTensorFlow if finder is importlib.machinery.PathFinder else finder
                        for finder in sys.meta_path]
    if importlib.util.find_spec("tensorflow") is not None:
        raise RuntimeError("tensorflow is still found: it is not on the path finder's path")
