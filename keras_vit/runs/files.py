"""The files of a run directory, written so that a kill or a full disk never
leaves one half-written: atomic writes, clean-up of what a killed run left,
and reading the CSV log and the backup's metadata."""

import csv
import json
import os
import pathlib

# In the names of files being written; `remove_temp_files` looks for it.
TEMP_MARK = ".tmp-"


class RunError(RuntimeError):
    """A training run that cannot start or did not finish well."""


def _temp_path(path):
    """A hidden name beside `path` with the same suffixes (Keras checks them)."""
    path = pathlib.Path(path)
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f".{stem}{TEMP_MARK}{os.getpid()}{dot}{suffixes}")


def save_atomic(save, path):
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


def write_json_atomic(path, payload):
    """Writes `payload` as indented, key-sorted JSON with `save_atomic`."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")

    save_atomic(write, path)


def remove_temp_files(*directories):
    """Removes half-written temporary files a killed run left behind."""
    for directory in directories:
        if directory.is_dir():
            for path in directory.iterdir():
                if path.name.startswith(".") and TEMP_MARK in path.name and path.is_file():
                    path.unlink()


def truncate_log(log_path, epochs):
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

    save_atomic(write, log_path)


def read_log(log_path):
    """The epochs of a run's `log.csv` as a list of dicts of floats."""
    log_path = pathlib.Path(log_path)
    if not log_path.is_file():
        return []
    with open(log_path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


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
