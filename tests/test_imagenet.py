"""ImageNet class names and `decode_predictions` (keras.applications' format)."""

import numpy as np
import pytest

import keras_vit
from keras_vit import imagenet

# Entries of keras.applications' imagenet_class_index.json (the file Keras
# downloads for its decode_predictions), including its duplicate names.
KERAS_CLASS_INDEX = {
    0: ("n01440764", "tench"),
    1: ("n01443537", "goldfish"),
    2: ("n01484850", "great_white_shark"),
    134: ("n02012849", "crane"),
    281: ("n02123045", "tabby"),
    282: ("n02123159", "tiger_cat"),
    517: ("n03126707", "crane"),
    638: ("n03710637", "maillot"),
    639: ("n03710721", "maillot"),
    999: ("n15075141", "toilet_tissue"),
}


def test_imagenet_1k_names_are_keras_applications():
    ids, names = imagenet.wnids(), imagenet.class_names()
    assert len(ids) == len(names) == len(set(ids)) == 1000
    for index, (wnid, name) in KERAS_CLASS_INDEX.items():
        assert (ids[index], names[index]) == (wnid, name)
    assert len(set(names)) == 998  # "crane" and "maillot" twice, as in Keras
    assert imagenet.descriptions()[281] == "tabby, tabby cat"


def test_imagenet_21k_names():
    ids, names = imagenet.wnids(21843), imagenet.class_names(21843)
    assert len(ids) == len(names) == len(set(ids)) == 21843
    assert ids[:3] == ("n00004475", "n00005787", "n00006024")  # Google's order (timm's imagenet21k_goog_synsets.txt)
    # Every ImageNet-1k class but one (n04399382, "teddy") is among them.
    assert set(imagenet.wnids()) - set(ids) == {"n04399382"}
    index = ids.index("n02123045")
    assert names[index] == "tabby"


def test_decode_predictions_format():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [281, 282, 5]] = [0.5, 0.25, 0.125]
    preds[1, 999] = 2.0
    decoded = keras_vit.decode_predictions(preds, top=3)
    assert decoded[0] == [("n02123045", "tabby", 0.5), ("n02123159", "tiger_cat", 0.25),
                          ("n01496331", "electric_ray", 0.125)]
    assert decoded[1][0] == ("n15075141", "toilet_tissue", 2.0)
    assert [len(row) for row in keras_vit.decode_predictions(preds)] == [5, 5]
    big = np.zeros((1, 21843), "float32")
    big[0, 7] = 1.0
    assert keras_vit.decode_predictions(big, top=1) == [
        [(imagenet.wnids(21843)[7], imagenet.class_names(21843)[7], 1.0)]]


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (2, 1000, 1)])
def test_decode_predictions_names_a_wrong_shape(shape):
    with pytest.raises(ValueError, match=f"received an array of shape {shape}".replace("(", r"\(").replace(")", r"\)")):
        keras_vit.decode_predictions(np.zeros(shape))


@pytest.mark.parametrize("top", [0, -1, 1.5, True])
def test_decode_predictions_refuses_a_bad_top(top):
    with pytest.raises(ValueError, match=f"top must be a positive int, received top={top!r}"):
        keras_vit.decode_predictions(np.zeros((1, 1000)), top=top)


def test_unknown_class_count():
    with pytest.raises(ValueError, match="not of 10 classes"):
        imagenet.class_names(10)
