"""`train(config)`: one training run into its directory, resumable.

The steps, in order: open the run directory (clean-up, resume state); set
up precision, seed and strategy; load the data; agree with the other
workers and write `config.json`; build and compile the model under the
strategy; fit with the run's callbacks; evaluate the final model (with the
run's test-time augmentation) and write `results.json`.
"""

import contextlib
import dataclasses
import pathlib
import shutil
import tempfile
import time

import keras

from keras_vit import data as vit_data
from keras_vit import distribute, inference, models, training, variants
from keras_vit._backend import tensorflow_installed
from keras_vit.runs import callbacks as run_callbacks
from keras_vit.runs import config as run_config
from keras_vit.runs import files, use
from keras_vit.runs.files import RunError


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


@dataclasses.dataclass
class _RunDirectory:
    """Where a run writes, whether this process is the chief (which owns the
    directory's files) and the backup it resumes from (`None`: a fresh run)."""

    output: pathlib.Path
    chief: bool
    backup: dict
    started: float

    @property
    def backup_dir(self):
        return self.output / "backup"

    @property
    def log_path(self):
        return self.output / "log.csv"

    @property
    def resuming(self):
        return self.backup is not None


def train(config):
    """Trains a ViT as `config` says, resuming from `backup/` if present.

    With `mixed_precision`, the global dtype policy is set for the run and
    restored afterwards.

    Args:
        config: a `TrainConfig`; its recipe's defaults are filled in here.

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
    run = _open_run_directory(config)
    strategy = _set_up(config)
    # Keras' distribution API (JAX) must be in force while fitting, too:
    # it places each batch on the devices. A tf.distribute strategy is
    # entered only where the model is built and compiled.
    keras_distribution = isinstance(strategy, distribute.KerasDistribution)
    with strategy.scope() if keras_distribution else contextlib.nullcontext():
        ds_train, ds_val, ds_test, info = _load_data(config)
        if keras_distribution and strategy.num_replicas_in_sync > 1:
            ds_val, ds_test = (distribute.pad_batches(ds, strategy.num_replicas_in_sync)
                               for ds in (ds_val, ds_test))
        record = run_config.run_record(config, info)
        _agree_with_workers(run, config, record, strategy)
        _write_config(run, record)
        model = _compiled_model(config, info, strategy)
        history = _fit(model, run, config, ds_train, ds_val)
        results = _finish(model, run, config, ds_test, strategy)
    return TrainResult(model=model, results=results, history=history.history, info=info)


def _open_run_directory(config):
    """Creates the run directory, reads the backup to resume from and removes
    what a killed run left half-written."""
    run = _RunDirectory(output=pathlib.Path(config.output), chief=distribute.is_chief(), backup=None,
                        started=time.time())
    run.output.mkdir(parents=True, exist_ok=True)
    run.backup = files.read_backup(run.backup_dir)
    if run.chief:
        files.remove_temp_files(run.output, run.backup_dir)
        if not run.resuming and run.backup_dir.is_dir():
            shutil.rmtree(run.backup_dir)  # killed before its first complete backup
    return run


def _set_up(config):
    """Sets the dtype policy and the seed; returns the distribution strategy."""
    if config.mixed_precision:
        keras.config.set_dtype_policy(training.mixed_precision_policy())
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.get_strategy(config.strategy, model_parallel=config.model_parallel)
    # tf.distribute splits a batch unevenly where it must; Keras' distribution
    # API shards each batch in equal parts.
    if isinstance(strategy, distribute.KerasDistribution) and config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of the {strategy.num_replicas_in_sync} "
            f"data-parallel replicas of strategy={config.strategy!r}."
        )
    return strategy


def _load_data(config):
    """The training, validation and test pipelines (training augmented) and
    the data set's `DatasetInfo`."""
    augment = training.augmentation(
        flip=config.flip, crop_scale=config.crop_scale, translate=config.translate,
        rand_augment=config.rand_augment, mixup=config.mixup, cutmix=config.cutmix,
        random_erasing=config.random_erasing, seed=config.seed,
    )
    return vit_data.load(
        config.data, image_size=config.image_size, batch_size=config.batch_size,
        validation_split=config.validation_split, seed=config.seed, data_dir=config.data_dir,
        download=config.download, augmentation=augment, splits=("train", "validation", "test"),
        bad_images=config.bad_images,
    )


def _check_run_directory(run, config, record):
    """Raises `RunError` when the directory holds a run this one must not
    touch: an unfinished run with other settings, or (without `overwrite`)
    a finished one."""
    if run.resuming and (run.output / "config.json").is_file():
        changed = run_config.changed_settings(run_config.read_run(run.output), record)
        if changed:
            raise RunError(
                f"{run.output} holds an unfinished run with other settings ({', '.join(changed)}): "
                "rerun it with the same command, or pick another --output."
            )
    if not run.resuming and (run.output / "results.json").is_file() and not config.overwrite:
        raise RunError(
            f"{run.output} already holds a finished run: pass --overwrite (overwrite=True) "
            "to train it again, or pick another --output."
        )


def _agree_with_workers(run, config, record, strategy):
    """The chief checks the run directory; under MultiWorkerMirroredStrategy
    every worker then learns whether it may go on, and that all resume from
    the same epoch (a worker restarting at epoch 0 beside a resuming chief
    would mix their gradients, then fail)."""
    problem = None
    if run.chief:
        try:
            _check_run_directory(run, config, record)
        except RunError as error:
            problem = error
    task_type, task_index = distribute.task()
    states = distribute.worker_values(strategy, run.backup["epoch"] if run.resuming else -1,
                                      problem is not None, task_type == "chief", task_index)
    if problem is not None:
        raise problem
    if any(failed for _, failed, _, _ in states):
        raise RunError(f"the chief worker refused {run.output} (see its error): fix that, then start "
                       "every worker again.")
    if len({epoch for epoch, _, _, _ in states}) > 1:
        found = ", ".join(("chief" if is_chief_task else f"worker {index}") + ": "
                          + (f"epoch {epoch}" if epoch >= 0 else "none")
                          for epoch, _, is_chief_task, index in states)
        raise RunError(
            f"the workers found different backups in {run.backup_dir} ({found}): resuming a "
            "multi-worker run needs its --output on a file system that every worker shares; "
            "rerun with such an --output, or pick another --output to start again."
        )


def _write_config(run, record):
    """Writes `config.json` (the chief) after dropping what the run will redo:
    a fresh run's old results, a resumed run's log rows after its backup."""
    if not run.chief:
        return
    if not run.resuming:
        for stale in ("log.csv", "results.json", "evaluation.json"):
            (run.output / stale).unlink(missing_ok=True)
    else:
        # Epochs at or after the backup's are trained again: their rows
        # (logged by a run killed before it backed them up) go.
        files.truncate_log(run.log_path, run.backup["epoch"])
    files.write_json_atomic(run.output / "config.json", record)


def _compiled_model(config, info, strategy):
    """The run's ViT, built and compiled under `strategy`, with the data
    set's class names (kept in last.keras and best.keras)."""
    steps_per_epoch = max(1, info.num_examples["train"] // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    with strategy.scope():
        # weights: a checkpoint file, a named checkpoint or an hf:// handle;
        # the position embedding is resampled to image_size, a head of
        # other classes is left fresh (fine-tuning).
        model = models.ViT(
            config.variant, input_shape=(config.image_size, config.image_size, 3),
            classes=info.num_classes, include_preprocessing=True, dropout_rate=config.dropout_rate,
            drop_path_rate=config.drop_path_rate, weights=config.weights,
            **{key: getattr(config, key) for key in variants.ARCHITECTURE_FIELDS},
        )
        if isinstance(strategy, distribute.KerasDistribution):
            distribute.check_layout(model, strategy.distribution)
        if config.freeze_backbone:
            training.freeze_backbone(model)
        model.class_names = [str(name) for name in info.class_names]
        training.compile(
            model, steps=total_steps, learning_rate=config.learning_rate,
            weight_decay=config.weight_decay, warmup_steps=warmup,
            label_smoothing=config.label_smoothing, clipnorm=config.clipnorm,
            jit_compile=config.jit_compile,
        )
    return model


def _callbacks(run, write_dir, checkpoint_every):
    """The run's callbacks; non-chief workers write their checkpoints and
    backup under `write_dir`, a scratch folder."""
    # On resume, the best model so far must be beaten before it is replaced.
    best_so_far = max((r.get("val_accuracy", -1.0) for r in files.read_log(run.log_path)), default=None)
    # The order matters for a kill between two of them: the log row and the
    # checkpoints of an epoch are written before its backup, so a resumed
    # run never lacks a row or a checkpoint of an epoch it does not redo.
    found = [run_callbacks.StopOnNaN()]
    if run.chief:
        found.append(run_callbacks.CSVLogger(str(run.log_path), append=True))
    last = run_callbacks.CheckpointIfFinite(str(write_dir / "last.keras"), every_seconds=checkpoint_every)
    found += [
        run_callbacks.CheckpointIfFinite(str(write_dir / "best.keras"), monitor="val_accuracy", mode="max",
                                         save_best_only=True, initial_value_threshold=best_so_far),
        last,
    ]
    if run.chief:
        if tensorflow_installed():  # Keras' TensorBoard callback writes with tf.summary
            found.append(run_callbacks.EpochTensorBoard(str(run.output / "logs")))
        found.append(run_callbacks.LearningCurves(run.log_path, run.output / "curves.png"))
    # Every worker resumes from the chief's backup (the run directory must
    # then be on a file system they share, as for Keras 2's BackupAndRestore).
    found.append(run_callbacks.AtomicBackupAndRestore(
        str(run.backup_dir if run.chief else write_dir / "backup"), restore_dir=str(run.backup_dir),
        weights_from=last))
    return found


def _fit(model, run, config, ds_train, ds_val):
    """`model.fit` with the run's callbacks; raises `RunError` if the loss
    became NaN, naming the last good checkpoint."""
    # Non-chief workers write their copies to a scratch folder, as Keras'
    # multi-worker guide does; only the chief's files are the run's.
    write_dir = run.output if run.chief else pathlib.Path(tempfile.mkdtemp(prefix="keras_vit_worker_"))
    callbacks = _callbacks(run, write_dir, config.checkpoint_every)
    try:
        # shuffle=False: the pipeline (tf.data or ArrayBatches) shuffles itself.
        history = model.fit(ds_train, validation_data=ds_val, epochs=config.epochs,
                            callbacks=callbacks, verbose=config.verbose, shuffle=False)
    finally:
        if not run.chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    stop_on_nan = callbacks[0]
    if stop_on_nan.failed_at is not None:
        epoch, batch = stop_on_nan.failed_at
        last_good = "last.keras" if (run.output / "last.keras").is_file() else "no checkpoint yet"
        raise RunError(
            f"the loss became NaN at epoch {epoch + 1}, batch {batch}: training stopped. "
            f"The last good checkpoint is kept ({run.output / last_good}); try a lower "
            "--learning-rate or keep --clipnorm."
        )
    return history


def _evaluate_with_tta(model, ds_test, config):
    """`model.evaluate` on `ds_test` through `config.tta` (the run's
    training loss and accuracy, compiled on the augmented model)."""
    if config.tta == "none":
        return model.evaluate(ds_test, verbose=0, return_dict=True)
    augmented = inference.with_tta(model, config.tta)
    augmented.compile(
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return augmented.evaluate(ds_test, verbose=0, return_dict=True)


def _finish(model, run, config, ds_test, strategy):
    """Evaluates the final model and the best-validation checkpoint, writes
    `results.json` and removes the backup."""
    # The final model is the run's result: the learning rate decays to zero
    # over the planned epochs, as in the ViT and DeiT recipes, and on a small
    # validation set the best-validation pick is noisy. With `tta`, the
    # result is the augmented model's, the plain model's reported beside it.
    plain = model.evaluate(ds_test, verbose=0, return_dict=True)
    with strategy.scope():
        test = _evaluate_with_tta(model, ds_test, config) if config.tta != "none" else plain
    best = use.load_run_model(run.output, "best") if run.chief else None
    best_test = _evaluate_with_tta(best, ds_test, config) if run.chief else test
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
        "epochs": len(files.read_log(run.log_path)) if run.chief else config.epochs,
        "wall_time_s": round(time.time() - run.started, 1),
        "resumed": run.resuming,
        "num_params": int(model.count_params()),
        "num_replicas": int(strategy.num_replicas_in_sync),
        "backend": keras.backend.backend(),
    })
    if run.chief:
        files.write_json_atomic(run.output / "results.json", results)
        shutil.rmtree(run.backup_dir, ignore_errors=True)
    return results
