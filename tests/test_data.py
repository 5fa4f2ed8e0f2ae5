"""Tests of keras_vit.data: every source, splits, conversion and sharding."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vit import data
from keras_vit import images as vit_images


def _all(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def test_digits_splits_shapes_and_values():
    ds_train, ds_val, ds_test, info = data.load(
        "digits", batch_size=50, splits=("train", "validation", "test"), cache=False
    )
    assert info.num_examples == {"train": 1258, "validation": 180, "test": 359}
    assert sum(info.num_examples.values()) == 1797
    assert info.class_names == [str(i) for i in range(10)] and info.num_classes == 10
    assert info.image_size == (8, 8)
    train_x, train_y = _all(ds_train)
    assert train_x.shape == (1250, 8, 8, 3)  # full batches only for training
    val_x, val_y = _all(ds_val)
    assert val_x.shape == (180, 8, 8, 3) and val_y.shape == (180, 10)
    # Grayscale to RGB: three equal channels; 17 grey levels mapped to [0, 255].
    np.testing.assert_array_equal(val_x[..., 0], val_x[..., 2])
    assert val_x.min() == 0.0 and val_x.max() == 255.0
    np.testing.assert_array_equal(val_y.sum(axis=1), 1.0)
    # The same seed gives the same split; the test split is disjoint from validation.
    _, again, _ = data.load("digits", batch_size=50, cache=False)
    np.testing.assert_array_equal(_all(again)[0], val_x)
    test_x, _ = _all(ds_test)
    val_keys = {x.tobytes() for x in val_x}
    overlap = sum(x.tobytes() in val_keys for x in test_x)
    assert overlap <= 5  # the digits data holds a few exact duplicates


def test_digits_resized_and_int_labels():
    ds_train, ds_val, info = data.load("digits", image_size=16, batch_size=32, label_mode="int")
    images, labels = next(iter(ds_val))
    assert tuple(images.shape) == (32, 16, 16, 3) and info.image_size == (16, 16)
    assert labels.dtype == tf.int32 and 0 <= int(tf.reduce_min(labels)) <= int(tf.reduce_max(labels)) <= 9
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_fashion_mnist_from_debian_files():
    ds_train, ds_test, info = data.load("fashion_mnist", batch_size=1000, splits=("train", "test"))
    assert info.num_examples == {"train": 54000, "validation": 6000, "test": 10000}
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    images, labels = next(iter(ds_test))
    assert tuple(images.shape) == (1000, 28, 28, 3)
    # The first test image of Fashion-MNIST is an ankle boot (label 9).
    assert int(np.argmax(labels[0])) == 9


def test_fashion_mnist_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(data.DataError, match=r"apt-get install dataset-fashion-mnist.*data_dir="):
        data.load("fashion_mnist")


def _write_images(root, classes, size=(12, 10), count=4, fmt="PNG"):
    colours = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif"}[fmt if i % 2 else "PNG"]
            image = Image.new("RGB", size, colours[name])
            image.save(folder / f"{i}.{ext}", format=fmt if i % 2 else "PNG")
    return colours


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF"])
def test_folder_of_class_folders(tmp_path, fmt):
    colours = _write_images(tmp_path, ["cat", "dog", "fox"], count=10, fmt=fmt)
    ds_train, ds_val, info = data.load(tmp_path, image_size=8, batch_size=4, validation_split=0.2,
                                       label_mode="int")
    assert info.class_names == ["cat", "dog", "fox"]
    assert info.num_examples["train"] == 24 and info.num_examples["validation"] == 6
    images, labels = _all(ds_val)
    assert images.shape == (6, 8, 8, 3)
    for image, label in zip(images, labels):
        expected = colours[info.class_names[label]]
        np.testing.assert_allclose(image.mean(axis=(0, 1)), expected, atol=8)


def test_folder_validation_split_holds_every_class_and_is_fixed(tmp_path):
    # Files are listed class by class: an unshuffled split would hold out
    # the last class only.
    _write_images(tmp_path, ["cat", "dog", "fox"], count=20)
    ds_train, ds_val, info = data.load(tmp_path, image_size=8, batch_size=8, validation_split=0.3,
                                       label_mode="int")
    train_labels, val_labels = _all(ds_train)[1], _all(ds_val)[1]
    assert len(val_labels) == 18 and len(train_labels) == 40
    assert set(val_labels.tolist()) == {0, 1, 2} and np.bincount(val_labels).min() >= 3
    assert set(train_labels.tolist()) == {0, 1, 2}
    again = data.load(tmp_path, image_size=8, batch_size=8, validation_split=0.3, label_mode="int")[1]
    assert sorted(_all(again)[1].tolist()) == sorted(val_labels.tolist())


def test_folder_with_split_folders(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], count=6)
    _write_images(tmp_path / "val", ["cat", "dog"], count=2)
    _write_images(tmp_path / "test", ["cat", "dog"], count=3)
    ds_train, ds_val, ds_test, info = data.load(tmp_path, image_size=8, batch_size=2,
                                                splits=("train", "validation", "test"))
    assert info.num_examples == {"train": 12, "validation": 4, "test": 6}
    assert _all(ds_test)[0].shape == (6, 8, 8, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(data.DataError, match=r"Data folder not found: .*nowhere"):
        data.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"holds no class sub-folders"):
        data.load(tmp_path / "empty", image_size=8)


def test_tfds_dataset_prepared_in_data_dir(tmp_path):
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(6, 6, 1)),
                    "label": tfds.features.ClassLabel(names=["dark", "light"]),
                }),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40), "test": self._generate_examples(10)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((6, 6, 1), 20 + 200 * (i % 2), np.uint8), "label": i % 2}

    TinyShapes(data_dir=str(tmp_path)).download_and_prepare()
    ds_train, ds_val, ds_test, info = data.load("tiny_shapes", data_dir=tmp_path, batch_size=5,
                                                label_mode="int", splits=("train", "validation", "test"))
    assert info.class_names == ["dark", "light"]
    assert info.num_examples == {"train": 36, "validation": 4, "test": 10}
    images, labels = _all(ds_test)
    assert images.shape == (10, 6, 6, 3)
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.where(labels == 1, 220.0, 20.0))


def test_unknown_source_never_downloads(tmp_path):
    with pytest.raises(data.DataError, match=r"Unknown data source 'no_such_set'.*download=True"):
        data.load("no_such_set", data_dir=tmp_path)


def test_numpy_arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 4, 4)).astype("uint8")
    y = np.arange(50) % 5
    ds_train, ds_val, info = data.load((x, y), batch_size=10, validation_split=0.2, label_mode="int")
    assert info.num_examples == {"train": 40, "validation": 10, "test": 10}
    assert info.num_classes == 5 and info.image_size == (4, 4)
    val_x, val_y = _all(ds_val)
    index = {x[i].tobytes(): y[i] for i in range(50)}
    for image, label in zip(val_x, val_y):
        assert index[image[..., 0].astype("uint8").tobytes()] == label
    with pytest.raises(ValueError, match=r"keys among"):
        data.load({"training": (x, y)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=0), r"image_size=0"),
        (dict(image_size=(8, 8, 3)), r"image_size=\(8, 8, 3\)"),
        (dict(batch_size=0), r"batch_size=0"),
        (dict(label_mode="binary"), r"label_mode='binary'"),
        (dict(validation_split=1.5), r"validation_split=1.5"),
        (dict(splits=("training",)), r"'training'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load("digits", **kwargs)


def test_each_input_pipeline_reads_its_own_shard():
    shards = []
    for pipeline in (0, 1):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        _, ds_val, _ = data.load("digits", batch_size=20, input_context=context, cache=False)
        images, _ = _all(ds_val)
        assert len(images) == 90  # half of the 180 validation images
        shards.append({x.tobytes() for x in images})
    assert len(shards[0] & shards[1]) <= 2  # disjoint but for duplicate digits


def test_augmentation_applies_to_training_batches_only():
    calls = []

    def augment(images, labels):
        calls.append(True)
        return images * 0.0, labels

    ds_train, ds_val, _ = data.load("digits", batch_size=32, augmentation=augment)
    assert float(tf.reduce_max(next(iter(ds_train))[0])) == 0.0
    assert float(tf.reduce_max(next(iter(ds_val))[0])) > 0.0
    assert calls


def test_load_images(tmp_path):
    Image.new("L", (20, 10), 100).save(tmp_path / "grey.png")
    Image.new("RGBA", (10, 10), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    images = vit_images.load_images([tmp_path / "grey.png", tmp_path / "rgba.png"], 8)
    assert images.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(images[0], 100.0, atol=0.5)
    np.testing.assert_allclose(images[1].mean(axis=(0, 1)), [10, 20, 30], atol=0.5)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(vit_images.DataError, match=r"Cannot read .*bad.jpg as an image: unknown image format"):
        vit_images.load_images([tmp_path / "bad.jpg"], 8)
    with pytest.raises(vit_images.DataError, match=r"Image not found: .*missing.png"):
        vit_images.load_images([tmp_path / "missing.png"], 8)


def test_the_numpy_pipeline_gives_the_tf_data_batches():
    """pipeline="numpy" (what runs without TensorFlow): ArrayBatches with
    the tf.data pipeline's evaluation batches, a seeded reshuffle per epoch
    and full training batches."""
    kwargs = dict(image_size=16, batch_size=64, splits=("train", "validation", "test"))
    *tf_splits, _ = data.load("digits", **kwargs)
    train, validation, test, info = data.load("digits", pipeline="numpy", **kwargs)
    assert type(validation).__name__ == "ArrayBatches" and info.num_examples["test"] == 359
    for batches, reference in zip((validation, test), tf_splits[1:]):
        images, labels = map(np.concatenate, zip(*batches.as_numpy_iterator()))
        tf_images, tf_labels = _all(reference)
        np.testing.assert_allclose(images, tf_images, atol=1e-4)
        np.testing.assert_array_equal(labels, tf_labels)
    assert len(train) == 1258 // 64 and all(len(train[i][0]) == 64 for i in range(len(train)))
    first = train[0][0]
    np.testing.assert_array_equal(data.load("digits", pipeline="numpy", **kwargs)[0][0][0], first)
    train.on_epoch_end()
    assert not np.array_equal(train[0][0], first)
    # Padded for Keras' distribution API: zero-weight rows up to a multiple.
    images, labels, weights = test.padded(3)[len(test) - 1]
    assert len(images) == len(labels) == len(weights) == 39 and weights.sum() == 359 - 5 * 64
    with pytest.raises(IndexError):
        test[len(test)]


def test_the_numpy_pipeline_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match=r"pipeline must be one of \('auto', 'tf.data', 'numpy'\), "
                                         r"received pipeline='arrays'"):
        data.load("digits", pipeline="arrays")
    with pytest.raises(ValueError, match=r"input_context \(tf.distribute\) needs the tf.data pipeline"):
        data.load("digits", pipeline="numpy", input_context=tf.distribute.InputContext())
    with pytest.raises(ValueError, match=r"folders and TFDS data sets are read by tf.data.*pipeline='auto'"):
        data.load(str(tmp_path), image_size=8, pipeline="numpy")


@pytest.mark.parametrize("fmt, mode, tolerance", [
    ("PNG", "RGB", 0.0), ("PNG", "I;16", 0.5), ("GIF", "P", 0.0), ("BMP", "RGB", 0.0),
    ("WEBP", "RGB", 0.0), ("JPEG", "RGB", 6.0),
])
def test_pillow_decodes_as_tensorflow(tmp_path, fmt, mode, tolerance):
    """Without TensorFlow, load_images decodes with Pillow: the same pixels
    (JPEG decoders may differ by a few levels)."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (12, 16)).astype("uint16"))
    else:
        image = Image.fromarray(rng.integers(0, 256, (12, 16, 3)).astype("uint8")).convert(mode)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    pillow = vit_images._pillow_pixels(path, vit_images.MAX_IMAGE_PIXELS)
    decoded = vit_images.decode_image(tf.io.read_file(str(path)), (12, 16)).numpy()
    assert pillow.shape == (12, 16, 3)
    assert np.abs(pillow - decoded).max() <= tolerance
    np.testing.assert_allclose(vit_images.array_to_pixels(pillow[None], (6, 9))[0],
                               vit_images.to_pixels(pillow, (6, 9)).numpy(), atol=1e-4)


def test_pillow_refuses_bombs_and_non_images_before_decoding(tmp_path):
    Image.new("1", (10_000, 9_000)).save(tmp_path / "bomb.png")  # 90 megapixels in a small file
    with pytest.raises(vit_images.DataError, match=r"bomb.png as an image: image of 90000000 pixels refused: "
                                                    r"more than the limit of 89478485 \(max_pixels\)"):
        vit_images._pillow_pixels(tmp_path / "bomb.png", vit_images.MAX_IMAGE_PIXELS)
    (tmp_path / "text.jpg").write_bytes(b"not an image")
    with pytest.raises(vit_images.DataError, match=r"Cannot read .*text.jpg as an image"):
        vit_images._pillow_pixels(tmp_path / "text.jpg", vit_images.MAX_IMAGE_PIXELS)
    Image.new("RGB", (4, 4)).save(tmp_path / "image.tiff")
    with pytest.raises(vit_images.DataError, match=r"unknown image format: expected one of JPEG, PNG, GIF"):
        vit_images._pillow_pixels(tmp_path / "image.tiff", vit_images.MAX_IMAGE_PIXELS)


def test_folder_follows_symlinked_folders_once_and_never_opens_a_fifo(tmp_path):
    """Issue 30: symlinked class folders were dropped and a FIFO named
    x.jpg hung the scan. Links are followed (a loop back up the tree walked
    once), and a non-regular file is reported by name, never opened."""
    import os
    import warnings

    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _write_images(root, ["cat"], count=6, fmt="PNG")
    _write_images(elsewhere, ["dog"], count=6, fmt="PNG")
    (root / "dog").symlink_to(elsewhere / "dog", target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)
    _, _, info = data.load(root, image_size=8, validation_split=0.5)
    assert info.class_names == ["cat", "dog"]
    assert info.num_examples["train"] + info.num_examples["validation"] == 12  # the loop walked once
    os.mkfifo(root / "cat" / "x.jpg")
    with pytest.raises(data.DataError, match=r"1 of 13 image files in .* cannot be used: .*cat/x.jpg: not a "
                                             r"regular file \(a FIFO, socket or device\): never opened"):
        data.load(root, image_size=8, validation_split=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, info = data.load(root, image_size=8, validation_split=0.5, bad_images="skip")
    assert info.num_examples["train"] + info.num_examples["validation"] == 12
    assert any("x.jpg" in str(w.message) for w in caught)
