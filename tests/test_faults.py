"""Fault injection (issue 8): SIGKILL at random points of training and while
checkpoints are written, SIGKILL during export, and a full disk during
checkpointing. Each run is a real `keras-vit` process; the figures (kills,
epochs lost) are printed (`pytest -n 0 -s`) and recorded in SECURITY.md."""

import contextlib
import csv
import errno
import io
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings

import h5py
import pytest

import keras_vit
from keras_vit import cli, runs
from keras_vit.runs import files as run_files

PYTHON = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
QUICK = ["--hidden-dim", "32", "--num-heads", "2", "--mlp-dim", "64", "--num-layers", "2",
         "--batch-size", "64", "--learning-rate", "5e-3", "--warmup-epochs", "0.5", "--verbose", "2"]
EPOCHS = 10


def _train_command(output, epochs=EPOCHS):
    # --checkpoint-every 0: last.keras and a backup every epoch, so that
    # what a kill loses is at most one epoch and writes are frequent.
    return [PYTHON, "-m", "keras_vit.cli", "train", "--epochs", str(epochs),
            "--output", str(output), "--checkpoint-every", "0"] + QUICK


def _train_here(output, epochs, extra=()):
    """The command of `_train_command`, run in this process (a setup that
    needs no kill: it saves a process start)."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(_train_command(output, epochs)[3:] + list(extra)) == 0


def _rows(output):
    # A fresh run (one killed before its first backup, started again) deletes
    # the old log.csv: it may go between a check and the open.
    try:
        with open(output / "log.csv", newline="") as f:
            return list(csv.reader(f))[1:]
    except FileNotFoundError:
        return []


def _temp_files(*directories):
    return [p for d in directories if d.is_dir() for p in d.iterdir() if run_files.TEMP_MARK in p.name]


def _check_visible_files(output):
    """Everything a user can see in the run directory is whole."""
    if (output / "config.json").exists():  # a kill may come before it is written
        json.loads((output / "config.json").read_text())
    rows = _rows(output)
    complete = [row for row in rows if len(row) == 5]
    assert [int(row[0]) for row in complete] == list(range(len(complete))), rows
    for name in ("best.keras", "last.keras"):
        if (output / name).exists():
            keras_vit.load_model(output / name)
    backup = runs.read_backup(output / "backup")
    if backup is not None:
        with h5py.File(output / "backup" / backup["weights"], "r") as f:
            assert len(f.keys()) > 0
    return len(complete), backup


def _kill_when(process, condition, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return True
        time.sleep(0.001)
    process.kill()
    pytest.fail("the kill point was never reached")


def test_sigkill_at_random_points_and_during_checkpoint_writes(tmp_path):
    """Four kills (two while a checkpoint or backup file is being written,
    two at random moments of an epoch), each followed by the same command:
    the run ends with the planned epochs, each logged once, a valid model,
    at most one epoch of work lost per kill, and no temporary file left.
    (test_runs' SIGKILL test checks what a resumed run restores, value by
    value.)"""
    output = tmp_path / "run"
    backup_dir = output / "backup"
    command = _train_command(output)
    rng = random.Random(8)
    plan = ["checkpoint write", "random", "checkpoint write", "random"]
    report = []
    attempts, max_attempts = 0, len(plan) + 2
    while True:
        attempts += 1
        assert attempts <= max_attempts, "the run did not finish"
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=ENV, text=True)
        started = len(_rows(output))
        if plan:
            point = plan[0]
            if point == "checkpoint write":
                killed = _kill_when(process, lambda: _temp_files(output, backup_dir))
            else:
                delay = rng.uniform(0.2, 1.5)
                first = [None]

                def inside_an_epoch():
                    rows = len(_rows(output))
                    if first[0] is None and rows > started:
                        first[0] = time.time()  # an epoch of this attempt has ended
                    return first[0] is not None and time.time() - first[0] > delay

                killed = _kill_when(process, inside_an_epoch)
            if killed:
                plan.pop(0)
                logged, backup = _check_visible_files(output)
                redo = backup["epoch"] if backup else 0
                lost = logged - redo  # epochs logged but trained again
                assert lost <= 1, (point, logged, backup)
                report.append((point, logged, redo, lost))
                continue
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out[-3000:]
        assert "AutoGraph could not transform" not in out, out[-3000:]  # a clean run's output
        break
    # Finished: every epoch once, a loadable final model, nothing half-written.
    assert [int(row[0]) for row in _rows(output)] == list(range(EPOCHS))
    results = json.loads((output / "results.json").read_text())
    assert results["epochs"] == EPOCHS and results["resumed"] is True
    keras_vit.load_model(output / "last.keras")
    keras_vit.load_model(output / "best.keras")
    assert not backup_dir.exists()
    assert _temp_files(output) == []
    total_lost = sum(lost for *_, lost in report)
    print(f"\nfault injection: {len(report)} SIGKILLs survived "
          f"({sum(p == 'checkpoint write' for p, *_ in report)} during checkpoint writes); "
          f"epochs lost per kill: {[lost for *_, lost in report]} (at most 1 each), "
          f"{total_lost} in all; the run finished its {EPOCHS} epochs")
    assert len(report) == 4


def _mount_tmpfs(path, size):
    """Mounts a tmpfs of `size` at `path`; returns None, or why it could not."""
    path.mkdir()
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("mount") is None:
        return "no mount command"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else f"mount failed: {result.stderr.strip()[:200]}"


def _fill(directory):
    """Writes one file until the file system is full; returns it (None when
    not even the new file's entry fits: seen once in CI, cause unknown; the
    training run beside it writes under 1 MB, so it is not that run)."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    try:
        # Unbuffered: a buffered file would flush its rest again on close and
        # raise ENOSPC there, outside the handler below.
        f = open(filler, "wb", buffering=0)
    except OSError as error:
        assert error.errno == errno.ENOSPC
        return None
    with f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_full_disk_during_checkpointing_fails_clearly_and_keeps_the_last_good_one(tmp_path, capsys):
    """A real full disk (a 64 MB tmpfs, filled once two epochs are logged)
    when this machine lets the test mount one; else the same failure
    injected into the writes in this process."""
    disk = tmp_path / "disk"
    unmountable = _mount_tmpfs(disk, "64m")
    if unmountable:
        # Said, not silent (issue 30): CI runs as root and takes the real path.
        warnings.warn(pytest.PytestWarning(
            f"full-disk test: no real small file system here ({unmountable}); the ENOSPC failure is "
            "injected into the checkpoint writes instead"))
        print(f"\nfull disk: injected, not real ({unmountable})")
        _full_disk_injected(tmp_path)
        return
    process = None
    try:
        output = disk / "run"
        command = _train_command(output, epochs=10)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=ENV, text=True)
        deadline = time.time() + 240
        while len(_rows(output)) < 2 or not (output / "last.keras").exists():
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.01)
        filler = _fill(disk)
        _, err = process.communicate(timeout=240)
        lines = [line for line in err.splitlines() if line.startswith("keras-vit train: error:")]
        assert process.returncode == 2, err[-3000:]
        assert len(lines) == 1, err[-3000:]
        assert "No space left on device" in lines[0] and "kept" in lines[0], lines[0]
        logged, backup = _check_visible_files(output)  # all whole
        assert logged >= 2 and backup is not None
        keras_vit.load_model(output / "last.keras")
        print(f"\nfull disk: {lines[0]}")
        # Space again: the same command goes on from the last backup.
        if filler is not None:
            filler.unlink()
        # (In this process: the same code as the command, without a start.)
        capsys.readouterr()
        assert cli.main(command[3:5] + ["5"] + command[6:]) == 2
        assert "unfinished run with other settings (epochs)" in capsys.readouterr().err
        assert cli.main(command[3:]) == 0
        assert "(resumed)" in capsys.readouterr().out
        assert [int(row[0]) for row in _rows(output)] == list(range(10))
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        # Lazy: a failed assertion can leave files open there, and a plain
        # umount would then leave the tmpfs mounted after the test.
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)


def _full_disk_injected(tmp_path):
    import keras

    output = tmp_path / "run"
    real_save = keras.Model.save

    def save(self, filepath, *args, **kwargs):
        if (output / "last.keras").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, filepath, *args, **kwargs)

    keras.Model.save = save
    try:
        config = runs.TrainConfig(output=str(output), epochs=4, hidden_dim=32, num_heads=2,
                                  mlp_dim=64, num_layers=2, batch_size=64, verbose=0,
                                  checkpoint_every=0)
        with pytest.raises(runs.RunError, match=r"No space left on device; the previous .* is kept"):
            runs.train(config)
    finally:
        keras.Model.save = real_save
    keras_vit.load_model(output / "last.keras")
    assert _temp_files(output) == []


def test_sigkill_during_export_leaves_no_visible_version(tmp_path):
    run = tmp_path / "run"
    _train_here(run, epochs=1)
    base = tmp_path / "export"
    base.mkdir()
    command = [PYTHON, "-m", "keras_vit.cli", "export", str(run), "--output", str(base)]
    kills = 0
    for delay in (0.0, 0.05, 0.2):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)

        def writing():
            temps = [p for p in base.iterdir() if p.name.startswith(".tmp-keras-vit-")]
            if temps and delay:
                time.sleep(delay)
            return bool(temps)

        if _kill_when(process, writing):
            kills += 1
        # Only whole versions are visible (TF Serving ignores hidden folders).
        assert [p.name for p in base.iterdir() if not p.name.startswith(".")] == []
    assert kills == 3
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert keras_vit.export.list_versions(base) == [1]
    assert (base / "1" / "saved_model.pb").is_file()
    print(f"\nexport: {kills} SIGKILLs during the write left no visible version; the next export wrote 1")


def test_leftover_temporary_files_are_removed_on_resume(tmp_path):
    output = tmp_path / "run"
    _train_here(output, epochs=2)
    backup = output / "backup"
    backup.mkdir()
    # What a kill during writes leaves: hidden temporaries, a backup with no metadata.
    (output / f".last{run_files.TEMP_MARK}123.keras").write_bytes(b"half")
    (backup / "epoch-9.weights.h5").write_bytes(b"half")
    assert runs.read_backup(backup) is None
    _train_here(output, epochs=2, extra=["--overwrite"])
    assert _temp_files(output) == [] and not backup.exists()
    assert pathlib.Path(output / "results.json").is_file()
