"""Training runs on disk: train, resume, evaluate and predict.

A run directory holds everything about one training run:

- `config.json`: the run's settings, the data set's class names and image
  size (what `evaluate`, `predict` and export need);
- `last.keras` (the final model: the run's result, which `evaluate`,
  `predict`, `export`, `explain` and `inspect` use by default) and
  `best.keras` (the epoch with the best validation accuracy; `--model best`);
- `log.csv` (one line per epoch), `logs/` (TensorBoard), `curves.png`;
- `backup/` while a run is unfinished: `keras.callbacks.BackupAndRestore`
  state, from which the same command resumes a killed run;
- `results.json` after training; `evaluation.json` and `confusion.png`
  after `evaluate`.
"""

import csv
import dataclasses
import json
import math
import os
import pathlib
import shutil
import tempfile
import time

import keras
import numpy as np

from keras_vit import data as vit_data
from keras_vit import distribute, models, training, variants
from keras_vit.version import __version__

RECIPES = {
    # Small grayscale images trained from scratch. Tuned on this recipe's own
    # data (see BENCHMARKS.md for the measured accuracy and time). The 8x8
    # digits are resized to 32x32 and cut into 8x8 patches: the same 16
    # tokens as 2x2 patches of the originals, but each patch, bilinearly
    # interpolated, also sees its neighbours' edge pixels (an overlapping
    # patch embedding at the cost of a wider projection): 98.3-98.9% test
    # accuracy over three seeds against 96.7-97.8% for 2x2 patches at 8x8.
    "digits": dict(
        image_size=32, patch_size=8, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128,
        epochs=100, batch_size=64, learning_rate=2e-3, weight_decay=0.3, flip=False,
        crop_scale=0.9, drop_path_rate=0.1,
    ),
    # Sized so that training fits in 30 minutes on 2 CPU cores (62-72 s an
    # epoch there): 4x4 patches (49 tokens) of a narrow, 6-deep ViT.
    # Flips and random erasing (the model over-fits by the last epochs:
    # erasing 0.25 added 0.3 points of test accuracy at 26 epochs, 0.4 at
    # 24 epochs reached 0.9107); random crops cost more accuracy per epoch
    # than they give back in so short a schedule, and stochastic depth 0.1
    # changed nothing measurable (see BENCHMARKS.md).
    "fashion_mnist": dict(
        image_size=28, patch_size=4, hidden_dim=64, num_layers=6, num_heads=4, mlp_dim=128,
        epochs=24, batch_size=128, learning_rate=3e-3, weight_decay=0.05, flip=True,
        crop_scale=None, drop_path_rate=0.0, warmup_epochs=2.0, random_erasing=0.4,
        # Test-time flips: the mean of the probabilities of each test image
        # and its mirror image (`models.with_flip_tta`). On 13 trained
        # models of this recipe and its variants, 0.15-0.70 points more
        # test accuracy than the same model without (BENCHMARKS.md).
        tta="flip",
    ),
}
_DEFAULTS = dict(
    image_size=224, epochs=10, batch_size=32, learning_rate=1e-3, weight_decay=0.05, flip=True,
    crop_scale=None, drop_path_rate=0.1, warmup_epochs=5.0, random_erasing=0.0, tta="none",
)
DEFAULT_VARIANT = "Ti/16"
_ARCHITECTURE = ("patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim")


_TEMP_MARK = ".tmp-"  # in the names of files being written


class RunError(RuntimeError):
    """A training run that cannot start or did not finish well."""


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
    validation_split: float = 0.1
    bad_images: str = "error"
    seed: int = 0
    verbose: int = 1
    overwrite: bool = False

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
            for key in _ARCHITECTURE:
                recipe[key] = getattr(base, key)
        for key, value in recipe.items():
            if values.get(key) is None:
                values[key] = value
        if values["output"] is None:
            values["output"] = str(pathlib.Path("runs") / name.replace("/", "_"))
        config = TrainConfig(**values)
        if config.image_size % config.patch_size:
            raise ValueError(
                f"image_size={config.image_size} must be divisible by "
                f"patch_size={config.patch_size}."
            )
        for key in ("epochs", "batch_size"):
            if not isinstance(getattr(config, key), int) or getattr(config, key) <= 0:
                raise ValueError(f"{key} must be a positive int, received {key}={getattr(config, key)!r}.")
        if config.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, received learning_rate={config.learning_rate}.")
        _check_start_weights(config)
        models.check_tta(config.tta)
        if config.strategy not in distribute.STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(distribute.STRATEGIES)}; "
                f"received strategy={config.strategy!r}."
            )
        return config


def _check_start_weights(config):
    """Refuses, before any work, weights the run could not start from."""
    from keras_vit import hub, pretrained

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
    pretrained.named_checkpoint(weights, config.variant, {key: getattr(config, key) for key in _ARCHITECTURE},
                                config.image_size)


def _write_json_atomic(path, payload):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")

    _save_atomic(write, path)


def read_run(run_dir):
    """Reads a run directory's `config.json` (raises `RunError` if absent)."""
    path = pathlib.Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run: it has no config.json.")
    return json.loads(path.read_text())


def load_run_model(run_dir, which="last"):
    """Loads a run's `last.keras` (the final model) or `best.keras`."""
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', received which={which!r}.")
    path = pathlib.Path(run_dir) / f"{which}.keras"
    if not path.is_file():
        raise RunError(f"{run_dir} has no {which}.keras: has its training finished an epoch?")
    from keras_vit import weights as vit_weights

    return vit_weights.load_model(path)


def _temp_path(path):
    """A hidden name beside `path` with the same suffixes (Keras checks them)."""
    path = pathlib.Path(path)
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f".{stem}{_TEMP_MARK}{os.getpid()}{dot}{suffixes}")


def _save_atomic(save, path):
    """Writes a file with `save(temp_path)` and renames it over `path`.

    A kill or a full disk during the write leaves the previous file whole
    (the rename is atomic); a failed write raises `RunError` naming the file.
    """
    path = pathlib.Path(path)
    temp = _temp_path(path)
    try:
        save(str(temp))
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        reason = error.strerror or str(error)
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise RunError(f"could not write {path}: {reason}; {kept}.") from error


def _remove_temp_files(*directories):
    """Removes half-written temporary files a killed run left behind."""
    for directory in directories:
        if directory.is_dir():
            for path in directory.iterdir():
                if path.name.startswith(".") and _TEMP_MARK in path.name and path.is_file():
                    path.unlink()


def _finite(logs):
    return not logs or math.isfinite(float(logs.get("loss", 0.0)))


class _CheckpointIfFinite(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes atomically and never writes weights from
    an epoch whose loss went NaN or infinite, so the last good checkpoint
    survives a NaN, a kill and a full disk."""

    def _save_model(self, epoch, batch, logs):
        if not _finite(logs):
            return
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            _save_atomic(self.model.save, filepath)


class _AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose backup is never half-written.

    Keras writes `latest.weights.h5` and then `training_metadata.json` in
    place: a kill during either leaves a corrupted backup, or weights of one
    epoch with the epoch number of another. Here the weights go to a new
    file named after its epoch, and the metadata, written atomically after
    it, names that file: whatever moment a kill comes, the metadata points at
    a complete file of the epoch it states. The backup is kept at the end of
    training (the run removes it once its results are written), so a kill
    during the final evaluation does not restart the run.

    `restore_dir` (default: `backup_dir`) is where a resumed run reads its
    backup: under MultiWorkerMirroredStrategy every worker restores the
    chief's, as Keras 2's `BackupAndRestore` did, while the other workers
    write theirs to a scratch folder.
    """

    def __init__(self, backup_dir, restore_dir=None):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.restore_dir = restore_dir or backup_dir

    def on_epoch_end(self, epoch, logs=None):
        if _finite(logs):
            super().on_epoch_end(epoch, logs)

    def _save_model(self):
        directory = pathlib.Path(self.backup_dir)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        _save_atomic(self.model.save_weights, directory / name)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
        _write_json_atomic(self._training_metadata_path, metadata)
        for old in directory.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()

    def _load_model(self):
        metadata = read_backup(self.restore_dir)
        if metadata is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(pathlib.Path(self.restore_dir) / metadata["weights"]))
        self.model._initial_epoch = metadata["epoch"]


class _CSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger whose failed write (a full disk) names the file."""

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except OSError as error:
            raise RunError(f"could not write {self.filename}: {error.strerror or error}; "
                           "the rows of earlier epochs are kept.") from error


def read_backup(backup_dir):
    """The metadata of a run's backup (`{"epoch", "batch", "weights"}`), or
    `None` when there is no complete backup."""
    path = pathlib.Path(backup_dir) / "training_metadata.json"
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text())
    if "weights" not in metadata or not (pathlib.Path(backup_dir) / metadata["weights"]).is_file():
        return None
    return metadata


class _StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.failed_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_at = (self._epoch, batch)
            self.model.stop_training = True


class LearningCurves(keras.callbacks.Callback):
    """Redraws the run's learning curves (`curves.png`) from `log.csv` after
    every epoch, so a resumed run's plot covers all its epochs."""

    def __init__(self, log_path, png_path):
        super().__init__()
        self.log_path = pathlib.Path(log_path)
        self.png_path = pathlib.Path(png_path)

    def on_epoch_end(self, epoch, logs=None):
        plot_learning_curves(self.log_path, self.png_path)


def _truncate_log(log_path, epochs):
    """Keeps the rows of the first `epochs` epochs of a CSV log."""
    log_path = pathlib.Path(log_path)
    if not log_path.is_file():
        return
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) <= 1:
        return
    # A row cut short by a kill has fewer fields than the header: dropped too.
    kept = [rows[0]] + [
        row for row in rows[1:]
        if len(row) == len(rows[0]) and row[0].isdigit() and int(row[0]) < epochs
    ]
    if len(kept) == len(rows):
        return

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    _save_atomic(write, log_path)


def read_log(log_path):
    """The epochs of a run's `log.csv` as a list of dicts of floats."""
    log_path = pathlib.Path(log_path)
    if not log_path.is_file():
        return []
    with open(log_path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def plot_learning_curves(log_path, png_path):
    """Plots loss and accuracy per epoch (training and validation) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if all(key in r for r in rows):
                ax.plot(epochs, [r[key] for r in rows], style, marker=".",
                        label="validation" if prefix else "training")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].set_ylim(top=1.0)
    fig.suptitle(f"Learning curves ({len(rows)} epochs)")
    fig.tight_layout()
    try:
        _save_atomic(lambda tmp: fig.savefig(tmp, dpi=100), png_path)
    finally:
        plt.close(fig)
    return png_path


def _build_model(config, num_classes):
    kwargs = dict(
        input_shape=(config.image_size, config.image_size, 3),
        classes=num_classes,
        include_preprocessing=True,
        dropout_rate=config.dropout_rate,
        drop_path_rate=config.drop_path_rate,
    )
    sizes = {key: getattr(config, key) for key in _ARCHITECTURE}
    # A checkpoint file, a named checkpoint (downloaded once, the resolution's
    # file where the tag has several) or an hf:// handle: the position
    # embedding is resampled to image_size, a head of other classes is left
    # fresh (fine-tuning).
    model = models.ViT(config.variant, **kwargs, **sizes, weights=config.weights)
    if config.freeze_backbone:
        training.freeze_backbone(model)
    return model


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained model (last epoch).
        results: test accuracy and loss of the final model (and of the
            best-validation checkpoint), epochs, wall time, as written to
            `results.json`.
        history: this process's `model.fit` history (epochs run now).
        info: the data set's `keras_vit.data.DatasetInfo`.
    """

    model: object
    results: dict
    history: dict
    info: object


def train(config):
    """Trains a ViT as `config` says, resuming from `backup/` if present.

    With `mixed_precision`, the global dtype policy is set for the run and
    restored afterwards.

    Returns:
        A `TrainResult`.
    """
    config = config.resolved()
    policy = keras.config.dtype_policy()
    try:
        return _train(config)
    finally:
        keras.config.set_dtype_policy(policy)


def _train(config):
    started = time.time()
    output = pathlib.Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    backup_dir = output / "backup"
    chief = distribute.is_chief()
    backup = read_backup(backup_dir)
    resuming = backup is not None
    if chief:
        _remove_temp_files(output, backup_dir)
        if not resuming and backup_dir.is_dir():
            shutil.rmtree(backup_dir)  # killed before its first complete backup

    if config.mixed_precision:
        keras.config.set_dtype_policy(training.mixed_precision_policy())
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.get_strategy(config.strategy)

    augment = training.augmentation(
        flip=config.flip, crop_scale=config.crop_scale, translate=config.translate,
        rand_augment=config.rand_augment, mixup=config.mixup, cutmix=config.cutmix,
        random_erasing=config.random_erasing, seed=config.seed,
    )
    ds_train, ds_val, ds_test, info = vit_data.load(
        config.data, image_size=config.image_size, batch_size=config.batch_size,
        validation_split=config.validation_split, seed=config.seed, data_dir=config.data_dir,
        download=config.download, augmentation=augment, splits=("train", "validation", "test"),
        bad_images=config.bad_images,
    )
    steps_per_epoch = max(1, info.num_examples["train"] // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)

    payload = dict(dataclasses.asdict(config), dataset=info.to_json(),
                   class_names=info.class_names, keras_vit_version=__version__)
    if not isinstance(config.data, (str, os.PathLike)):
        payload["data"] = "<NumPy arrays>"  # evaluate needs a source it can read again
    payload["data"] = str(payload["data"])
    # The chief checks the run directory; under MultiWorkerMirroredStrategy
    # every worker then learns whether it may go on and that all of them
    # resume from the same epoch (a worker restarting at epoch 0 beside a
    # resuming chief would mix their gradients, then fail).
    problem = None
    if chief:
        try:
            _check_run_directory(output, config, payload, resuming)
        except RunError as error:
            problem = error
    task_type, task_index = distribute.task()
    states = distribute.worker_values(strategy, backup["epoch"] if resuming else -1, problem is not None,
                                      task_type == "chief", task_index)
    if problem is not None:
        raise problem
    if any(failed for _, failed, _, _ in states):
        raise RunError(f"the chief worker refused {output} (see its error): fix that, then start "
                       "every worker again.")
    if len({epoch for epoch, _, _, _ in states}) > 1:
        found = ", ".join(("chief" if is_chief_task else f"worker {index}") + ": "
                          + (f"epoch {epoch}" if epoch >= 0 else "none")
                          for epoch, _, is_chief_task, index in states)
        raise RunError(
            f"the workers found different backups in {backup_dir} ({found}): resuming a "
            "multi-worker run needs its --output on a file system that every worker shares; "
            "rerun with such an --output, or pick another --output to start again."
        )
    if chief:
        if not resuming:
            for stale in ("log.csv", "results.json", "evaluation.json"):
                (output / stale).unlink(missing_ok=True)
        else:
            # Epochs at or after the backup's are trained again: their rows
            # (logged by a run killed before it backed them up) go.
            _truncate_log(output / "log.csv", backup["epoch"])
        _write_json_atomic(output / "config.json", payload)

    with strategy.scope():
        model = _build_model(config, info.num_classes)
        # The data set's classes, kept in last.keras and best.keras.
        model.class_names = [str(name) for name in info.class_names]
        training.compile(
            model, steps=total_steps, learning_rate=config.learning_rate,
            weight_decay=config.weight_decay, warmup_steps=warmup,
            label_smoothing=config.label_smoothing, clipnorm=config.clipnorm,
            jit_compile=config.jit_compile,
        )

    log_path = output / "log.csv"
    # On resume, the best model so far must be beaten before it is replaced.
    best_so_far = max((r.get("val_accuracy", -1.0) for r in read_log(log_path)), default=None)
    stop_on_nan = _StopOnNaN()
    # Non-chief workers write their copies to a scratch folder, as Keras'
    # multi-worker guide does; only the chief's files are the run's.
    write_dir = output if chief else pathlib.Path(tempfile.mkdtemp(prefix="keras_vit_worker_"))
    # The order matters for a kill between two of them: the log row and the
    # checkpoints of an epoch are written before its backup, so a resumed
    # run never lacks a row or a checkpoint of an epoch it does not redo.
    callbacks = [stop_on_nan]
    if chief:
        callbacks.append(_CSVLogger(str(log_path), append=True))
    callbacks += [
        _CheckpointIfFinite(str(write_dir / "best.keras"), monitor="val_accuracy", mode="max",
                            save_best_only=True, initial_value_threshold=best_so_far),
        _CheckpointIfFinite(str(write_dir / "last.keras")),
    ]
    if chief:
        callbacks += [
            keras.callbacks.TensorBoard(str(output / "logs")),
            LearningCurves(log_path, output / "curves.png"),
        ]
    # Every worker resumes from the chief's backup (the run directory must
    # then be on a file system they share, as for Keras 2's BackupAndRestore).
    callbacks.append(_AtomicBackupAndRestore(str(backup_dir if chief else write_dir / "backup"),
                                             restore_dir=str(backup_dir)))
    try:
        # shuffle=False: the tf.data pipeline shuffles itself.
        history = model.fit(ds_train, validation_data=ds_val, epochs=config.epochs,
                            callbacks=callbacks, verbose=config.verbose, shuffle=False)
    finally:
        if not chief:  # the scratch copies go, as in Keras' multi-worker guide
            shutil.rmtree(write_dir, ignore_errors=True)

    if stop_on_nan.failed_at is not None:
        epoch, batch = stop_on_nan.failed_at
        last_good = "last.keras" if (output / "last.keras").is_file() else "no checkpoint yet"
        raise RunError(
            f"the loss became NaN at epoch {epoch + 1}, batch {batch}: training stopped. "
            f"The last good checkpoint is kept ({output / last_good}); try a lower "
            "--learning-rate or keep --clipnorm."
        )

    # The run's result is the final model: the learning rate decays to zero
    # over the planned epochs, as in the ViT and DeiT recipes. The
    # best-validation checkpoint is reported beside it; on a small
    # validation set (180 digits) it is a noisy pick, often an earlier and
    # worse model.
    # With test-time augmentation (`tta`), the result is the augmented
    # model's; the plain model's accuracy is reported beside it.
    plain = model.evaluate(ds_test, verbose=0, return_dict=True)
    with strategy.scope():
        test = _evaluate_with_tta(model, ds_test, config) if config.tta != "none" else plain
    best = load_run_model(output, "best") if chief else model
    best_test = _evaluate_with_tta(best, ds_test, config) if chief else test
    results = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "best_checkpoint_test_accuracy": float(best_test["accuracy"]),
        "tta": config.tta,
    }
    if config.tta != "none":
        results["test_accuracy_without_tta"] = float(plain["accuracy"])
        results["test_loss_without_tta"] = float(plain["loss"])
    results.update({
        "epochs": len(read_log(log_path)) if chief else config.epochs,
        "wall_time_s": round(time.time() - started, 1),
        "resumed": resuming,
        "num_params": int(model.count_params()),
        "num_replicas": int(strategy.num_replicas_in_sync),
    })
    if chief:
        _write_json_atomic(output / "results.json", results)
        shutil.rmtree(backup_dir, ignore_errors=True)
    return TrainResult(model=model, results=results, history=history.history, info=info)


def _check_run_directory(output, config, payload, resuming):
    """Raises `RunError` when `output` holds a run this one must not touch:
    an unfinished run with other settings, or (without `overwrite`) a
    finished one."""
    previous = output / "config.json"
    if resuming and previous.is_file():
        # tta changes only the final evaluation, not the training.
        ignored = ("verbose", "overwrite", "tta")
        # A setting missing from a config.json written by an earlier
        # keras_vit (`translate`, or any added later) had its default.
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        saved = {**defaults, **json.loads(previous.read_text())}
        before = {k: v for k, v in saved.items() if k not in ignored}
        now = {k: v for k, v in json.loads(json.dumps(payload)).items() if k not in ignored}
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise RunError(
                f"{output} holds an unfinished run with other settings ({', '.join(changed)}): "
                "rerun it with the same command, or pick another --output."
            )
    if not resuming and (output / "results.json").is_file() and not config.overwrite:
        raise RunError(
            f"{output} already holds a finished run: pass --overwrite (overwrite=True) "
            "to train it again, or pick another --output."
        )


def _evaluate_with_tta(model, ds_test, config):
    """`model.evaluate` on the test split through the run's `tta` (the
    training loss and accuracy, compiled on the augmented model)."""
    if config.tta == "none":
        return model.evaluate(ds_test, verbose=0, return_dict=True)
    augmented = models.with_tta(model, config.tta)
    augmented.compile(
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return augmented.evaluate(ds_test, verbose=0, return_dict=True)


def _run_tta(config, tta):
    """The `tta` asked for, else the run's own (`"none"` for runs saved
    before the setting existed)."""
    return models.check_tta((config.get("tta") or "none") if tta is None else tta)


def evaluate(run_dir, which="last", batch_size=256, tta=None):
    """Evaluates a run's model on its data set's test split.

    Writes `evaluation.json` and `confusion.png` (the confusion matrix) in
    the run directory.

    Args:
        run_dir: the run directory.
        which: `"last"` or `"best"` model of the run.
        batch_size: images per batch.
        tta: test-time augmentation, `"none"` or `"flip"` (the mean over each
            image and its mirror image); `None`: the run's own setting, as
            in its `results.json`.

    Returns:
        A dict with `accuracy`, `loss`, `confusion_matrix`, `tta` and paths.
    """
    config = read_run(run_dir)
    tta = _run_tta(config, tta)
    model = load_run_model(run_dir, which)
    augmented = models.with_tta(model, tta)
    (ds_test, info) = vit_data.load(
        config["data"], image_size=config["image_size"], batch_size=batch_size,
        validation_split=config["validation_split"],
        data_dir=config.get("data_dir"), splits=("test",),
        bad_images=config.get("bad_images", "error"),
    )
    # One pass over the test set: the loss is the compiled loss of the
    # collected probabilities, as model.evaluate would compute it.
    onehots, probabilities = [], []
    for images, onehot in ds_test:
        probabilities.append(keras.ops.convert_to_numpy(augmented.predict_on_batch(images)))
        onehots.append(onehot.numpy())
    onehots, probabilities = np.concatenate(onehots), np.concatenate(probabilities)
    labels, predictions = np.argmax(onehots, axis=-1), np.argmax(probabilities, axis=-1)
    loss = float(keras.ops.convert_to_numpy(model.loss(onehots, probabilities)))
    names = config["class_names"]
    matrix = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    run_dir = pathlib.Path(run_dir)
    png = plot_confusion_matrix(matrix, names, run_dir / "confusion.png",
                                title=f"{info.name}: test accuracy {np.mean(labels == predictions):.4f}")
    result = {
        "accuracy": float(np.mean(labels == predictions)),
        "loss": loss,
        "num_examples": int(len(labels)),
        "confusion_matrix": matrix.tolist(),
        "confusion_png": str(png),
        "model": which,
        "tta": tta,
    }
    _write_json_atomic(run_dir / "evaluation.json", result)
    return result


def plot_confusion_matrix(matrix, class_names, png_path, title="Confusion matrix"):
    """Draws a confusion matrix (rows: true class, columns: predicted) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def predict(run_dir, paths, top_k=3, which="last", dtype_policy=None, tta=None):
    """Classifies image files with a run's model.

    Args:
        run_dir: the run directory.
        paths: image files.
        top_k: classes per image.
        which: `"last"` or `"best"` model of the run.
        dtype_policy: compute under this policy instead of the saved one,
            e.g. `"mixed_bfloat16"` (see `keras_vit.with_dtype_policy`).
        tta: test-time augmentation, `"none"` or `"flip"`; `None`: the run's
            own setting.

    Returns:
        A list, per image, of `(class_name, probability)` pairs, best first.
    """
    config = read_run(run_dir)
    _check_top_k(top_k, len(config["class_names"]))
    tta = _run_tta(config, tta)
    model = load_run_model(run_dir, which)
    return classify(model, paths, top_k=top_k, class_names=config["class_names"],
                    dtype_policy=dtype_policy, tta=tta)


def _check_top_k(top_k, classes):
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= classes:
        raise ValueError(f"top_k must be in [1, {classes}], received top_k={top_k!r}.")


def classify(model, paths, top_k=3, class_names=None, dtype_policy=None, tta="none"):
    """Classifies image files with a model that takes pixels in [0, 255].

    Args:
        model: a keras_vit classifier built with `include_preprocessing=True`
            (a run's model, or e.g. `keras_vit.ViTB16(include_preprocessing=True)`).
        paths: image files; each is resized to the model's input.
        top_k: classes per image.
        class_names: one name per class; default: `model.class_names`, else
            the class indices.
        dtype_policy: compute under this policy, e.g. `"mixed_bfloat16"`.
        tta: `"none"` or `"flip"` (see `keras_vit.with_flip_tta`).

    Returns:
        A list, per image, of `(class_name, probability)` pairs, best first.
    """
    classes = int(model.output_shape[-1])
    if class_names is None:
        class_names = getattr(model, "class_names", None) or [str(i) for i in range(classes)]
    _check_top_k(top_k, classes)
    if dtype_policy is not None:
        model = models.with_dtype_policy(model, dtype_policy)
    model = models.with_tta(model, tta)
    images = vit_data.load_images(paths, tuple(model.input_shape[1:3]))
    probabilities = model.predict(images, verbose=0)
    results = []
    for row in probabilities:
        top = np.argsort(row)[::-1][:top_k]
        results.append([(class_names[i], float(row[i])) for i in top])
    return results
