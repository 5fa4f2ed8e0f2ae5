"""Tests of keras_vit.explain: attention maps from any keras_vit model,
attention rollout on hand-computed cases, overlays and the plots."""

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vit
from keras_vit import explain
from tests.conftest import randomize


def _model(**kwargs):
    return randomize(keras_vit.ViT("Test/4", input_shape=(16, 20, 3), classes=3, **kwargs), seed=3)


def _numpy_attention(block, x):
    """Attention weights of one block from its variables (NumPy)."""
    w = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v).astype(np.float64) for v in block.weights}
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mean) / np.sqrt(var + 1e-6) * w["norm1/gamma"] + w["norm1/beta"]
    q = np.einsum("btd,dhk->bhtk", h, w["attn/query/kernel"]) + w["attn/query/bias"].transpose(0, 1)[None, :, None]
    k = np.einsum("btd,dhk->bhtk", h, w["attn/key/kernel"]) + w["attn/key/bias"][None, :, None]
    logits = np.einsum("bhqk,bhtk->bhqt", q, k) / np.sqrt(q.shape[-1])
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_maps_shapes_values_and_outputs_unchanged(rng):
    model = _model()
    images = rng.uniform(-1, 1, (3, 16, 20, 3)).astype("float32")
    before = model.predict(images, verbose=0)
    maps = explain.attention_maps(model, images, batch_size=2)
    tokens = 1 + (16 // 4) * (20 // 4)
    assert len(maps) == 2 and all(m.shape == (3, 2, tokens, tokens) for m in maps)
    for m in maps:
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
    # Block 0's weights recomputed by hand from the tokens entering it.
    tokens_in = keras.Model(model.inputs, model.get_layer("block_0").input)(images).numpy().astype(np.float64)
    np.testing.assert_allclose(maps[0], _numpy_attention(model.get_layer("block_0"), tokens_in), atol=1e-5)
    np.testing.assert_allclose(model.predict(images, verbose=0), before)
    # One image, of another size: resized to the model's input.
    one = explain.attention_maps(model, rng.uniform(-1, 1, (40, 50, 3)).astype("float32"))
    assert one[1].shape == (1, 2, tokens, tokens)


def test_attention_maps_of_a_saved_and_loaded_model(rng, tmp_path):
    model = _model(include_preprocessing=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = rng.uniform(0, 255, (2, 16, 20, 3)).astype("float32")
    for a, b in zip(explain.attention_maps(model, images), explain.attention_maps(loaded, images)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _uniform(batch, tokens, heads=2):
    return np.full((batch, heads, tokens, tokens), 1.0 / tokens)


def test_rollout_of_uniform_and_identity_attention_is_uniform():
    mask = explain.attention_rollout([_uniform(2, 10)] * 3)
    assert mask.shape == (2, 3, 3)
    np.testing.assert_allclose(mask, 1.0)
    identity = np.broadcast_to(np.eye(10), (1, 2, 10, 10))
    np.testing.assert_allclose(explain.attention_rollout([identity] * 4), 0.0)


def test_rollout_of_one_block_is_its_normalised_class_token_row(rng):
    weights = rng.uniform(0, 1, (2, 3, 5, 5))
    weights /= weights.sum(-1, keepdims=True)
    mask = explain.attention_rollout([weights], grid=(2, 2))
    row = weights.mean(axis=1)[:, 0, 1:]
    np.testing.assert_allclose(mask.reshape(2, 4), row / row.max(-1, keepdims=True), atol=1e-6)
    mask = explain.attention_rollout([weights], head_fusion="max", grid=(2, 2))
    fused = weights.max(axis=1)
    expected = (fused + np.eye(5))[:, 0, 1:] / (fused + np.eye(5)).sum(-1)[:, :1]
    np.testing.assert_allclose(mask.reshape(2, 4), expected / expected.max(-1, keepdims=True), atol=1e-6)


def test_rollout_two_blocks_by_hand():
    a = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    b = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    fused_a = (a + np.eye(3)) / 2  # rows of a sum to 1, so of a + I to 2
    fused_b = (b + np.eye(3)) / 2
    expected = (fused_b @ fused_a)[0, 1:]
    mask = explain.attention_rollout([a[None, None], b[None, None]], grid=(1, 2))
    np.testing.assert_allclose(mask[0, 0], expected / expected.max(), atol=1e-12)
    # Every fused matrix, and so their product, is row-stochastic.
    np.testing.assert_allclose((fused_b @ fused_a).sum(-1), 1.0)


def test_rollout_discard_ratio_keeps_the_class_token(rng):
    weights = rng.uniform(0, 1, (1, 1, 5, 5))
    weights[0, 0, 0, 0] = 1e-9  # the smallest entry: class token to itself
    weights /= weights.sum(-1, keepdims=True)
    kept = explain.attention_rollout([weights], discard_ratio=0.5, grid=(2, 2))
    flat = weights[0, 0].reshape(-1).copy()
    lowest = np.argsort(flat, kind="stable")[: int(25 * 0.5)]
    flat[lowest[lowest != 0]] = 0.0
    fused = flat.reshape(5, 5) + np.eye(5)
    fused /= fused.sum(-1, keepdims=True)
    expected = fused[0, 1:] / fused[0, 1:].max()
    np.testing.assert_allclose(kept.reshape(-1), expected, atol=1e-6)


def test_rollout_from_a_model(rng):
    model = _model()
    images = rng.uniform(-1, 1, (2, 16, 20, 3)).astype("float32")
    mask = explain.attention_rollout(model, images, head_fusion="min", discard_ratio=0.9)
    assert mask.shape == (2, 4, 5) and np.isclose(mask.max(), 1.0) and mask.min() >= 0
    expected = explain.attention_rollout(explain.attention_maps(model, images), head_fusion="min",
                                         discard_ratio=0.9, grid=(4, 5))
    np.testing.assert_allclose(mask, expected)


def test_class_token_attention(rng):
    weights = rng.uniform(0, 1, (1, 2, 5, 5))
    weights /= weights.sum(-1, keepdims=True)
    one = explain.class_token_attention([weights, weights], layer=1, head=1)
    np.testing.assert_allclose(one.reshape(-1), weights[0, 1, 0, 1:] / weights[0, 1, 0, 1:].max(), atol=1e-6)
    with pytest.raises(ValueError, match=r"head must be in \[0, 1\] or None, received head=2"):
        explain.class_token_attention([weights], head=2)
    with pytest.raises(ValueError, match=r"layer must be in \[-1, 0\], received layer=3"):
        explain.class_token_attention([weights], layer=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(head_fusion="sum"), "head_fusion must be one of"), (dict(discard_ratio=1.0), r"discard_ratio must be in \[0, 1\)"),
     (dict(grid=(3, 3)), r"grid=\(3, 3\) does not hold the 4 patch tokens")],
)
def test_rollout_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        explain.attention_rollout([_uniform(1, 5)], **kwargs)


def test_not_a_vit():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has no TransformerBlock layers"):
        explain.attention_maps(model, np.zeros((1, 4)))
    with pytest.raises(TypeError, match="model must be a keras.Model"):
        explain.attention_maps("model.keras", np.zeros((1, 4)))


def test_overlay():
    image = np.zeros((8, 12, 3), np.uint8)
    mask = np.array([[0.0, 1.0], [0.0, 0.0]])
    picture = explain.overlay(image, mask, alpha=1.0, colormap="gray")
    assert picture.shape == (8, 12, 3) and picture.dtype == np.uint8
    assert picture[0, -1].tolist() == [255, 255, 255] and picture[-1, 0].tolist() == [0, 0, 0]
    half = explain.overlay(np.full((4, 4), 200.0), np.zeros((2, 2)), alpha=0.5, colormap="gray")
    assert half[0, 0].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match=r"mask must be \(grid_h, grid_w\)"):
        explain.overlay(image, np.zeros(4))


def test_embedding_pictures(tmp_path):
    model = _model()
    similarity = explain.position_embedding_similarity(model)
    assert similarity.shape == (4, 5, 4, 5)
    np.testing.assert_allclose([similarity[r, c, r, c] for r in range(4) for c in range(5)], 1.0, atol=1e-6)
    pictures, variance = explain.patch_embedding_components(model, count=5)
    assert pictures.shape == (5, 4, 4, 3) and pictures.min() == 0 and np.isclose(pictures.max(), 1)
    assert np.all(np.diff(variance) <= 1e-7) and 0 < variance.sum() <= 1 + 1e-6
    for png in (explain.plot_position_embedding_similarity(model, tmp_path / "pos.png"),
                explain.plot_patch_embedding_components(model, tmp_path / "pca.png", count=5),
                explain.plot_attention([np.zeros((16, 20, 3))], [np.ones((4, 5))], tmp_path / "att.png")):
        with Image.open(png) as image:
            assert image.size[0] > 200 and image.size[1] > 150


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from keras_vit import cli

    run = tmp_path_factory.mktemp("runs") / "digits"
    assert cli.main(["train", "--epochs", "2", "--output", str(run), "--hidden-dim", "16", "--num-heads", "2",
                     "--mlp-dim", "32", "--num-layers", "2", "--verbose", "0"]) == 0
    digit = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(digit).save(run.parent / "digit.png")
    Image.fromarray(np.dstack([digit] * 3)).resize((32, 32)).save(run.parent / "digit_big.jpg")
    return run


def test_cli_explain_rollout_and_one_head(digits_run, capsys):
    from keras_vit import cli, runs

    images = [str(digits_run.parent / "digit.png"), str(digits_run.parent / "digit_big.jpg")]
    out = digits_run.parent / "attention.png"
    assert cli.main(["explain", str(digits_run)] + images + ["--output", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = runs.predict(digits_run, images, top_k=1)
    assert lines[:2] == [f"{p}: {r[0][0]} {r[0][1]:.4f}" for p, r in zip(images, expected)]
    assert lines[2] == f"wrote {out}"
    with Image.open(out) as picture:
        assert picture.size[1] > 400  # two rows
    assert cli.main(["explain", str(digits_run), images[0], "--layer", "-1", "--head", "1",
                     "--output", str(out)]) == 0
    assert cli.main(["explain", str(digits_run), images[0], "--head", "1"]) == 2
    assert "--head needs --layer" in capsys.readouterr().err
    assert cli.main(["explain", str(digits_run), images[0], "--layer", "2"]) == 2
    assert "layer must be in [-2, 1], received layer=2" in capsys.readouterr().err
    assert cli.main(["explain", str(digits_run), "missing.png"]) == 2
    assert "Image not found: missing.png" in capsys.readouterr().err


def test_cli_inspect(digits_run, tmp_path, capsys):
    from keras_vit import cli

    assert cli.main(["inspect", str(digits_run), "--output", str(tmp_path / "inspect")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"position_embedding: {tmp_path / 'inspect' / 'position_embedding.png'}",
                     f"patch_embedding: {tmp_path / 'inspect' / 'patch_embedding.png'}",
                     f"curves: {digits_run / 'curves.png'}"]
    for name in ("position_embedding.png", "patch_embedding.png"):
        with Image.open(tmp_path / "inspect" / name) as picture:
            assert picture.size[0] > 300
    assert cli.main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "is not a training run" in capsys.readouterr().err
