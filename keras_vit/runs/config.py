"""A run's settings: the recipes, `TrainConfig` and its checks, and the
run's `config.json` (what it holds, reading it back, comparing two).

`config.json` holds the `TrainConfig` fields (the image size among them,
once), the data set's class names, its name and split sizes (`dataset`),
and the keras_vit version. Run directories written before the image size
was stored once (it was also in `dataset`) read the same.
"""

import dataclasses
import json
import os
import pathlib

from keras_vit import distribute, inference, variants
from keras_vit.runs.files import RunError
from keras_vit.version import __version__

RECIPES = {
    # Small grayscale images trained from scratch. The 8x8 digits are
    # resized to 32x32 and cut into 8x8 patches: 16 tokens, as 2x2 patches
    # of the originals, but each interpolated patch also sees its
    # neighbours' edge pixels (an overlapping patch embedding). 60 epochs:
    # five seeds gave 0.9833-0.9916 (mean 0.9883), as 100 epochs did
    # (0.9749-0.9944), in 60% of the time; 45 epochs gave 0.9777-0.9833
    # (BENCHMARKS.md, "What each optimisation measured"). 20 runs of 60
    # epochs that day: 0.9694-0.9944, mean 0.9836, one below 0.97; MixUp,
    # stochastic depth 0.2 and 80 epochs did no better.
    "digits": dict(
        image_size=32, patch_size=8, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128,
        epochs=60, batch_size=64, learning_rate=2e-3, weight_decay=0.3, flip=False,
        crop_scale=0.9, drop_path_rate=0.1,
    ),
    # Sized to train in 30 minutes on 2 CPU cores: 4x4 patches (49 tokens)
    # of a narrow, 6-deep ViT. Flips and random erasing because it
    # over-fits by the last epochs; no random crops, which cost more per
    # epoch than they give back in so short a schedule.
    "fashion_mnist": dict(
        image_size=28, patch_size=4, hidden_dim=64, num_layers=6, num_heads=4, mlp_dim=128,
        epochs=24, batch_size=128, learning_rate=3e-3, weight_decay=0.05, flip=True,
        crop_scale=None, drop_path_rate=0.0, warmup_epochs=2.0, random_erasing=0.4,
        # Clothes look the same mirrored: the test accuracy is that of the
        # mean over each image and its mirror image (`keras_vit.with_flip_tta`).
        tta="flip",
    ),
}
_DEFAULTS = dict(
    image_size=224, epochs=10, batch_size=32, learning_rate=1e-3, weight_decay=0.05, flip=True,
    crop_scale=None, drop_path_rate=0.1, warmup_epochs=5.0, random_erasing=0.0, tta="none",
)
DEFAULT_VARIANT = "Ti/16"
# Settings that do not change the training: a resumed run may change them.
_NOT_TRAINING = ("verbose", "overwrite", "tta", "checkpoint_every")


@dataclasses.dataclass
class TrainConfig:
    """Settings of one training run; `None` means the recipe's default.

    The recipe is chosen by the data set (`RECIPES`); anything given here
    overrides it. With `variant` (e.g. `"S/16"`) the model is a standard
    ViT; without it, the recipe's small ViT.
    """

    data: str = "digits"
    output: str = None
    data_dir: str = None
    download: bool = False
    variant: str = None
    patch_size: int = None
    hidden_dim: int = None
    num_layers: int = None
    num_heads: int = None
    mlp_dim: int = None
    image_size: int = None
    weights: str = None
    freeze_backbone: bool = False
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    weight_decay: float = None
    warmup_epochs: float = None
    label_smoothing: float = 0.1
    clipnorm: float = 1.0
    dropout_rate: float = 0.0
    drop_path_rate: float = None
    flip: bool = None
    crop_scale: float = None
    translate: float = 0.0
    rand_augment: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    random_erasing: float = None
    tta: str = None
    mixed_precision: bool = False
    jit_compile: str = "auto"
    strategy: str = "auto"
    model_parallel: int = 2
    validation_split: float = 0.1
    bad_images: str = "error"
    seed: int = 0
    verbose: int = 1
    overwrite: bool = False
    # last.keras and the backup: at most one write per this many seconds
    # of training, and after the last epoch (0: after every epoch).
    checkpoint_every: float = 10.0

    def resolved(self):
        """A copy with the recipe's defaults filled in and checked."""
        name = pathlib.Path(str(self.data)).name if os.path.isdir(str(self.data)) else str(self.data)
        recipe = dict(_DEFAULTS, **RECIPES.get(name.replace("-", "_"), {}))
        values = dataclasses.asdict(self)
        if self.variant is None and "patch_size" not in recipe:
            # No small-image recipe: ViT-Ti/16, the standard size a CPU can train.
            values["variant"] = DEFAULT_VARIANT
        if values["variant"] is not None:
            # A standard variant: its own sizes unless overridden.
            base = variants.get_config(values["variant"])
            for key in variants.ARCHITECTURE_FIELDS:
                recipe[key] = getattr(base, key)
        for key, value in recipe.items():
            if values.get(key) is None:
                values[key] = value
        if values["output"] is None:
            values["output"] = str(pathlib.Path("runs") / name.replace("/", "_"))
        config = TrainConfig(**values)
        config._check()
        return config

    def _check(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}."
            )
        for key in ("epochs", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive int, received {key}={getattr(self, key)!r}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, received learning_rate={self.learning_rate}.")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every < float("inf"):
            raise ValueError(
                f"checkpoint_every must be a number of seconds >= 0 (0: every epoch), received "
                f"checkpoint_every={every!r}."
            )
        _check_start_weights(self)
        inference.check_tta(self.tta)
        if self.strategy not in distribute.STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(distribute.STRATEGIES)}; "
                f"received strategy={self.strategy!r}."
            )
        if isinstance(self.model_parallel, bool) or not isinstance(self.model_parallel, int) \
                or self.model_parallel < 1:
            raise ValueError(
                f"model_parallel must be a positive int, received model_parallel={self.model_parallel!r}."
            )


def _check_start_weights(config):
    """Refuses, before any work, weights the run could not start from."""
    from keras_vit.weights import hub, pretrained

    weights = config.weights
    if weights is None or os.path.isfile(weights) or hub.is_handle(weights):
        return
    if not pretrained.is_name(weights):
        if not pretrained.looks_like_name(weights):  # a path: say so, as before names existed
            raise ValueError(f"weights={weights!r}: no such checkpoint file.")
        raise ValueError(
            f"weights={weights!r} is neither a checkpoint file nor a named checkpoint "
            f"({', '.join(pretrained.tags())}) nor 'hf://ORG/NAME'."
        )
    sizes = {key: getattr(config, key) for key in variants.ARCHITECTURE_FIELDS}
    pretrained.named_checkpoint(weights, config.variant, sizes, config.image_size)


def run_record(config, info):
    """What `config.json` holds for a resolved `config` trained on the data
    set described by `info` (a `keras_vit.data.DatasetInfo`)."""
    record = dict(dataclasses.asdict(config), class_names=list(info.class_names),
                  dataset={"name": info.name, "num_examples": dict(info.num_examples)},
                  keras_vit_version=__version__)
    # evaluate needs a source it can read again: arrays are not one.
    record["data"] = str(config.data) if isinstance(config.data, (str, os.PathLike)) else "<NumPy arrays>"
    return json.loads(json.dumps(record))  # as it reads back (tuples as lists)


def _current_layout(record):
    """`record` with the earlier layout's copies of the image size and
    class names under `dataset` folded into the top-level keys."""
    record = dict(record)
    dataset = dict(record.get("dataset") or {})
    size = dataset.pop("image_size", None)
    names = dataset.pop("class_names", None)
    if record.get("image_size") is None and size is not None:
        record["image_size"] = int(size[0]) if isinstance(size, (list, tuple)) else int(size)
    if record.get("class_names") is None and names is not None:
        record["class_names"] = names
    if "dataset" in record:
        record["dataset"] = dataset
    return record


def read_run(run_dir):
    """Reads a run directory's `config.json` (raises `RunError` if absent).

    Returns:
        A dict: the `TrainConfig` fields, `class_names`, `dataset` and
        `keras_vit_version`, whichever layout the run was written in.
    """
    path = pathlib.Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run: it has no config.json.")
    return _current_layout(json.loads(path.read_text()))


def changed_settings(saved, record):
    """The names of the settings that differ between a run's saved record
    and a new one, ignoring those that do not change the training."""
    # A setting missing from a config.json written by an earlier keras_vit
    # (`translate`, or any added later) had its default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    before = {k: v for k, v in {**defaults, **_current_layout(saved)}.items() if k not in _NOT_TRAINING}
    now = {k: v for k, v in record.items() if k not in _NOT_TRAINING}
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
