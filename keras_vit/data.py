"""tf.data input pipelines for training and evaluating ViTs.

`load(source, ...)` returns batched `tf.data.Dataset`s of
`(images, labels)`: images float32 in [0, 255] with 3 channels at
`image_size` (the models built for training normalise them with their
`include_preprocessing` layer), labels one-hot (`label_mode="categorical"`,
what label smoothing, MixUp and CutMix need) or integers (`"int"`).

Sources, by name or value:

- `"digits"`: scikit-learn's bundled 8x8 digits (the embedded default),
  split 70/10/20 into train/validation/test with a fixed seed;
- `"fashion_mnist"`: Debian's `dataset-fashion-mnist` files if present,
  else a TFDS `data_dir` that already holds it; never the network;
- a directory with one sub-folder per class (JPEG, PNG, GIF, BMP, WebP), or
  with `train/`, `validation/` (or `val/`) and `test/` split folders each
  holding class folders; every file is decoded once up front (by
  `keras_vit.images`, with its size checks), and files that cannot be used
  fail the load or are skipped (`bad_images`);
- the name of any TFDS data set already prepared in `data_dir`;
- NumPy arrays: `(images, labels)` or `{"train": (images, labels), ...}`.

Without TensorFlow (Keras on JAX or PyTorch alone), or with
`pipeline="numpy"`, the sources held as NumPy arrays (`"digits"`,
`"fashion_mnist"` from Debian's files, arrays) come as `ArrayBatches`, a
`keras.utils.PyDataset` that shuffles, converts, augments (the same Keras
layers, on the backend) and batches as the tf.data pipeline does; folders
and TFDS data sets need tf.data.

One reader per source, then one pipeline; kept in one module (about 480
lines) so that `load`'s dispatch and every source it names read together.
"""

import dataclasses
import gzip
import os
import pathlib
import stat
import warnings

import keras
import numpy as np

from keras_vit import images as vit_images
from keras_vit._backend import FRAMEWORKS, require_tensorflow, tensorflow_installed

if tensorflow_installed():
    import tensorflow as tf
else:  # NumPy-array sources only (ArrayBatches)
    tf = None
from keras_vit.images import DataError  # raised by `load` too: one class for both modules

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPLITS = ("train", "validation", "test")
_CACHE_LIMIT_BYTES = 2 * 1024**3  # cache decoded images when they fit in this
_DIGITS_SPLIT = (0.7, 0.1, 0.2)
_SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
PIPELINES = ("auto", "tf.data", "numpy")

@dataclasses.dataclass
class DatasetInfo:
    """What a training run needs to know about its data.

    Attributes:
        name: the source's name (`"digits"`, a folder path, ...).
        class_names: class names in label order; they travel with the model.
        image_size: `(height, width)` of the images the pipelines yield.
        num_examples: examples per split, e.g. `{"train": 1257, ...}`.
    """

    name: str
    class_names: list
    image_size: tuple
    num_examples: dict

    @property
    def num_classes(self):
        return len(self.class_names)

    def to_json(self):
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "num_examples": dict(self.num_examples),
        }


# ---------------------------------------------------------------------------
# Reading sources into NumPy arrays (small data) or tf.data (folders, TFDS)
# ---------------------------------------------------------------------------


def _split_arrays(images, labels, fractions, seed):
    order = np.random.default_rng(seed).permutation(len(images))
    n_train = int(round(fractions[0] * len(images)))
    n_val = int(round(fractions[1] * len(images)))
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return {split: (images[idx], labels[idx]) for split, idx in zip(SPLITS, parts)}


def _digits(seed):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 17 grey levels (0..16) -> [0, 255]
    images = np.round(digits.images * (255.0 / 16.0)).astype("uint8")[..., None]
    labels = digits.target.astype("int64")
    splits = _split_arrays(images, labels, _DIGITS_SPLIT, seed)
    return splits, [str(i) for i in range(10)]


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(data_dir, validation_split, seed):
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    if all((DEBIAN_FASHION_MNIST / name).is_file() for pair in files.values() for name in pair):
        arrays = {
            split: (
                _read_idx(DEBIAN_FASHION_MNIST / images)[..., None],
                _read_idx(DEBIAN_FASHION_MNIST / labels).astype("int64"),
            )
            for split, (images, labels) in files.items()
        }
        train_images, train_labels = arrays["train"]
        order = np.random.default_rng(seed).permutation(len(train_images))
        n_val = int(round(validation_split * len(train_images)))
        val, train = order[:n_val], order[n_val:]
        return {
            "train": (train_images[train], train_labels[train]),
            "validation": (train_images[val], train_labels[val]),
            "test": arrays["test"],
        }, list(FASHION_MNIST_CLASSES)
    if data_dir is not None and _tfds_directory(data_dir, "fashion_mnist") is not None:
        return None, None
    raise DataError(
        "Fashion-MNIST not found: install Debian's package "
        "(apt-get install dataset-fashion-mnist, files in "
        f"{DEBIAN_FASHION_MNIST}) or pass data_dir= (--data-dir) holding a "
        "prepared TFDS 'fashion_mnist'. keras_vit never downloads it."
    )


def _tfds_directory(data_dir, name):
    """The newest prepared version folder of TFDS data set `name`, or None."""
    root = pathlib.Path(data_dir) / name
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.rglob("dataset_info.json")), key=lambda p: str(p.parent)
    )
    return candidates[-1].parent if candidates else None


def _from_tfds(name, data_dir, validation_split, download):
    import tensorflow_datasets as tfds

    directory = _tfds_directory(data_dir, name) if data_dir else None
    if directory is None:
        if not download:
            raise DataError(
                f"Unknown data source {name!r}: not 'digits', 'fashion_mnist', a "
                "folder, or a TFDS data set prepared in "
                f"data_dir={str(data_dir) if data_dir else None!r} (pass "
                "download=True / --download to let TFDS fetch it)."
            )
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
    else:
        builder = tfds.builder_from_directory(str(directory))
    splits = builder.info.splits
    label_feature = builder.info.features["label"]
    class_names = list(getattr(label_feature, "names", None) or map(str, range(label_feature.num_classes)))
    image_key = "image" if "image" in builder.info.features else next(
        k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)
    )
    if "validation" in splits:
        split_names = {"train": "train", "validation": "validation"}
    else:
        percent = int(round(100 * (1 - validation_split)))
        split_names = {"train": f"train[:{percent}%]", "validation": f"train[{percent}%:]"}
    split_names["test"] = "test" if "test" in splits else split_names["validation"]
    datasets, counts = {}, {}
    for split, spec in split_names.items():
        ds = builder.as_dataset(split=spec, shuffle_files=False)
        datasets[split] = ds.map(lambda ex: (ex[image_key], ex["label"]))
        counts[split] = int(splits[spec].num_examples)
    return datasets, counts, class_names


BAD_IMAGES = ("error", "skip")


def _list_class_folder(directory):
    """Class names (sorted sub-folder names) and the image files below each,
    in a fixed order, as Keras' directory loader lists them, and
    `{path: reason}` for files named like images that are not regular files.

    Symlinked folders are followed, each real folder once (a link back up
    the tree would otherwise be walked forever). A FIFO, socket or device
    named `x.jpg` is never opened: reading one can block for ever.
    """
    class_names = sorted(p.name for p in directory.iterdir() if p.is_dir())
    files, labels, irregular = [], [], {}
    for label, name in enumerate(class_names):
        seen = set()
        for root, dirs, names in os.walk(directory / name, followlinks=True):
            info = os.stat(root)
            if (info.st_dev, info.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((info.st_dev, info.st_ino))
            dirs.sort()
            for file_name in sorted(names):
                if file_name.lower().endswith(vit_images.IMAGE_EXTENSIONS):
                    file_path = os.path.join(root, file_name)
                    try:
                        regular = stat.S_ISREG(os.stat(file_path).st_mode)
                    except OSError as error:  # a broken link
                        irregular[file_path] = f"cannot be read ({error.strerror})"
                        continue
                    if not regular:
                        irregular[file_path] = "not a regular file (a FIFO, socket or device): never opened"
                        continue
                    files.append(file_path)
                    labels.append(label)
    return class_names, files, labels, irregular


def _report_bad_images(root, bad, total, bad_images):
    listed = "; ".join(f"{path}: {reason}" for path, reason in sorted(bad.items())[:10])
    more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
    message = f"{len(bad)} of {total} image files in {root} cannot be used: {listed}{more}"
    if bad_images == "error":
        raise DataError(
            f"{message}. Fix or remove them, or pass bad_images='skip' (--bad-images skip) "
            "to train without them."
        )
    warnings.warn(f"{message}. They are skipped (bad_images='skip').", stacklevel=4)


def _from_folder(path, image_size, validation_split, seed, bad_images="error",
                 max_pixels=vit_images.MAX_IMAGE_PIXELS):
    # Listed and read here rather than with keras.utils.image_dataset_from_directory
    # so that every file is checked before training starts (a bad file must
    # not stop a run mid-epoch) and decoded with the same size limit as
    # everything else. The listing and split follow Keras' loader.
    if image_size is None:
        raise ValueError(f"{path}: images read from a folder need image_size= (--image-size).")
    subdirs = {p.name for p in path.iterdir() if p.is_dir()}
    split_dirs = {
        split: next((path / n for n in names if n in subdirs), None)
        for split, names in _SPLIT_FOLDERS.items()
    }
    listed, irregular = {}, {}
    if split_dirs["train"] is not None:
        for split, directory in split_dirs.items():
            if directory is not None:
                *listed[split], found = _list_class_folder(directory)
                irregular.update(found)
        class_names = listed["train"][0]
        for split, (names, _, _) in listed.items():
            if names != class_names:
                raise DataError(
                    f"{path}: the class folders of '{split}' ({names}) "
                    f"differ from those of 'train' ({class_names})."
                )
        if "validation" not in listed:
            raise DataError(f"{path} has a train/ folder but no validation/ (or val/) folder.")
        files = {split: (f, labels) for split, (_, f, labels) in listed.items()}
    else:
        if not subdirs:
            raise DataError(f"{path} holds no class sub-folders (one per class, with images).")
        class_names, all_files, all_labels, found = _list_class_folder(path)
        irregular.update(found)
        files = {"train": (all_files, all_labels)}
    every = [f for split_files, _ in files.values() for f in split_files]
    if not every and not irregular:
        raise DataError(f"{path} holds no image files ({', '.join(vit_images.IMAGE_EXTENSIONS)}).")
    bad = {**irregular, **vit_images.scan_images(every, max_pixels)}
    if bad:
        _report_bad_images(path, bad, len(every) + len(irregular), bad_images)
        files = {
            split: tuple(map(list, zip(*[(f, y) for f, y in zip(*pair) if f not in bad]))) or ([], [])
            for split, pair in files.items()
        }
    if "validation" not in files:
        # A seeded shuffle before the split (as Keras' loader with shuffle=True):
        # unshuffled, the file list is sorted by class and the validation
        # files would be the last classes only.
        all_files, all_labels = files["train"]
        order = np.random.RandomState(seed).permutation(len(all_files))
        n_val = int(validation_split * len(all_files))
        cut = len(all_files) - n_val
        files = {
            "train": ([all_files[i] for i in order[:cut]], [all_labels[i] for i in order[:cut]]),
            "validation": ([all_files[i] for i in order[cut:]], [all_labels[i] for i in order[cut:]]),
        }
    for split, (split_files, _) in files.items():
        if not split_files:
            raise DataError(f"{path}: no usable images for the '{split}' split.")

    def read(file_path, label):
        return vit_images.decode_image(tf.io.read_file(file_path), image_size, max_pixels), label

    datasets = {
        split: tf.data.Dataset.from_tensor_slices(
            (tf.constant(split_files, tf.string), tf.constant(labels, tf.int64))
        ).map(read, num_parallel_calls=tf.data.AUTOTUNE)
        for split, (split_files, labels) in files.items()
    }
    counts = {split: len(split_files) for split, (split_files, _) in files.items()}
    if "test" not in datasets:
        datasets["test"], counts["test"] = datasets["validation"], counts["validation"]
    return datasets, counts, class_names


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


def _pipeline(ds, num_examples, image_size, num_classes, batch_size, training, label_mode,
              seed, cache, augmentation, input_context, options):
    if input_context is not None and input_context.num_input_pipelines > 1:
        # Each worker reads its own shard of the examples.
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size) * (
            input_context.num_replicas_in_sync // input_context.num_input_pipelines
        )

    def convert(image, label):
        label = tf.cast(label, tf.int32)
        if label_mode == "categorical":
            label = tf.one_hot(label, num_classes)
        return vit_images.to_pixels(image, image_size), label

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    size = num_examples * image_size[0] * image_size[1] * 3 * 4
    if cache and size <= _CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(num_examples, 50_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    if training and augmentation is not None:
        ds = ds.map(augmentation, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options) if options is not None else ds


def _read(source, image_size, validation_split, seed, data_dir, download, bad_images, numpy_only=False):
    """Returns ({split: tf.data of (image, int label)}, counts, class_names, name, native size)."""
    if isinstance(source, tuple) or isinstance(source, dict):
        arrays = source if isinstance(source, dict) else {"train": source}
        arrays = {k: (np.asarray(x), np.asarray(y)) for k, (x, y) in arrays.items()}
        unknown = set(arrays) - set(SPLITS)
        if unknown or "train" not in arrays:
            raise ValueError(
                f"NumPy data must be (images, labels) or a dict with keys among {SPLITS} "
                f"including 'train'; received keys {sorted(arrays)}."
            )
        if "validation" not in arrays:
            images, labels = arrays["train"]
            order = np.random.default_rng(seed).permutation(len(images))
            n_val = max(1, int(round(validation_split * len(images))))
            arrays["validation"] = (images[order[:n_val]], labels[order[:n_val]])
            arrays["train"] = (images[order[n_val:]], labels[order[n_val:]])
        arrays.setdefault("test", arrays["validation"])
        for split, (x, y) in arrays.items():
            if x.ndim == 3:
                arrays[split] = (x[..., None], y)
            elif x.ndim != 4 or len(x) != len(y):
                raise ValueError(
                    f"NumPy {split} images must have shape (n, height, width[, channels]) "
                    f"with one label each; received images {x.shape} and labels {y.shape}."
                )
        num_classes = int(max(int(y.max()) for _, y in arrays.values())) + 1
        return arrays, [str(i) for i in range(num_classes)], "arrays"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be a data set name, a folder, or NumPy (images, labels); "
            f"received {type(source).__name__}."
        )
    name = str(source)
    if name == "digits":
        arrays, class_names = _digits(seed)
        return arrays, class_names, name
    if name in ("fashion_mnist", "fashion-mnist"):
        arrays, class_names = _fashion_mnist(data_dir, validation_split, seed)
        if arrays is not None:
            return arrays, class_names, "fashion_mnist"
        name = "fashion_mnist"
    if numpy_only:
        message = (f"data source {name!r}: folders and TFDS data sets are read by tf.data, which "
                   "needs TensorFlow; the NumPy pipeline reads 'digits', 'fashion_mnist' (Debian's "
                   "files) and NumPy arrays")
        if not tensorflow_installed():
            raise ImportError(f"{message}. Install TensorFlow: {FRAMEWORKS['tensorflow'][1]}.")
        raise ValueError(f"{message}: use pipeline='auto' or 'tf.data' for it.")
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        return _from_folder(path, image_size, validation_split, seed, bad_images), None, str(path)
    if os.sep in name or name.startswith("."):
        raise DataError(f"Data folder not found: {name}")
    return _from_tfds(name, data_dir, validation_split, download), None, name


def load(
    source="digits",
    image_size=None,
    batch_size=128,
    validation_split=0.1,
    seed=0,
    split_seed=0,
    data_dir=None,
    download=False,
    label_mode="categorical",
    augmentation=None,
    cache=True,
    input_context=None,
    splits=("train", "validation"),
    bad_images="error",
    pipeline="auto",
):
    """Loads a data set as batched tf.data pipelines (or `ArrayBatches`).

    Args:
        source: `"digits"`, `"fashion_mnist"`, a folder, a TFDS name prepared
            in `data_dir`, or NumPy `(images, labels)` / `{split: (images,
            labels)}`.
        image_size: int or `(height, width)` the images are resized to;
            `None` keeps the source's own size (folders need one).
        batch_size: the global batch size.
        validation_split: fraction of the training data held out for
            validation when the source has no validation split.
        seed: seed of the shuffling.
        split_seed: seed of the train/validation/test split, fixed (0) by
            default so that every run of a recipe is tested on the same
            images whatever its training seed.
        data_dir: a TFDS data directory holding prepared data sets.
        download: let TFDS download a data set missing from `data_dir`.
        label_mode: `"categorical"` (one-hot, default) or `"int"`.
        augmentation: a callable `(images, labels) -> (images, labels)` mapped
            over training batches (see `keras_vit.training.augmentation`).
        cache: cache decoded images in memory when they fit (2 GiB).
        input_context: a `tf.distribute.InputContext`: each input pipeline
            reads its own shard and batches per worker.
        splits: the splits to return, among `"train"`, `"validation"`,
            `"test"`.
        bad_images: what to do when files of a folder data set cannot be
            read as images (every file is decoded once before anything
            else): `"error"` (default) raises `DataError` naming them;
            `"skip"` warns, naming them, and leaves them out.
        pipeline: `"tf.data"`, `"numpy"` (`ArrayBatches`, a
            `keras.utils.PyDataset`: NumPy-array sources only, no
            `input_context`), or `"auto"` (default): tf.data when
            TensorFlow is installed, else NumPy.

    Returns:
        The requested datasets in order, followed by a `DatasetInfo`:
        `(ds_train, ds_val, info)` by default.

    Example:

    >>> ds_train, ds_val, info = keras_vit.data.load("digits", batch_size=32)
    >>> info.num_classes, info.image_size, info.num_examples["train"]
    (10, (8, 8), 1258)
    >>> images, labels = next(iter(ds_train))
    >>> images.shape, labels.shape
    (TensorShape([32, 8, 8, 3]), TensorShape([32, 10]))
    """
    image_size = vit_images.check_image_size(image_size)
    if label_mode not in ("categorical", "int"):
        raise ValueError(f"label_mode must be 'categorical' or 'int', received label_mode={label_mode!r}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, received batch_size={batch_size!r}.")
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), received validation_split={validation_split!r}.")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits must be among {SPLITS}, received {split!r}.")
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGES}, received bad_images={bad_images!r}.")

    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, received pipeline={pipeline!r}.")
    if pipeline == "tf.data":
        require_tensorflow("keras_vit.data.load(pipeline='tf.data')")
    numpy_only = pipeline == "numpy" or not tensorflow_installed()
    if numpy_only and input_context is not None:
        raise ValueError("input_context (tf.distribute) needs the tf.data pipeline; "
                         f"received pipeline={pipeline!r}" + ("" if tensorflow_installed()
                                                              else " without TensorFlow installed") + ".")
    result, class_names, name = _read(source, image_size, validation_split, split_seed, data_dir,
                                      download, bad_images, numpy_only)
    if numpy_only:
        image_size = image_size or tuple(result["train"][0].shape[1:3])
        counts = {split: len(x) for split, (x, _) in result.items()}
        info = DatasetInfo(name=name, class_names=list(class_names), image_size=image_size,
                           num_examples=counts)
        outputs = [
            ArrayBatches(*result[split], image_size=image_size, num_classes=info.num_classes,
                         batch_size=batch_size, training=split == "train", label_mode=label_mode,
                         seed=seed, augmentation=augmentation if split == "train" else None)
            for split in splits
        ]
        return (*outputs, info)
    if isinstance(result, dict):  # NumPy arrays per split
        native = tuple(result["train"][0].shape[1:3])
        image_size = image_size or native
        counts = {split: len(x) for split, (x, _) in result.items()}
        datasets = {
            split: tf.data.Dataset.from_tensor_slices((x, y)) for split, (x, y) in result.items()
        }
    else:
        datasets, counts, class_names = result
        if image_size is None:
            spec = datasets["train"].element_spec[0]
            if spec.shape[0] is None or spec.shape[1] is None:
                raise ValueError(f"{name}: images of varying size need image_size=.")
            image_size = tuple(int(v) for v in spec.shape[:2])
    info = DatasetInfo(name=name, class_names=list(class_names), image_size=image_size,
                       num_examples=counts)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if input_context is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    outputs = [
        _pipeline(
            datasets[split], counts[split], image_size, info.num_classes, batch_size,
            training=(split == "train"), label_mode=label_mode, seed=seed, cache=cache,
            augmentation=augmentation if split == "train" else None,
            input_context=input_context, options=options,
        )
        for split in splits
    ]
    return (*outputs, info)


class ArrayBatches(keras.utils.PyDataset):
    """Batches of one NumPy split for `model.fit` / `evaluate` / `predict`
    on any Keras backend, without TensorFlow: what `load` returns with
    `pipeline="numpy"`, or without TensorFlow installed.

    As the tf.data pipeline: images float32 RGB in [0, 255] at
    `image_size` (`keras_vit.images.array_to_pixels`), labels one-hot or
    int; a training split is reshuffled every epoch (seeded), drops its
    last partial batch and is augmented per batch by `augmentation` (the
    same Keras layers, run on the backend); other splits keep every
    example, in order. Written as a `keras.utils.PyDataset` (Keras' own
    interface for Python data on every backend), one process and thread.

    Args:
        images: `(n, height, width, channels)` array, values in [0, 255].
        labels: `(n,)` int labels.
        image_size: `(height, width)` of the batches.
        num_classes: for one-hot labels.
        batch_size: rows per batch.
        training: shuffle, drop the remainder and augment.
        label_mode: `"categorical"` or `"int"`.
        seed: shuffling seed.
        augmentation: `(images, labels) -> (images, labels)` or None.
        pad_to: pad every batch to a multiple of this many rows with
            zero-weight rows and yield `(images, labels, weights)` (see
            `keras_vit.distribute.pad_batches`); 1: no padding, no weights.
    """

    def __init__(self, images, labels, image_size, num_classes, batch_size, training=False,
                 label_mode="categorical", seed=0, augmentation=None, pad_to=1):
        super().__init__()
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} and {len(labels)}.")
        self.images, self.labels = images, np.asarray(labels).astype("int64")
        self.image_size, self.num_classes = tuple(image_size), int(num_classes)
        self.batch_size, self.training, self.label_mode = int(batch_size), bool(training), label_mode
        self.seed, self.augmentation, self.pad_to = seed, augmentation, int(pad_to)
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(images)) if training else np.arange(len(images))

    def __len__(self):
        if self.training:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        images = vit_images.array_to_pixels(self.images[rows], self.image_size)
        labels = self.labels[rows]
        if self.label_mode == "categorical":
            labels = np.eye(self.num_classes, dtype="float32")[labels]
        else:
            labels = labels.astype("int32")
        if self.augmentation is not None:
            images, labels = (keras.ops.convert_to_numpy(t) for t in self.augmentation(images, labels))
        if self.pad_to <= 1:
            return images, labels
        missing = (-len(rows)) % self.pad_to

        def padded(array):
            return np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)])

        weights = np.concatenate([np.ones(len(rows), "float32"), np.zeros(missing, "float32")])
        return padded(images), padded(labels), weights

    def on_epoch_end(self):
        if self.training:
            self._order = self._rng.permutation(len(self.images))

    def padded(self, multiple):
        """This split with every batch padded to a multiple of `multiple`
        rows (zero-weight rows; see `keras_vit.distribute.pad_batches`)."""
        return ArrayBatches(self.images, self.labels, self.image_size, self.num_classes, self.batch_size,
                            self.training, self.label_mode, self.seed, self.augmentation, pad_to=multiple)

    def as_numpy_iterator(self):
        """Every batch in order, as a tf.data pipeline's method of this name."""
        return (self[index] for index in range(len(self)))
