"""Run by tests/test_distribute.py in a subprocess under `KERAS_BACKEND=jax`
with two virtual CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`,
which must be set before JAX starts):

    python tests/_distribution_worker.py DIR

Fits one small ViT three times from the same weights on the same batches
(no shuffling, no stochastic layers): on one device, under Keras'
`DataParallel` and under `ModelParallel` with keras_vit's layout map, and
prints one `RESULT {json}` line with the losses, the largest weight
differences to the one-device run and how the variables were placed. It
then trains a run with `keras_vit.runs.train(strategy="model_parallel")`
into DIR/run.
"""

import json
import pathlib
import sys


def _fit(distribution, weights, x, y):
    import contextlib

    import keras

    import keras_vit
    from keras_vit import training

    with distribution.scope() if distribution is not None else contextlib.nullcontext():
        model = keras_vit.ViT("Test/4", input_shape=x.shape[1:], classes=4, num_heads=4, mlp_dim=64)
        model.set_weights(weights)
        training.compile(model, steps=6, warmup_steps=1)
        history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        # 13 examples in batches of 8: the last batch (5) does not split over
        # 2 devices, which Keras' distribution API refuses
        # (keras-team/keras#21167); pad_batches pads it with zero weights.
        import tensorflow as tf

        from keras_vit import distribute

        batches = tf.data.Dataset.from_tensor_slices((x[:13], y[:13])).batch(8)
        if distribution is not None:
            batches = distribute.pad_batches(batches, 2)
        accuracy = model.evaluate(batches, verbose=0, return_dict=True)["accuracy"]
    placement = {
        v.path: [tuple(v.value.sharding.spec)[i] if i < len(v.value.sharding.spec) else None
                 for i in range(len(v.shape))] for v in model.weights
        if v.path in ("block_0/attn/query/kernel", "block_0/mlp_fc1/kernel", "block_0/mlp_fc2/kernel",
                      "head/kernel")
    } if distribution is not None else {}
    return history.history["loss"], [keras.ops.convert_to_numpy(w) for w in model.get_weights()], placement, \
        float(accuracy)


def main(directory):
    import keras
    import numpy as np

    import keras_vit
    from keras_vit import distribute, runs

    result = {"backend": keras.backend.backend(), "devices": len(keras.distribution.list_devices())}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 4, 4)
    keras.utils.set_random_seed(0)
    weights = keras_vit.ViT("Test/4", input_shape=x.shape[1:], classes=4, num_heads=4, mlp_dim=64).get_weights()

    single, single_weights, _, single_accuracy = _fit(None, weights, x, y)
    result["losses"] = {"single": single}
    result["accuracy"] = {"single": single_accuracy}
    for name in distribute.KERAS_DISTRIBUTIONS:
        losses, trained, placement, accuracy = _fit(distribute.get_distribution(name), weights, x, y)
        result["losses"][name] = losses
        result["accuracy"][name] = accuracy
        result.setdefault("weight_diff", {})[name] = max(
            float(np.abs(a - b).max()) for a, b in zip(single_weights, trained))
        result.setdefault("placement", {})[name] = placement
    result["auto"] = repr(distribute.get_strategy("auto"))

    # A model whose heads the model axis cannot split.
    distribution = distribute.get_distribution("model_parallel", model_parallel=2)
    odd = keras_vit.ViT("Test/4", input_shape=x.shape[1:], classes=4, num_heads=1, mlp_dim=64)
    try:
        distribute.check_layout(odd, distribution)
    except ValueError as error:
        result["layout_error"] = str(error)

    # A whole run (the digits, one short epoch, a one-block model whose two
    # heads split over the two devices) model-parallel.
    config = runs.TrainConfig(data="digits", output=str(pathlib.Path(directory) / "run"), epochs=1,
                              strategy="model_parallel", verbose=0, num_layers=1, hidden_dim=32,
                              num_heads=2, mlp_dim=64)
    trained = runs.train(config)
    result["run"] = {key: trained.results[key] for key in ("test_accuracy", "num_replicas", "backend")}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
