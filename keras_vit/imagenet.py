"""ImageNet class names and `decode_predictions`, as keras.applications.

The package carries the WordNet ids and names of ImageNet-1k's 1,000 classes
(in the order of the class indices every ImageNet-1k checkpoint uses) and of
the 21,843 classes of Google's ImageNet-21k checkpoints (the order of
`imagenet21k_goog_synsets.txt`, which timm carries for these weights). The
names are WordNet's lemmas; a class's short name is its first lemma with
spaces written as underscores, which is keras.applications' naming (index
281 is `("n02123045", "tabby")`).
"""

import functools
import importlib.resources

import numpy as np

IMAGENET_1K = 1000
IMAGENET_21K = 21843
_FILES = {IMAGENET_1K: "imagenet1k_classes.txt", IMAGENET_21K: "imagenet21k_classes.txt"}


@functools.lru_cache(maxsize=None)
def _table(classes):
    if classes not in _FILES:
        raise ValueError(
            f"keras_vit knows the class names of ImageNet-1k ({IMAGENET_1K} classes) and "
            f"ImageNet-21k ({IMAGENET_21K} classes), not of {classes!r} classes."
        )
    text = importlib.resources.files("keras_vit").joinpath("_data", _FILES[classes]).read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line]
    wnids = tuple(row[0] for row in rows)
    lemmas = tuple(row[1] for row in rows)
    names = tuple(lemma.split(", ")[0].replace(" ", "_") for lemma in lemmas)
    return wnids, names, lemmas


def wnids(classes=IMAGENET_1K):
    """The WordNet ids of ImageNet's classes, in class-index order.

    Args:
        classes: `1000` (ImageNet-1k) or `21843` (ImageNet-21k).

    Returns:
        A tuple of strings such as `"n01440764"`.

    Example:

    >>> keras_vit.imagenet.wnids()[281]
    'n02123045'
    """
    return _table(classes)[0]


def class_names(classes=IMAGENET_1K):
    """The short names of ImageNet's classes, as keras.applications names them.

    Args:
        classes: `1000` (ImageNet-1k) or `21843` (ImageNet-21k).

    Returns:
        A tuple of strings (a class's first WordNet lemma, spaces as
        underscores).

    Example:

    >>> keras_vit.imagenet.class_names()[281]
    'tabby'
    >>> len(keras_vit.imagenet.class_names(21843))
    21843
    """
    return _table(classes)[1]


def descriptions(classes=IMAGENET_1K):
    """Every WordNet lemma of each class, comma-separated (`"tabby, tabby cat"`).

    Args:
        classes: `1000` (ImageNet-1k) or `21843` (ImageNet-21k).

    Returns:
        A tuple of strings, in class-index order.
    """
    return _table(classes)[2]


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into `(wnid, name, score)` tuples.

    The format of `keras.applications.imagenet_utils.decode_predictions`: one
    list per image, best first. Predictions with 1,000 columns are read as
    ImageNet-1k classes, with 21,843 as ImageNet-21k classes.

    Args:
        preds: array of shape `(batch, 1000)` or `(batch, 21843)`
            (probabilities or logits; the scores are returned as they are).
        top: how many classes to return per image.

    Returns:
        A list of lists of `(wnid, class_name, score)` tuples.

    Example:

    >>> preds = np.zeros((1, 1000), "float32")
    >>> preds[0, 281] = 0.5
    >>> keras_vit.decode_predictions(preds, top=1)
    [[('n02123045', 'tabby', 0.5)]]
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int, received top={top!r}.")
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] not in _FILES:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet predictions, an array of shape "
            f"(samples, {IMAGENET_1K}) or (samples, {IMAGENET_21K}); received an array of "
            f"shape {preds.shape}."
        )
    ids, names, _ = _table(preds.shape[1])
    results = []
    for row in preds.astype("float32"):
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(ids[i], names[i], float(row[i])) for i in best])
    return results
