"""Named pretrained weights: the original ViT and AugReg checkpoints by tag.

`keras_vit.ViTB16(weights="imagenet")` (the builders' default) downloads the
checkpoint that the table below names for ViT-B/16 from where Google
publishes it, the `vit_models` bucket on Google Cloud Storage, into Keras'
cache (`$KERAS_HOME/models/vit_models/...`), once; later builds read the
cache. Tags are timm's (`augreg_in21k_ft_in1k`, `orig_in21k`, ...), with the
aliases `"imagenet"` (the recommended ImageNet-1k fine-tuned checkpoint of
the size) and `"imagenet21k"` (the ImageNet-21k pre-trained one, the start
for fine-tuning). `KERAS_VIT_WEIGHTS_BASE_URL` replaces
`https://storage.googleapis.com` in every URL (a mirror, an air-gapped
cache, the tests' loopback server).

Sources of the table: the file names of timm's pretrained configs
(`timm/models/vision_transformer.py`, `default_cfgs`, whose `url=` entries
named these files before timm moved them to the Hugging Face Hub) and of the
vit_jax README (google-research/vision_transformer, "Available ViT models"
and the AugReg section, whose `index.csv` lists `filename` and
`adapt_ds`/`adapt_resolution`); the top-1 figures are timm's
`results/results-imagenet.csv` for the same model and tag. The checkpoints
are Apache-2.0, as the vit_jax repository. (About 400 lines, a third of
them the table.)
"""

import dataclasses
import os
import re

from keras_vit import imagenet, variants
from keras_vit.weights import download as vit_download

BASE_URL = "https://storage.googleapis.com"
BASE_URL_ENV = "KERAS_VIT_WEIGHTS_BASE_URL"
ALIASES = ("imagenet", "imagenet21k")
_TIMM_SIZES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint.

    Attributes:
        variant: the ViT size, e.g. `"B/16"`.
        tag: timm's tag, e.g. `"augreg_in21k_ft_in1k"`.
        image_size: the resolution it was trained or fine-tuned at.
        classes: the classes of its head (1000 for ImageNet-1k, 21843 for
            ImageNet-21k).
        file: its path in the bucket, e.g. `"vit_models/augreg/B_16-....npz"`.
        representation_size: width of its tanh pre-logits layer, `None` if it
            has none.
        top1: ImageNet-1k top-1 accuracy (%) as published, `None` where no
            source gives one.
        sha256: the file's SHA-256, `None` where not published (the download
            is then checked against the server's MD5 and length).
        head_valid: `False` for the original ImageNet-21k files, whose head
            was zeroed before release (timm: "classifier not valid"); such a
            model has no class names, and is for fine-tuning or features.
    """

    variant: str
    tag: str
    image_size: int
    classes: int
    file: str
    representation_size: int = None
    top1: float = None
    sha256: str = None
    head_valid: bool = True

    @property
    def url(self):
        """The download URL, under `KERAS_VIT_WEIGHTS_BASE_URL` when set."""
        return f"{base_url()}/{self.file}"

    @property
    def cache_path(self):
        """Where the file is cached: Keras' `models` cache, then the bucket path."""
        return vit_download.cache_dir() / self.file

    @property
    def timm_name(self):
        """timm's name for the model and tag, e.g. `vit_base_patch16_224.augreg_in21k_ft_in1k`."""
        size, patch = self.variant.split("/")
        return f"vit_{_TIMM_SIZES[size]}_patch{patch}_{self.image_size}.{self.tag}"

    @property
    def class_names(self):
        """ImageNet's class names for this checkpoint's head (`None` if it is zeroed)."""
        return imagenet.class_names(self.classes) if self.head_valid else None


def base_url():
    """`https://storage.googleapis.com`, or `KERAS_VIT_WEIGHTS_BASE_URL` when set."""
    url = os.environ.get(BASE_URL_ENV, "").strip()
    if not url:
        return BASE_URL
    if not re.match(r"^https?://[^/]", url):
        raise ValueError(
            f"{BASE_URL_ENV} must be an http(s) URL such as https://mirror.example.com, received {url!r}."
        )
    return url.rstrip("/")


_AUGREG = "vit_models/augreg/"
_I21K = "vit_models/imagenet21k/"
_I1K = "vit_models/imagenet21k+imagenet2012/"

# (variant, tag, image_size, classes, file, representation_size, top1).
# top-1: timm's results-imagenet.csv for the timm model of the same name and
# tag, but ViT-L/16 orig_in21k_ft_in1k at 224 (82.7, the vit_jax README's
# table); "-" where neither gives one. The original ImageNet-21k files keep
# their tanh pre-logits layer (representation_size = the width) and a head of
# zeros. File names: timm's default_cfgs (AugReg, explicit GCS URLs) and
# vit_jax.ipynb's listing of gs://vit_models/imagenet* (the original release).
_ROWS = (
    ("Ti/16", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz", None, 75.452),
    ("Ti/16", "augreg_in21k_ft_in1k", 384, 1000, _AUGREG + "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384.npz", None, 78.438),
    ("Ti/16", "augreg_in21k", 224, 21843, _AUGREG + "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz", None, None),
    ("S/16", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz", None, 81.402),
    ("S/16", "augreg_in21k_ft_in1k", 384, 1000, _AUGREG + "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384.npz", None, 83.814),
    ("S/16", "augreg_in21k", 224, 21843, _AUGREG + "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz", None, None),
    ("S/16", "augreg_in1k", 224, 1000, _AUGREG + "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz", None, 78.842),
    ("S/16", "augreg_in1k", 384, 1000, _AUGREG + "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz", None, 81.13),
    ("S/32", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz", None, 76.01),
    ("S/32", "augreg_in21k_ft_in1k", 384, 1000, _AUGREG + "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384.npz", None, 80.476),
    ("S/32", "augreg_in21k", 224, 21843, _AUGREG + "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz", None, None),
    ("B/8", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz", None, 85.838),
    ("B/8", "augreg_in21k", 224, 21843, _AUGREG + "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", None, None),
    ("B/8", "orig_in21k_ft_in1k", 384, 1000, _I1K + "ViT-B_8.npz", None, None),
    ("B/8", "orig_in21k", 224, 21843, _I21K + "ViT-B_8.npz", 768, None),
    ("B/16", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz", None, 84.534),
    ("B/16", "augreg_in21k_ft_in1k", 384, 1000, _AUGREG + "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz", None, 86.01),
    ("B/16", "augreg_in21k", 224, 21843, _AUGREG + "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", None, None),
    ("B/16", "augreg_in1k", 224, 1000, _AUGREG + "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz", None, 79.154),
    ("B/16", "augreg_in1k", 384, 1000, _AUGREG + "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz", None, 81.102),
    ("B/16", "orig_in21k_ft_in1k", 224, 1000, _I1K + "ViT-B_16-224.npz", None, 81.782),
    ("B/16", "orig_in21k_ft_in1k", 384, 1000, _I1K + "ViT-B_16.npz", None, 84.212),
    ("B/16", "orig_in21k", 224, 21843, _I21K + "ViT-B_16.npz", 768, None),
    ("B/32", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz", None, 80.732),
    ("B/32", "augreg_in21k_ft_in1k", 384, 1000, _AUGREG + "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384.npz", None, 83.358),
    ("B/32", "augreg_in21k", 224, 21843, _AUGREG + "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0.npz", None, None),
    ("B/32", "augreg_in1k", 224, 1000, _AUGREG + "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz", None, 74.908),
    ("B/32", "augreg_in1k", 384, 1000, _AUGREG + "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz", None, 78.75),
    ("B/32", "orig_in21k_ft_in1k", 384, 1000, _I1K + "ViT-B_32.npz", None, None),
    ("B/32", "orig_in21k", 224, 21843, _I21K + "ViT-B_32.npz", 768, None),
    ("L/16", "augreg_in21k_ft_in1k", 224, 1000, _AUGREG + "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz", None, 85.856),
    ("L/16", "augreg_in21k_ft_in1k", 384, 1000, _AUGREG + "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz", None, 87.096),
    ("L/16", "augreg_in21k", 224, 21843, _AUGREG + "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz", None, None),
    ("L/16", "orig_in21k_ft_in1k", 224, 1000, _I1K + "ViT-L_16-224.npz", None, 82.7),
    ("L/16", "orig_in21k_ft_in1k", 384, 1000, _I1K + "ViT-L_16.npz", None, None),
    ("L/16", "orig_in21k", 224, 21843, _I21K + "ViT-L_16.npz", 1024, None),
    ("L/32", "orig_in21k_ft_in1k", 384, 1000, _I1K + "ViT-L_32.npz", None, 81.508),
    ("L/32", "orig_in21k", 224, 21843, _I21K + "ViT-L_32.npz", 1024, None),
    ("H/14", "orig_in21k", 224, 21843, _I21K + "ViT-H_14.npz", 1280, None),
)
TABLE = tuple(
    PretrainedWeights(*row, sha256=None, head_valid=row[1] != "orig_in21k") for row in _ROWS
)

# The aliases. "imagenet": AugReg's in21k -> in1k checkpoint at 224, timm's
# default tag among the files on Google Cloud Storage (timm's default for
# B/16 and B/8, augreg2_in21k_ft_in1k, is a re-fine-tune published on the
# Hugging Face Hub only: weights="hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k");
# L/32 has only the original release's 384 fine-tune; H/14 no ImageNet-1k
# checkpoint. "imagenet21k": AugReg's where it exists, else the original.
_DEFAULT_TAGS = {
    "imagenet": {
        **{v: "augreg_in21k_ft_in1k" for v in ("Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16")},
        "L/32": "orig_in21k_ft_in1k",
    },
    "imagenet21k": {
        **{v: "augreg_in21k" for v in ("Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16")},
        "L/32": "orig_in21k",
        "H/14": "orig_in21k",
    },
}


def tags(variant=None):
    """The tags published for `variant` (every tag when `None`), aliases first."""
    names = [alias for alias in ALIASES if variant is None or variant in _DEFAULT_TAGS[alias]]
    for entry in TABLE:
        if (variant is None or entry.variant == variant) and entry.tag not in names:
            names.append(entry.tag)
    return names


def default_tag(variant, alias="imagenet"):
    """The tag that `alias` names for `variant`, or `None` if it has none."""
    return _DEFAULT_TAGS[alias].get(variant)


def is_name(weights):
    """Whether `weights` is a tag or an alias (rather than a file path)."""
    return isinstance(weights, str) and (weights in ALIASES or any(e.tag == weights for e in TABLE))


def looks_like_name(weights):
    """Whether `weights` is meant as a name (a tag, an alias or a misspelt
    one: letters, digits and underscores) rather than a file path."""
    return is_name(weights) or (isinstance(weights, str) and re.fullmatch(r"[A-Za-z0-9_]+", weights) is not None)


def resolve(variant, weights, image_size=None):
    """The checkpoint that `weights` names for `variant`.

    Args:
        variant: a standard variant string, e.g. `"B/16"`.
        weights: a tag or an alias.
        image_size: the model's resolution, or `None` for the checkpoint's
            own. Where the tag has files at several resolutions the one
            nearest to `image_size` is taken (its position embedding is
            resampled when they differ).

    Returns:
        A `PretrainedWeights`.
    """
    if not is_name(weights):
        raise ValueError(
            f"weights={weights!r} is neither a checkpoint file nor a named checkpoint; "
            f"named weights{_for(variant)}: {', '.join(tags(variant)) or 'none'}."
        )
    tag = weights
    if weights in ALIASES:
        tag = default_tag(variant, weights)
        if tag is None:
            raise ValueError(
                f"ViT-{variant} has no {weights!r} weights; named weights{_for(variant)}: "
                f"{', '.join(tags(variant)) or 'none'}."
            )
    entries = [e for e in TABLE if e.variant == variant and e.tag == tag]
    if not entries:
        raise ValueError(
            f"weights={weights!r} exists for {', '.join(sorted({e.variant for e in TABLE if e.tag == tag}))}, "
            f"not for ViT-{variant}; named weights{_for(variant)}: {', '.join(tags(variant)) or 'none'}."
        )
    if image_size is None:
        return min(entries, key=lambda e: e.image_size)
    return min(entries, key=lambda e: (abs(e.image_size - image_size), e.image_size))


def named_checkpoint(weights, variant, sizes, image_size=None):
    """The checkpoint `weights` names for a model of `variant` and `sizes`.

    The one check behind `keras_vit.ViT(weights=...)` and `keras-vit train
    --weights`: a published checkpoint fits its own variant only.

    Args:
        weights: a tag or an alias.
        variant: the model's variant string, or `None`.
        sizes: the model's `patch_size`, `hidden_dim`, `num_layers`,
            `num_heads` and `mlp_dim` (a mapping).
        image_size: as in `resolve`.

    Returns:
        A `PretrainedWeights`.
    """
    if variant is None:
        raise ValueError(
            f"weights={weights!r} names a published checkpoint: give the size it is for, "
            "e.g. variant='B/16' (--variant B/16)."
        )
    standard = variants.get_config(variant)
    changed = [f"{key}={sizes[key]} (ViT-{variant}: {value})"
               for key, value in dataclasses.asdict(standard).items() if sizes[key] != value]
    if changed:
        raise ValueError(
            f"weights={weights!r} is a ViT-{variant} checkpoint, which needs that variant's own "
            f"sizes; received {', '.join(changed)}."
        )
    return resolve(standard_variant(variant), weights, image_size)


def _for(variant):
    return f" for ViT-{variant}" if variant else ""


def fetch(entry, progress=True):
    """The cached file of `entry`, downloaded first if it is not cached.

    Args:
        entry: a `PretrainedWeights`.
        progress: show Keras' progress bar while downloading.

    Returns:
        The path of the cached checkpoint.

    Raises:
        keras_vit.weights.download.DownloadError: naming the URL and the cache path;
            nothing is left in the cache.
    """
    from keras_vit.weights import loading

    def verify(path):
        loading.check_checkpoint(path, entry.variant, entry.classes, entry.image_size)

    hint = (
        f"To use these weights without network, download {entry.file.rsplit('/', 1)[-1]} on a machine "
        f"that has network (keras-vit weights download {entry.tag} --variant {entry.variant}"
        f"{'' if entry.image_size == 224 else f' --image-size {entry.image_size}'}) and put it "
        f"at {entry.cache_path}, or set {BASE_URL_ENV} to a mirror."
    )
    return vit_download.download(entry.url, entry.cache_path, sha256=entry.sha256, verify=verify,
                                 hint=hint, progress=progress)


def classifier(weights, variant=None, image_size=None):
    """A classifier that takes pixels in [0, 255], from pretrained weights.

    What `keras-vit predict --weights` and `keras-vit export --weights` use:
    the model of `variant` with `include_preprocessing=True`, loaded from
    `weights` (a named checkpoint, an `hf://` handle or a file); an `hf://`
    handle needs no `variant` (`keras_vit.from_pretrained`).

    Args:
        weights: `"imagenet"`, a tag, `"hf://ORG/NAME"` or a checkpoint file.
        variant: the size, e.g. `"B/16"`.
        image_size: the input resolution; default: the checkpoint's.

    Returns:
        A `keras.Model` with its `class_names` where the checkpoint has them.
    """
    kwargs = {"include_preprocessing": True}
    if image_size is not None:
        kwargs["input_shape"] = (image_size, image_size, 3)
    if variant is None:
        from keras_vit.weights import hub

        if hub.is_handle(weights):
            return hub.from_pretrained(weights, **kwargs)
        raise ValueError(
            f"weights={weights!r} needs the model size it is for, e.g. variant='B/16' (--variant B/16); "
            "only an hf:// handle carries its own."
        )
    from keras_vit import models

    return models.ViT(variant, weights=weights, **kwargs)


def intact(entry):
    """Whether `entry`'s cached file reads as the checkpoint the table promises."""
    from keras_vit.weights import loading

    try:
        loading.check_checkpoint(entry.cache_path, entry.variant, entry.classes, entry.image_size)
    except loading.CheckpointError:
        return False
    return True


def list_weights(variant=None, print_table=True):
    """The named checkpoints, printed as a table (as `keras-vit weights list`).

    Columns: size, tag, resolution, classes, published ImageNet-1k top-1,
    whether the file is in the cache, and the file in the bucket. Rows marked
    `*` are what `"imagenet"` names, `+` what `"imagenet21k"` names.

    Args:
        variant: only this size (e.g. `"B/16"`); `None` for all.
        print_table: print the table (else only return the rows).

    Returns:
        The list of `PretrainedWeights`.

    Example:

    >>> rows = keras_vit.list_weights("B/16", print_table=False)
    >>> [(row.tag, row.image_size) for row in rows][:2]
    [('augreg_in21k_ft_in1k', 224), ('augreg_in21k_ft_in1k', 384)]
    """
    if variant is not None:
        variant = standard_variant(variant)
    rows = [entry for entry in TABLE if variant is None or entry.variant == variant]
    if print_table:
        print(format_table(rows))
    return rows


def standard_variant(variant):
    """`variant` checked to be one of the standard sizes (`"B/16"`, ...)."""
    variants.get_config(variant)  # the type and format errors
    variant = variant.strip()
    if variant not in variants.STANDARD_VARIANTS or variant == "Test/4":
        raise ValueError(
            f"Named weights exist for the standard sizes only "
            f"({', '.join(v for v in variants.STANDARD_VARIANTS if v != 'Test/4')}); received variant={variant!r}."
        )
    return variant


def format_table(rows, cached=True):
    """The rows of `list_weights` as a Markdown table (`cached`: add that column)."""
    lines = [
        "| size | tag | resolution | classes | top-1 |" + (" cached |" if cached else "") + " file |",
        "|---|---|---|---|---|" + ("---|" if cached else "") + "---|",
    ]
    for entry in rows:
        marks = "".join(mark for alias, mark in (("imagenet", " *"), ("imagenet21k", " +"))
                        if default_tag(entry.variant, alias) == entry.tag
                        and resolve(entry.variant, alias) == entry)
        top1 = f"{entry.top1:.2f}" if entry.top1 is not None else "-"
        classes = entry.classes if entry.head_valid else f"{entry.classes} (zeroed head)"
        in_cache = (" yes |" if entry.cache_path.is_file() else " no |") if cached else ""
        lines.append(f"| {entry.variant} | {entry.tag}{marks} | {entry.image_size} | {classes} | "
                     f"{top1} |{in_cache} {entry.file} |")
    return "\n".join(lines)
