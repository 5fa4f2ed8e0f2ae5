"""The table of ViT sizes and the one place where variant strings are decoded.

A variant string is `"<size>/<patch_size>"`, as in the ViT paper, vit_jax and
big_vision: `"B/16"` is the base size with 16x16 patches. Any patch size is
accepted (`"Ti/4"` for 32x32 images), and the standard models of the paper
and timm are listed in `STANDARD_VARIANTS`.
"""

import dataclasses
import re

from keras_vit._validation import check_positive_int


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """The architecture of one ViT: everything a checkpoint's shapes depend on.

    Attributes:
        patch_size: side of the square patches, in pixels.
        hidden_dim: model width D.
        num_layers: number of Transformer blocks.
        num_heads: attention heads per block.
        mlp_dim: width of each block's MLP.
    """

    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check_positive_int(field.name, getattr(self, field.name))
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must be divisible by "
                f"num_heads={self.num_heads}."
            )

    def num_params(self, image_size=224, classes=1000, representation_size=None,
                   channels=3):
        """Exact parameter count of the model, computed without building it.

        `L(4D^2 + 2DM + 9D + M) + (P^2 C D + D) + D + (N+1)D + 2D`, plus the
        pre-logits layer and the head when they are present
        (`classes=0` for no head).
        """
        d, m, p = self.hidden_dim, self.mlp_dim, self.patch_size
        height, width = (
            (image_size, image_size) if isinstance(image_size, int) else image_size
        )
        num_patches = (height // p) * (width // p)
        count = self.num_layers * (4 * d * d + 2 * d * m + 9 * d + m)
        count += p * p * channels * d + d  # patch embedding
        count += d + (num_patches + 1) * d + 2 * d  # class token, positions, norm
        if representation_size:
            count += d * representation_size + representation_size
            d = representation_size
        if classes:
            count += d * classes + classes
        return count


# The names of `ViTConfig`'s fields: the size arguments of `ViT(...)`, of a
# training run's config and of a checkpoint's architecture, spelled once.
ARCHITECTURE_FIELDS = tuple(field.name for field in dataclasses.fields(ViTConfig))

# Sizes of the ViT paper (Table 1), "How to train your ViT?" and timm.
# "Test" is a few-thousand-parameter model for fast unit tests.
SIZES = {
    "Test": dict(hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32),
    "Ti": dict(hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_dim=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}

# The standard models, each with a builder (`ViTB16`, ...) and the timm model
# of the same architecture. "Test/4" is the tiny test variant.
STANDARD_VARIANTS = {
    "Test/4": None,
    "Ti/16": "vit_tiny_patch16_224",
    "S/16": "vit_small_patch16_224",
    "S/32": "vit_small_patch32_224",
    "B/8": "vit_base_patch8_224",
    "B/16": "vit_base_patch16_224",
    "B/32": "vit_base_patch32_224",
    "L/16": "vit_large_patch16_224",
    "L/32": "vit_large_patch32_224",
    "H/14": "vit_huge_patch14_224",
}

_VARIANT_PATTERN = re.compile(r"^(?P<size>[A-Za-z]+)/(?P<patch>[0-9]+)$")


def get_config(variant):
    """Decodes a variant string such as `"B/16"` into a `ViTConfig`.

    Args:
        variant: `"<size>/<patch_size>"` with size one of `SIZES`
            (`"Ti"`, `"S"`, `"B"`, `"L"`, `"H"`, `"Test"`) and any positive
            patch size.

    Returns:
        A `ViTConfig`.

    Example:

    >>> keras_vit.variants.get_config("B/16")
    ViTConfig(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072)
    """
    if not isinstance(variant, str):
        raise TypeError(
            f"variant must be a string such as 'B/16', received "
            f"variant={variant!r} of type {type(variant).__name__}."
        )
    match = _VARIANT_PATTERN.match(variant.strip())
    if not match or match.group("size") not in SIZES or int(match.group("patch")) <= 0:
        raise ValueError(
            f"Unknown variant {variant!r}: expected '<size>/<patch_size>' with "
            f"size one of {', '.join(SIZES)} and a positive patch size, "
            f"e.g. 'B/16'."
        )
    return ViTConfig(patch_size=int(match.group("patch")), **SIZES[match.group("size")])
