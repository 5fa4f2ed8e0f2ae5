"""Runs the examples in the public docstrings (STYLE: they run in the tests)."""

import doctest

import numpy as np
import pytest

import keras_vit
from keras_vit import backend, data, distribute, imagenet, images, inference, layers, models, training, variants
from keras_vit.weights import hub, loading, pretrained, resample

MODULES = [backend, data, distribute, imagenet, images, inference, layers, models, training, variants,
           hub, loading, pretrained, resample]


# The examples of the ViT-L and ViT-H builders build 0.3-0.6 billion random
# weights each (20 of this test's 38 s on a Zen 1), and test_models builds
# each of those models already (their parameter counts): their examples are
# checked to be the template every size function shares, not run again.
_NOT_RUN = {"ViTL16": 1024, "ViTL32": 1024, "ViTH14": 1280}


def _is_the_size_template(test, name, width):
    return [(e.source.strip(), e.want.strip()) for e in test.examples] == [
        (f'model = keras_vit.{name}(include_top=False, pooling="token", weights=None)', ""),
        ("model.output_shape", f"(None, {width})"),
    ]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"np": np, "keras_vit": keras_vit}
    tests = [t for t in finder.find(module, globs=globs) if t.examples]
    if module is models:
        assert _is_the_size_template(next(t for t in tests if t.name.endswith(".ViTB16")), "ViTB16", 768)
        not_run = [t for t in tests if t.name.rsplit(".", 1)[1] in _NOT_RUN]
        assert len(not_run) == len(_NOT_RUN)
        for test in not_run:
            name = test.name.rsplit(".", 1)[1]
            assert _is_the_size_template(test, name, _NOT_RUN[name]), test.name
        tests = [t for t in tests if t not in not_run]
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{module.__name__} has no docstring examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module.__name__}"


def test_every_public_name_has_a_docstring():
    for name in keras_vit.__all__:
        obj = getattr(keras_vit, name)
        assert (obj.__doc__ or "").strip(), name
