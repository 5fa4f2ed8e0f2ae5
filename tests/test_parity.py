"""Parity with the reference implementations, on random weights.

A timm (or Hugging Face) model gets every parameter drawn at random, LayerNorm
scales and biases included, so a swapped or transposed mapping cannot pass.
It is written as a checkpoint, loaded into keras_vit, and both models
classify the same images. Tolerance: max abs difference of logits <= 1e-4 in
float32.
"""

import functools

import numpy as np
import pytest

import keras_vit
from tests.conftest import randomize_torch

torch = pytest.importorskip("torch", reason="parity tests need the [test] extra")
timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402
from timm.models import vision_transformer as timm_vit  # noqa: E402

ATOL = 1e-4

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
    torch.set_num_threads(2)


def _timm_model(name, seed=0, **kwargs):
    return randomize_torch(timm.create_model(name, pretrained=False, **kwargs), seed)


def _images(size, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    # Real photographs, scaled to the size and preprocessed, plus noise.
    from skimage import data, transform

    photos = [transform.resize(data.astronaut(), (size, size), preserve_range=True),
              transform.resize(data.chelsea(), (size, size), preserve_range=True)][:batch]
    photos = keras_vit.preprocess_input(np.stack(photos))
    noise = rng.uniform(-1, 1, photos.shape).astype("float32")
    return np.concatenate([photos, noise]).astype("float32")


def _torch_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _save_state_dict(module, path):
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def _assert_close(actual, expected):
    difference = float(np.max(np.abs(actual - expected)))
    assert difference <= ATOL, f"max abs difference {difference:.3g} > {ATOL}"
    # Random weights must give logits far from each other, or the check is void.
    assert float(np.std(expected)) > 0.1


@pytest.mark.parametrize(
    "timm_name, builder",
    [("vit_tiny_patch16_224", keras_vit.ViTTi16), ("vit_base_patch16_224", keras_vit.ViTB16)],
)
def test_timm_safetensors_and_google_npz(timm_name, builder, tmp_path):
    reference = _timm_model(timm_name)
    images = _images(224)
    expected = _torch_logits(reference, images)

    path = _save_state_dict(reference, tmp_path / "timm.safetensors")
    model = builder(weights=path, classifier_activation=None)
    _assert_close(model.predict(images, verbose=0), expected)

    # Google .npz written from keras_vit; timm's own .npz loader must read it
    # into the same model, and keras_vit must load it back to the same logits.
    npz = keras_vit.save_npz(model, tmp_path / "google.npz")
    from_npz = timm.create_model(timm_name, pretrained=False).eval()
    timm_vit._load_weights(from_npz, str(npz))
    _assert_close(_torch_logits(from_npz, images), expected)
    _assert_close(builder(weights=npz, classifier_activation=None).predict(images, verbose=0), expected)


def test_npz_at_other_resolution_matches_timm_npz_loader(tmp_path):
    # timm's .npz loader resamples the position embedding bilinearly without
    # antialiasing, keras_vit's default.
    reference = _timm_model("vit_tiny_patch16_224", seed=1)
    model = keras_vit.ViTTi16(weights=_save_state_dict(reference, tmp_path / "t.safetensors"))
    npz = keras_vit.save_npz(model, tmp_path / "ti16_224.npz")
    timm_288 = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=288).eval()
    timm_vit._load_weights(timm_288, str(npz))
    images = _images(288, seed=1)
    keras_288 = keras_vit.ViTTi16(weights=npz, input_shape=(288, 288, 3), classifier_activation=None)
    _assert_close(keras_288.predict(images, verbose=0), _torch_logits(timm_288, images))
    np.testing.assert_allclose(
        keras_288.get_layer("patch_encoder").position_embedding.numpy(),
        timm_288.pos_embed.detach().numpy(),
        atol=1e-6,
    )


@pytest.mark.parametrize("new_size", [(384, 384), (160, 224)])
def test_safetensors_at_other_resolution_matches_timm_bicubic(new_size, tmp_path):
    # timm's state-dict filter resamples bicubically with antialiasing.
    reference = _timm_model("vit_tiny_patch16_224", seed=2)
    path = _save_state_dict(reference, tmp_path / "t.safetensors")
    target = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=new_size).eval()
    state = timm_vit.checkpoint_filter_fn(dict(reference.state_dict()), target)
    target.load_state_dict(state)
    model = keras_vit.ViTTi16(
        weights=None, input_shape=new_size + (3,), classifier_activation=None
    )
    keras_vit.load_weights(model, path, interpolation="bicubic", antialias=True)
    np.testing.assert_allclose(
        model.get_layer("patch_encoder").position_embedding.numpy(),
        target.pos_embed.detach().numpy(),
        atol=1e-6,
    )
    images = np.random.default_rng(3).uniform(-1, 1, (2,) + new_size + (3,)).astype("float32")
    _assert_close(model.predict(images, verbose=0), _torch_logits(target, images))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("old, new", [((14, 14), (24, 24)), ((14, 14), (7, 9)), ((7, 5), (16, 11))])
def test_resampling_equals_torch_interpolate(interpolation, antialias, old, new):
    rng = np.random.default_rng(4)
    embedding = rng.normal(size=(1, 1 + old[0] * old[1], 6)).astype("float32")
    grid = torch.from_numpy(embedding[:, 1:].reshape(1, *old, 6)).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        grid, size=new, mode=interpolation, align_corners=False, antialias=antialias
    ).permute(0, 2, 3, 1).reshape(1, -1, 6).numpy()
    actual = keras_vit.resample_position_embedding(
        embedding, new, old_grid=old, interpolation=interpolation, antialias=antialias
    )
    np.testing.assert_allclose(actual[:, 1:], expected, atol=1e-5)
    np.testing.assert_array_equal(actual[:, :1], embedding[:, :1])


def test_transformer_block_matches_timm_block(rng):
    block_ref = randomize_torch(
        timm_vit.Block(dim=48, num_heads=4, mlp_ratio=2.0, qkv_bias=True,
                       norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)),
        seed=5,
    )
    block = keras_vit.TransformerBlock(hidden_dim=48, num_heads=4, mlp_dim=96)
    x = rng.normal(size=(2, 10, 48)).astype("float32")
    block.build(x.shape)
    state = {k: v.numpy() for k, v in block_ref.state_dict().items()}
    qkv_w, qkv_b = state["attn.qkv.weight"].T, state["attn.qkv.bias"]
    for i, dense in enumerate((block.attn.query_dense, block.attn.key_dense, block.attn.value_dense)):
        dense.kernel.assign(qkv_w[:, 48 * i:48 * (i + 1)].reshape(48, 4, 12))
        dense.bias.assign(qkv_b[48 * i:48 * (i + 1)].reshape(4, 12))
    block.attn.output_dense.kernel.assign(state["attn.proj.weight"].T.reshape(4, 12, 48))
    block.attn.output_dense.bias.assign(state["attn.proj.bias"])
    for ours, theirs in ((block.norm1, "norm1"), (block.norm2, "norm2")):
        ours.gamma.assign(state[f"{theirs}.weight"])
        ours.beta.assign(state[f"{theirs}.bias"])
    for ours, theirs in ((block.mlp_fc1, "mlp.fc1"), (block.mlp_fc2, "mlp.fc2")):
        ours.kernel.assign(state[f"{theirs}.weight"].T)
        ours.bias.assign(state[f"{theirs}.bias"])
    with torch.no_grad():
        expected = block_ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(block(x).numpy(), expected, atol=1e-5)


def test_huggingface_vit_for_image_classification(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=4,
        num_attention_heads=3, intermediate_size=768, num_labels=10,
        layer_norm_eps=1e-6, hidden_act="gelu",
    )
    reference = randomize_torch(transformers.ViTForImageClassification(config), seed=6)
    reference.save_pretrained(tmp_path / "hf", safe_serialization=True)
    images = _images(224, seed=6)
    with torch.no_grad():
        expected = reference(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        ).logits.numpy()
    model = keras_vit.ViT("Ti/16", num_layers=4, classes=10, classifier_activation=None,
                          weights=tmp_path / "hf" / "model.safetensors")
    _assert_close(model.predict(images, verbose=0), expected)


def test_param_counts_equal_timm():
    # Built on PyTorch's meta device: no memory, no initialisation.
    from keras_vit import variants
    from tests.test_variants import REFERENCE_PARAMS

    with torch.device("meta"):
        for variant, timm_name in variants.STANDARD_VARIANTS.items():
            if timm_name is None:
                continue
            reference = timm.create_model(timm_name, pretrained=False, num_classes=1000)
            count = sum(p.numel() for p in reference.parameters())
            assert count == REFERENCE_PARAMS[variant], variant
            assert variants.get_config(variant).num_params() == count, variant
