"""The callbacks of a training run. Each one survives a kill, a full disk
or a NaN loss without leaving a half-written or wrong file behind."""

import math
import pathlib
import shutil
import time
import zipfile

import keras

from keras_vit.runs import files, plots


def _finite(logs):
    return not logs or math.isfinite(float(logs.get("loss", 0.0)))


_SKIPSET_KINDS = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def prime_keras_saving_cache():
    """Works around a Keras cache that never hits, before a save.

    Keras' `saving_lib.get_attr_skipset` caches the attribute names to skip
    under the global attribute "saving_attr_skipset_<kind>" but looks them
    up under "saving_attr_skiplist_<kind>" (Keras 3.15.1), so every save
    builds dozens of reference layers again: a third of the time of saving
    the main job's model (0.18 s -> 0.12 s), which it does three times an
    epoch. Storing Keras' own sets under the key it reads changes nothing
    else (the files are byte-equal; `tests/test_runs.py`); with a Keras
    whose cache works it is a no-op. The state is per thread, as Keras'.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:  # a Keras laid out otherwise: nothing to work around
        return
    for kind in _SKIPSET_KINDS:
        if global_state.get_global_attribute(f"saving_attr_skiplist_{kind}") is None:
            global_state.set_global_attribute(f"saving_attr_skiplist_{kind}", saving_lib.get_attr_skipset(kind))


# The member of a `.keras` file that holds the weights and optimizer state,
# written by the same `saving_lib._save_state` walk as `save_weights`.
_KERAS_WEIGHTS_MEMBER = "model.weights.h5"


class CheckpointIfFinite(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes atomically and never writes weights from
    an epoch whose loss went NaN or infinite, so the last good checkpoint
    survives a NaN, a kill and a full disk.

    `every_seconds` (not with `save_best_only`): after the first epoch,
    write at the end of an epoch only once that many seconds have passed
    since the last write, and always after the last epoch (0: every epoch),
    as Lightning's `ModelCheckpoint(train_time_interval=...)` and
    `tf.train.CheckpointManager(checkpoint_interval=...)` do. Keras' own
    saving takes 0.1-0.3 s for the main job's model, a fifth of one of its
    epochs. `saved` is `(epoch, path)` of the last file written (else
    `None`), so that the backup of the same epoch can copy its weights.
    """

    def __init__(self, *args, every_seconds=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if every_seconds and self.save_best_only:
            raise ValueError(f"every_seconds={every_seconds!r} cannot be used with save_best_only=True.")
        self.every_seconds = every_seconds
        self.saved = None
        self._saved_at = None

    def _too_soon(self, epoch):
        last_epoch = epoch + 1 >= self.params.get("epochs", 0)
        return (bool(self.every_seconds) and self._saved_at is not None and not last_epoch
                and time.monotonic() - self._saved_at < self.every_seconds)

    def _save_model(self, epoch, batch, logs):
        if not _finite(logs) or self._too_soon(epoch):
            return
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            prime_keras_saving_cache()
            files.save_atomic(self.model.save, filepath)
            self.saved = (epoch, pathlib.Path(filepath))
            self._saved_at = time.monotonic()


def _copy_member(archive, name, path):
    """Writes the member `name` of the open zip `archive` to `path`. Keras
    stores a `.keras` file's weights uncompressed, so this is a file copy
    (milliseconds) where `save_weights` walks every layer and variable
    again (about 130 ms for the main job's model)."""
    with archive.open(name) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
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

    `weights_from`, a `CheckpointIfFinite` that runs before this callback,
    saves serialising the model twice an epoch: the backup is then written
    at the epochs that checkpoint wrote (it may skip some: `every_seconds`),
    its weights copied out of that `.keras` file instead of written by
    `save_weights` again. Without it, every epoch is backed up.
    """

    def __init__(self, backup_dir, restore_dir=None, weights_from=None):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.restore_dir = restore_dir or backup_dir
        self.weights_from = weights_from

    def on_epoch_end(self, epoch, logs=None):
        if _finite(logs):
            super().on_epoch_end(epoch, logs)

    def _checkpoint_of_this_epoch(self):
        # `_current_epoch` counts the epochs done: the one just ended is
        # `_current_epoch - 1`, 0-based as the checkpoint's `epoch`.
        saved = self.weights_from.saved
        if saved is not None and saved[0] == self._current_epoch - 1 and saved[1].is_file():
            return saved[1]
        return None

    def _write_weights(self, source, path):
        if source is not None:
            with zipfile.ZipFile(source) as archive:
                if _KERAS_WEIGHTS_MEMBER in archive.namelist():
                    files.save_atomic(lambda temp: _copy_member(archive, _KERAS_WEIGHTS_MEMBER, temp), path)
                    return
        prime_keras_saving_cache()
        files.save_atomic(self.model.save_weights, path)

    def _save_model(self):
        source = None
        if self.weights_from is not None:
            source = self._checkpoint_of_this_epoch()
            if source is None:  # the checkpoint skipped this epoch: so does the backup
                return
        directory = pathlib.Path(self.backup_dir)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        self._write_weights(source, directory / name)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
        files.write_json_atomic(self._training_metadata_path, metadata)
        for old in directory.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()

    def _load_model(self):
        metadata = files.read_backup(self.restore_dir)
        if metadata is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(pathlib.Path(self.restore_dir) / metadata["weights"]))
        self.model._initial_epoch = metadata["epoch"]


class CSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` whose failed write (a full disk) raises
    `RunError` naming the file."""

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except OSError as error:
            raise files.RunError(f"could not write {self.filename}: {error.strerror or error}; "
                                 "the rows of earlier epochs are kept.") from error


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where
    (`failed_at`: `(epoch, batch)`, else `None`)."""

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


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' `TensorBoard` callback without the per-batch work it does for
    nothing when it writes once an epoch (`update_freq="epoch"`, the
    default).

    Keras 3.15's `on_train_batch_end` calls `tf.summary.scalar` for every
    metric of every batch even then; with no default writer set, nothing is
    written, but each call costs 0.4 ms (2 a batch: 1 s of the main job's
    1,140 steps on an AMD EPYC Zen 1). The epoch summaries, the graph (at
    the first batch), per-batch summaries (`update_freq` a number) and
    profiling are Keras' own: the batch hook runs whenever Keras' state
    says any of them may be due, or is not what this class expects.
    """

    def on_train_batch_end(self, batch, logs=None):
        nothing_due = (self.update_freq == "epoch" and not self.write_steps_per_second
                       and getattr(self, "_should_write_train_graph", True) is False
                       and getattr(self, "_should_trace", True) is False)
        if not nothing_due:
            super().on_train_batch_end(batch, logs)


class LearningCurves(keras.callbacks.Callback):
    """Redraws the run's learning curves (`curves.png`) from `log.csv`, so a
    resumed run's plot covers all its epochs: after the first epoch, then
    after an epoch once `every_seconds` have passed since the last drawing
    (drawing takes 0.2-0.35 s; the main job's epochs take about 1 s, so
    every 10 s cost it 5 s of its 150 on an AMD EPYC Zen 1; TensorBoard's
    `logs/` is the live view), and at the end of training."""

    def __init__(self, log_path, png_path, every_seconds=30.0):
        super().__init__()
        self.log_path = pathlib.Path(log_path)
        self.png_path = pathlib.Path(png_path)
        self.every_seconds = every_seconds
        self._drawn_at = None
        self._undrawn = False  # an epoch ended since the last drawing

    def _draw(self):
        plots.plot_learning_curves(self.log_path, self.png_path)
        self._drawn_at = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self._undrawn = self._drawn_at is not None and time.monotonic() - self._drawn_at < self.every_seconds
        if not self._undrawn:
            self._draw()

    def on_train_end(self, logs=None):
        if self._undrawn:
            self._draw()
