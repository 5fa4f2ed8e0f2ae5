"""Training runs on disk: train, resume, evaluate, predict, export, explain.

A run directory holds everything about one training run:

- `config.json`: the run's settings (the image size among them), the data
  set's class names (what `evaluate`, `predict` and export need);
- `last.keras` (the final model: the run's result, which `evaluate`,
  `predict`, `export`, `explain` and `inspect` use by default) and
  `best.keras` (the epoch with the best validation accuracy; `--model best`);
- `log.csv` (one line per epoch), `logs/` (TensorBoard), `curves.png`;
- `backup/` while a run is unfinished: `keras.callbacks.BackupAndRestore`
  state, from which the same command resumes a killed run;
- `results.json` after training; `evaluation.json` and `confusion.png`
  after `evaluate`.

The parts: `config` (recipes, `TrainConfig`, `config.json`), `files`
(atomic writes, logs, backups), `callbacks`, `plots`, `train` (the steps
of a run) and `use` (what is done with a finished run).
"""

from keras_vit.runs.callbacks import LearningCurves
from keras_vit.runs.config import DEFAULT_VARIANT, RECIPES, TrainConfig, read_run
from keras_vit.runs.files import RunError, read_backup, read_log
from keras_vit.runs.plots import plot_confusion_matrix, plot_learning_curves
from keras_vit.runs.train import TrainResult, train
from keras_vit.runs.use import (
    classify,
    evaluate,
    explain_run,
    export_run,
    inspect_run,
    load_run_model,
    predict,
)

__all__ = [
    "DEFAULT_VARIANT",
    "LearningCurves",
    "RECIPES",
    "RunError",
    "TrainConfig",
    "TrainResult",
    "classify",
    "evaluate",
    "explain_run",
    "export_run",
    "inspect_run",
    "load_run_model",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "predict",
    "read_backup",
    "read_log",
    "read_run",
    "train",
]
