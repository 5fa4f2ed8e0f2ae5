"""Tests of keras_vit.variants: the table and the variant-string decoder."""

import pytest

from keras_vit import variants

# ../shared/REFERENCE.md: exact parameter counts at 224 with a 1000-class head.
REFERENCE_PARAMS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "S/32": 22_878_952,
    "B/8": 86_576_872,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/16": 304_326_632,
    "L/32": 306_535_400,
    "H/14": 632_045_800,
}


def test_every_standard_variant_has_a_reference_count():
    assert set(variants.STANDARD_VARIANTS) - {"Test/4"} == set(REFERENCE_PARAMS)


@pytest.mark.parametrize("variant, expected", sorted(REFERENCE_PARAMS.items()))
def test_param_formula_matches_reference(variant, expected):
    assert variants.get_config(variant).num_params() == expected


def test_headless_count_of_b16():
    assert variants.get_config("B/16").num_params(classes=0) == 85_798_656


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("Ti/16", (16, 192, 12, 3, 768)),
        ("S/32", (32, 384, 12, 6, 1536)),
        ("B/8", (8, 768, 12, 12, 3072)),
        ("L/16", (16, 1024, 24, 16, 4096)),
        ("H/14", (14, 1280, 32, 16, 5120)),
        ("Ti/4", (4, 192, 12, 3, 768)),
        (" B/16 ", (16, 768, 12, 12, 3072)),
    ],
)
def test_get_config_decodes_variant_strings(variant, expected):
    config = variants.get_config(variant)
    assert (config.patch_size, config.hidden_dim, config.num_layers, config.num_heads,
            config.mlp_dim) == expected


@pytest.mark.parametrize("bad", ["B16", "X/16", "B/0", "B/-16", "b/16", "B/16/2", ""])
def test_get_config_rejects_unknown_variants(bad):
    with pytest.raises(ValueError, match=r"Unknown variant"):
        variants.get_config(bad)


def test_get_config_rejects_non_strings():
    with pytest.raises(TypeError, match=r"variant=16"):
        variants.get_config(16)


def test_vit_config_validates_sizes():
    with pytest.raises(ValueError, match=r"hidden_dim=100 must be divisible by num_heads=3"):
        variants.ViTConfig(patch_size=4, hidden_dim=100, num_layers=1, num_heads=3, mlp_dim=8)
    with pytest.raises(ValueError, match=r"num_layers=0"):
        variants.ViTConfig(patch_size=4, hidden_dim=12, num_layers=0, num_heads=3, mlp_dim=8)
