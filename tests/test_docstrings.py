"""Runs the examples in the public docstrings (STYLE: they run in the tests)."""

import doctest

import numpy as np
import pytest

import keras_vit
from keras_vit import backend, data, distribute, imagenet, images, inference, layers, models, training, variants
from keras_vit.weights import hub, loading, pretrained, resample

MODULES = [backend, data, distribute, imagenet, images, inference, layers, models, training, variants,
           hub, loading, pretrained, resample]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"np": np, "keras_vit": keras_vit}
    tests = [t for t in finder.find(module, globs=globs) if t.examples]
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{module.__name__} has no docstring examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module.__name__}"


def test_every_public_name_has_a_docstring():
    for name in keras_vit.__all__:
        obj = getattr(keras_vit, name)
        assert (obj.__doc__ or "").strip(), name
