"""Tests of keras_vit.distribute: strategy choice, MirroredStrategy over two
logical CPUs, and two worker processes under MultiWorkerMirroredStrategy
(training, resuming a preempted run, refusing a run directory)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from keras_vit import distribute

PYTHON = sys.executable


def test_default_strategy_and_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match=r"strategy=.gpus."):
        distribute.get_strategy("gpus")
    with pytest.raises(ValueError, match=r"needs TF_CONFIG"):
        distribute.get_strategy("multi_worker")


def test_is_chief(monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON"):
        distribute.get_strategy("auto")
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.is_chief()


def _run(script, args=(), env=None, timeout=300):
    return subprocess.run([PYTHON, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


# A digits run into argv[1] under {strategy}, printing RESULT (or ERROR with
# exit code 2). With DIE_AFTER_EPOCH, the process dies right after the
# backup of that epoch, as a preempted cluster does; TMPDIR is where worker 1
# of a multi-worker run keeps its scratch copies.
_TRAIN_SCRIPT = """
import json, os, sys
from keras_vit import runs
from keras_vit.runs import callbacks
die = int(os.environ.get("DIE_AFTER_EPOCH", "0"))
save = callbacks.AtomicBackupAndRestore.on_epoch_end
def on_epoch_end(self, epoch, logs=None):
    save(self, epoch, logs)
    if epoch + 1 == die:
        os._exit(3)
callbacks.AtomicBackupAndRestore.on_epoch_end = on_epoch_end
config = runs.TrainConfig(data="digits", epochs=3, output=sys.argv[1], hidden_dim=32, num_heads=2,
                          mlp_dim=64, num_layers=2, batch_size=64, learning_rate=3e-3,
                          warmup_epochs=0.5, strategy={strategy!r}, verbose=2, tta="flip",
                          checkpoint_every=0)
try:
    run = runs.train(config)
except runs.RunError as error:
    print("ERROR " + str(error))
    sys.exit(2)
weights = run.model.get_weights()
print("RESULT " + json.dumps(dict(
    epochs=len(run.history["loss"]), resumed=run.results["resumed"], replicas=run.results["num_replicas"],
    loss=run.history["loss"], accuracy=run.results["test_accuracy"],
    without_tta=run.results["test_accuracy_without_tta"],
    checksum=float(sum(float(abs(w).sum()) for w in weights)),
    first=[float(x) for x in weights[0].ravel()[:8]])))
"""
_RESUMABLE_SCRIPT = _TRAIN_SCRIPT.format(strategy="multi_worker")


def _result(completed):
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    # Logical devices must be configured before TensorFlow starts: a fresh process.
    script = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    """) + _TRAIN_SCRIPT.format(strategy="mirrored")
    result = _result(_run(script, [str(tmp_path / "run")]))
    assert result["replicas"] == 2
    assert result["loss"][-1] < result["loss"][0]
    assert result["without_tta"] > 0.2  # twice chance after 3 short epochs
    assert (tmp_path / "run" / "best.keras").is_file()
    # The test-time flips, evaluated under the strategy, give what evaluate
    # gives in this process without one.
    from keras_vit import runs

    run = tmp_path / "run"
    assert runs.evaluate(run)["accuracy"] == pytest.approx(result["accuracy"], abs=1e-6)
    assert runs.evaluate(run, tta="none")["accuracy"] == pytest.approx(result["without_tta"], abs=1e-6)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(script, args_per_worker, env=None, timeout=420, chief_task=False):
    """Runs `script` as worker 0 and 1 of a two-worker TF_CONFIG cluster on
    this machine (with `chief_task`, as the `chief` and worker 0); returns
    their `CompletedProcess`es."""
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    if chief_task:
        cluster, tasks = {"chief": addresses[:1], "worker": addresses[1:]}, [("chief", 0), ("worker", 0)]
    else:
        cluster, tasks = {"worker": addresses}, [("worker", 0), ("worker", 1)]
    processes = []
    for (task_type, index), args in zip(tasks, args_per_worker):
        worker_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {}),
                      "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}
        processes.append(subprocess.Popen([PYTHON, "-c", script] + args, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=worker_env))
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            outputs.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return outputs


def _error(completed):
    assert completed.returncode == 2, completed.stderr[-3000:]
    return next(l for l in completed.stdout.splitlines() if l.startswith("ERROR "))[len("ERROR "):]


@pytest.mark.slow
def test_a_preempted_multi_worker_run_resumes_on_every_worker_then_refuses_to_run_again(tmp_path):
    # Two workers under MultiWorkerMirroredStrategy, stopped after epoch 2
    # and started again. Fails without distribute.patch_keras_multi_worker
    # (keras-team/keras#20585).
    from keras_vit import runs

    output, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    killed = _run_workers(_RESUMABLE_SCRIPT, [[str(output)]] * 2,
                          env={"DIE_AFTER_EPOCH": "2", "TMPDIR": str(scratch)})
    assert [c.returncode for c in killed] == [3, 3], killed[0].stderr[-3000:]
    assert runs.read_backup(output / "backup")["epoch"] == 2
    assert len(runs.read_log(output / "log.csv")) == 2

    # (Workers that see different backups are refused before any training:
    # test_a_chief_task_and_a_worker_that_see_different_backups_are_both_refused.)
    # Rerun as it was: both workers restore the chief's backup and train the
    # last epoch only, in step: synchronous training, identical weights.
    resumed_scratch = tmp_path / "scratch2"
    resumed_scratch.mkdir()
    chief, worker = (_result(c) for c in _run_workers(_RESUMABLE_SCRIPT, [[str(output)]] * 2,
                                                     env={"TMPDIR": str(resumed_scratch)}))
    assert chief["resumed"] and worker["resumed"]
    assert chief["replicas"] == worker["replicas"] == 2
    assert chief["epochs"] == worker["epochs"] == 1
    assert chief["first"] == worker["first"]
    assert chief["checksum"] == pytest.approx(worker["checksum"], rel=1e-6)
    assert chief["loss"] == pytest.approx(worker["loss"], rel=1e-6)
    # The final evaluation, test-time flips included, runs on both workers.
    assert chief["accuracy"] == pytest.approx(worker["accuracy"], abs=1e-6)
    assert chief["without_tta"] == pytest.approx(worker["without_tta"], abs=1e-6)
    log = runs.read_log(output / "log.csv")
    assert [int(row["epoch"]) for row in log] == [0, 1, 2]  # each epoch once
    assert float(log[-1]["loss"]) < float(log[0]["loss"])
    assert json.loads((output / "results.json").read_text())["resumed"] is True
    # Only the chief writes the run's files; the backup is gone.
    assert sorted(p.name for p in output.iterdir()) == [
        "best.keras", "config.json", "curves.png", "last.keras", "log.csv", "logs", "results.json",
    ]
    # Worker 1's scratch copies (checkpoints, backup) are removed when it
    # ends; only a killed process leaves its own behind.
    assert list(resumed_scratch.glob("keras_vit_worker_*")) == []
    assert len(list(scratch.glob("keras_vit_worker_*"))) == 1

    # The run is finished now: it is not trained again without overwrite.
    # The chief says why; the other worker stops with it instead of waiting
    # for it.
    chief, worker = _run_workers(_RESUMABLE_SCRIPT, [[str(output)]] * 2, timeout=180)
    assert _error(chief).startswith(f"{output} already holds a finished run")
    assert _error(worker) == (f"the chief worker refused {output} (see its error): fix that, then "
                              "start every worker again.")


@pytest.mark.slow
def test_a_chief_task_and_a_worker_that_see_different_backups_are_both_refused(tmp_path):
    # A worker that cannot see the chief's backup (its --output elsewhere, as
    # on a file system the workers do not share) is refused before any
    # training, on both workers, and the run is left as it was. TF_CONFIG
    # with a separate `chief` task: the message names each by its task. The
    # chief's folder holds a complete backup (what read_backup checks); the
    # check comes before any weights are read.
    output, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (output / "backup").mkdir(parents=True)
    (output / "backup" / "epoch-2.weights.h5").write_bytes(b"")
    metadata = json.dumps({"epoch": 2, "batch": 0, "weights": "epoch-2.weights.h5"})
    (output / "backup" / "training_metadata.json").write_text(metadata)
    refused = _run_workers(_RESUMABLE_SCRIPT, [[str(output)], [str(elsewhere)]], chief_task=True, timeout=180)
    for completed, own in zip(refused, [output, elsewhere]):  # each names the folder it read
        assert _error(completed) == (
            f"the workers found different backups in {own / 'backup'} (chief: epoch 2, worker 0: none): "
            "resuming a multi-worker run needs its --output on a file system that every worker shares; "
            "rerun with such an --output, or pick another --output to start again."
        )
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == [
        "backup", "backup/epoch-2.weights.h5", "backup/training_metadata.json"]
    assert (output / "backup" / "training_metadata.json").read_text() == metadata


@pytest.mark.slow
def test_fused_adamw_under_mirrored_strategy_matches_keras_adamw():
    # keras_vit.training.AdamW updates each replica's copy with TensorFlow's
    # fused kernels: the copies must stay equal and match Keras' AdamW.
    script = textwrap.dedent("""
        import json
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np
        import keras_vit
        from keras_vit import training

        def fit(optimizer_class):
            keras.utils.set_random_seed(0)
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            with strategy.scope():
                model = keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=3)
                opt = optimizer_class(learning_rate=training._schedule(1e-2, 20, 2), weight_decay=0.3,
                                      global_clipnorm=1.0)
                opt.exclude_from_weight_decay(var_names=list(training.NO_WEIGHT_DECAY))
                model.compile(optimizer=opt, loss="categorical_crossentropy")
            x = np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
            y = np.eye(3)[np.arange(32) % 3]
            # Not the key bias: its gradient is zero in exact arithmetic, so
            # Adam steps it by the sign of rounding noise (tests/test_training.py).
            weights = [w for w in model.weights if not w.path.endswith("key/bias")]
            untrained = [w.numpy() for w in weights]
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            replicas = [[c.numpy() for c in w.value.values] for w in weights]
            spread = max(float(np.abs(r[0] - r[-1]).max()) for r in replicas)
            return [r[0] for r in replicas], spread, len(replicas[0]), untrained

        keras_w, _, _, untrained = fit(keras.optimizers.AdamW)
        fused_w, spread, copies, fused_untrained = fit(training.AdamW)
        assert all(np.array_equal(a, b) for a, b in zip(untrained, fused_untrained))  # the same start
        print("RESULT " + json.dumps(dict(
            copies=copies, spread=spread,
            diff=max(float(np.abs(a - b).max()) for a, b in zip(fused_w, keras_w)),
            moved=max(float(np.abs(a - b).max()) for a, b in zip(untrained, keras_w)))))
    """)
    result = _result(_run(script))
    assert result["copies"] == 2
    assert result["spread"] == 0.0
    assert result["moved"] > 1e-2  # training changed the weights...
    assert result["diff"] < 1e-4  # ...and both optimizers the same way (float32 rounding)


def test_keras_distributions_are_refused_off_jax_by_name():
    # This process runs the TensorFlow backend.
    for name in distribute.KERAS_DISTRIBUTIONS:
        with pytest.raises(ValueError, match=rf"'{name}' is Keras' distribution API, which runs on the JAX "
                                             r"backend \(KERAS_BACKEND=jax\); this is the tensorflow backend: "
                                             r"use a tf.distribute strategy such as 'mirrored'\."):
            distribute.get_strategy(name)
    with pytest.raises(ValueError, match=r"name must be one of data_parallel, model_parallel; received "
                                         r"name='mirrored'\."):
        distribute.get_distribution("mirrored")


def test_pad_batches_pads_the_last_batch_with_zero_weight_rows():
    import numpy as np
    import tensorflow as tf

    images = np.arange(5 * 2, dtype="float32").reshape(5, 2)
    labels = np.eye(5, dtype="float32")
    padded = list(distribute.pad_batches(tf.data.Dataset.from_tensor_slices((images, labels)).batch(3), 2))
    assert [tuple(b.shape[0] for b in batch) for batch in padded] == [(4, 4, 4), (2, 2, 2)]
    first, second = padded
    np.testing.assert_array_equal(first[0].numpy()[:3], images[:3])
    np.testing.assert_array_equal(first[0].numpy()[3], [0, 0])
    np.testing.assert_array_equal(first[2].numpy(), [1, 1, 1, 0])
    np.testing.assert_array_equal(second[2].numpy(), [1, 1])
    np.testing.assert_array_equal(second[1].numpy(), labels[3:])


@pytest.fixture(scope="module")
def jax_distributed(tmp_path_factory):
    """What tests/_distribution_worker.py reports on two virtual CPU devices."""
    pytest.importorskip("jax")
    directory = tmp_path_factory.mktemp("jax_distribution")
    worker = os.path.join(os.path.dirname(__file__), "_distribution_worker.py")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run(
        [PYTHON, worker, str(directory)], capture_output=True, text=True, timeout=900,
        env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": root,
             "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"})
    line = next((l for l in completed.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert completed.returncode == 0 and line, completed.stderr[-4000:]
    return json.loads(line[len("RESULT "):])


def test_data_and_model_parallel_on_two_jax_devices_train_as_one_device(jax_distributed):
    result = jax_distributed
    assert result["backend"] == "jax" and result["devices"] == 2
    single = result["losses"]["single"]
    assert single[-1] < single[0]  # it learned, so equal losses say something
    for name in ("data_parallel", "model_parallel"):
        assert result["losses"][name] == pytest.approx(single, abs=1e-5), name
        assert result["weight_diff"][name] < 3e-4, result["weight_diff"]
        # 13 examples on 2 devices: the evaluation's last batch (5) does not
        # divide; padded by pad_batches, it counts as on one device.
        assert result["accuracy"][name] == pytest.approx(result["accuracy"]["single"]), result["accuracy"]
    # DataParallel replicates; ModelParallel splits heads and MLP units.
    assert result["placement"]["data_parallel"] == {
        "block_0/attn/query/kernel": [None, None, None],
        "block_0/mlp_fc1/kernel": [None, None],
        "block_0/mlp_fc2/kernel": [None, None],
        "head/kernel": [None, None],
    }
    assert result["placement"]["model_parallel"] == {
        "block_0/attn/query/kernel": [None, "model", None],
        "block_0/mlp_fc1/kernel": [None, "model"],
        "block_0/mlp_fc2/kernel": ["model", None],
        "head/kernel": [None, None],
    }
    assert result["auto"].startswith("KerasDistribution(<DataParallel")
    assert result["layout_error"] == ("model_parallel=2 must divide the number of heads (1) and the MLP "
                                      "width (64) of block_0.")


def test_a_model_parallel_run_trains_and_evaluates_on_jax(jax_distributed):
    run = jax_distributed["run"]
    # mesh (batch 1, model 2): one data-parallel replica.
    assert run["backend"] == "jax" and run["num_replicas"] == 1
    assert run["test_accuracy"] > 0.15  # one short epoch, ten classes
