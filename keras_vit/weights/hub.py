"""Hugging Face Hub handles, `"hf://ORG/NAME"`, as keras-hub's `hf://` presets.

A handle names a timm or transformers ViT repository on the Hub
(`"hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"`,
`"hf://google/vit-base-patch16-224"`), optionally at a revision
(`"hf://ORG/NAME@REVISION"`: a branch, tag or commit hash). Its
`model.safetensors` and `config.json` come through huggingface_hub's
`hf_hub_download`, so its cache, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and tokens
(`HF_TOKEN`, `hf auth login`) work as for any Hugging Face library; keras_vit
makes no HTTP request of its own. Only safetensors files are read, never a
PyTorch pickle (`pytorch_model.bin`), which can run code when it is loaded.

`read_config` turns either repository layout into keras_vit's terms (sizes,
resolution, classes, class names) and refuses, naming the value, a
checkpoint keras_vit cannot represent; `from_pretrained` builds the model and
loads the weights without the caller naming a builder.
"""

import json
import re

from keras_vit import variants
from keras_vit.weights import hub_config, hub_download
from keras_vit.weights.formats import CheckpointError
from keras_vit.weights.hub_download import CHECKPOINT, CONFIG

_PREFIX = "hf://"
# The Hub's rules for each half of a repo id (huggingface_hub's
# `validate_repo_id`): letters, digits, "-", "_" and "."; no leading or
# trailing "-" or "."; no "--" or ".." (checked apart).
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HANDLE_PATTERN = re.compile(
    rf"^hf://(?P<org>{_REPO_PART})/(?P<name>{_REPO_PART})(?:@(?P<revision>[^\s@]+))?$"
)


def is_handle(weights):
    """Tells whether `weights` is a Hugging Face Hub handle, `"hf://..."`.

    Only the prefix is checked; `parse_handle` validates the rest.

    Args:
        weights: anything passed as `weights=`.

    Returns:
        `True` for a string that starts with `"hf://"`, else `False`.

    Example:

    >>> keras_vit.weights.hub.is_handle("hf://google/vit-base-patch16-224")
    True
    >>> keras_vit.weights.hub.is_handle("imagenet")
    False
    """
    return isinstance(weights, str) and weights.startswith(_PREFIX)


def parse_handle(handle):
    """Splits `"hf://ORG/NAME[@REVISION]"` into a repo id and a revision.

    Args:
        handle: `"hf://ORG/NAME"` or `"hf://ORG/NAME@REVISION"`, where ORG and
            NAME follow the Hub's rules for repository names and REVISION is
            a branch, tag or commit hash.

    Returns:
        `(repo_id, revision)`: `("ORG/NAME", "REVISION")`, with `revision`
        `None` (the default branch) when the handle has none.

    Raises:
        TypeError: if `handle` is not a string.
        ValueError: naming the handle, if it is malformed.

    Example:

    >>> keras_vit.weights.hub.parse_handle("hf://google/vit-base-patch16-224")
    ('google/vit-base-patch16-224', None)
    >>> keras_vit.weights.hub.parse_handle("hf://timm/vit_tiny_patch16_224.augreg_in21k@main")
    ('timm/vit_tiny_patch16_224.augreg_in21k', 'main')
    """
    if not isinstance(handle, str):
        raise TypeError(
            f"handle must be a string 'hf://ORG/NAME', received {handle!r} of type "
            f"{type(handle).__name__}."
        )
    match = _HANDLE_PATTERN.match(handle)
    repo_id = f"{match.group('org')}/{match.group('name')}" if match else ""
    if not match or "--" in repo_id or ".." in repo_id or len(repo_id) > 96 \
            or repo_id.endswith(".git"):
        raise ValueError(
            f"Malformed Hugging Face Hub handle {handle!r}: expected 'hf://ORG/NAME' or "
            "'hf://ORG/NAME@REVISION', with ORG and NAME made of letters, digits, '-', '_' "
            "and '.' (e.g. 'hf://google/vit-base-patch16-224')."
        )
    return repo_id, match.group("revision")


# Arguments of `from_pretrained` that the repository decides.
_FIXED_BY_REPOSITORY = ("variant", "weights") + variants.ARCHITECTURE_FIELDS


def _model_name(repo_id):
    name = re.sub(r"[^0-9A-Za-z_]+", "_", repo_id.split("/")[1]).strip("_")
    return name or "vit"


def checkpoint_file(handle):
    """Downloads (or finds in the cache) a repository's `model.safetensors`.

    Goes through `huggingface_hub.hf_hub_download`, so the Hugging Face cache,
    `HF_HUB_OFFLINE`, `HF_ENDPOINT` and tokens apply. Only `model.safetensors`
    is read: a repository with only a PyTorch pickle (`pytorch_model.bin`) is
    refused, since loading a pickle can run code.

    Args:
        handle: `"hf://ORG/NAME"` or `"hf://ORG/NAME@REVISION"`.

    Returns:
        The `pathlib.Path` of the file in the Hugging Face cache.

    Raises:
        ValueError: if `handle` is malformed.
        CheckpointError: (a `ValueError`) if the file cannot be had: the
            repository, revision or file does not exist, the repository is
            gated, or the file is neither cached nor downloadable (offline,
            no network); the message names the handle and what to do.

    Example:

    ```python
    path = keras_vit.weights.hub.checkpoint_file("hf://google/vit-base-patch16-224")
    model = keras_vit.ViTB16(weights=None)
    keras_vit.load_weights(model, path)
    ```
    """
    return hub_download.download(handle, *parse_handle(handle), CHECKPOINT)


def read_config(handle):
    """Reads a repository's `config.json` into keras_vit's terms.

    Both layouts are understood:

    - timm (`"hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"`): the
      `architecture` name gives the size and patch size (only the plain ViTs
      `vit_{tiny,small,base,large,huge}_patch<P>_<size>` are accepted),
      `pretrained_cfg.input_size` (or `model_args.img_size`, or the name's
      last number) the resolution, `num_classes` the head and `label_names`
      the class names (ImageNet's WordNet ids become keras.applications'
      short names, e.g. `"tabby"`; a 1000- or 21843-class head without
      labels gets ImageNet's). A `pretrained_cfg` mean/std other than 0.5
      (inputs not in [-1, 1]) gives a warning.
    - transformers (`"hf://google/vit-base-patch16-224"`): `hidden_size`,
      `num_hidden_layers`, ... give the sizes, `id2label` the class names
      (`None` for transformers' placeholder names `"LABEL_0"`, ...). A
      `ViTModel` repository (no classifier) has `classes=0`, and
      `representation_size` is its pooler's width when the checkpoint holds
      the pooler (read from the safetensors header, so this downloads
      `model.safetensors` too).

    Args:
        handle: `"hf://ORG/NAME"` or `"hf://ORG/NAME@REVISION"`.

    Returns:
        A dict with `patch_size`, `hidden_dim`, `num_layers`, `num_heads`,
        `mlp_dim`, `image_size` (ints), `classes` (0 without a head),
        `class_names` (a list of strings, or `None`), `representation_size`
        (the pre-logits width, or `None`) and `library` (`"timm"` or
        `"transformers"`).

    Raises:
        ValueError: if `handle` is malformed.
        CheckpointError: (a `ValueError`) if `config.json` cannot be had (see
            `checkpoint_file`), is not JSON, or describes a model keras_vit
            cannot represent (another timm architecture, `global_pool` other
            than `"token"`, `num_channels` other than 3, no q/k/v biases, an
            activation other than GELU); the message names the value.

    Example:

    ```python
    config = keras_vit.weights.hub.read_config("hf://google/vit-base-patch16-224")
    config["hidden_dim"], config["classes"], config["class_names"][281]
    # (768, 1000, 'tabby, tabby cat')
    ```
    """
    path = hub_download.download(handle, *parse_handle(handle), CONFIG)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{handle}: cannot read its {CONFIG} ({path}): {error}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{handle}: its {CONFIG} ({path}) is not a JSON object.")
    return hub_config.translate(handle, config, lambda: checkpoint_file(handle))


def from_pretrained(handle, **kwargs):
    """Builds the ViT of a Hugging Face Hub repository and loads its weights.

    The architecture, resolution and head come from the repository
    (`read_config`), the weights from its `model.safetensors`
    (`checkpoint_file`); the caller names no builder. A model that keeps the
    repository's head knows its class names (`model.class_names`).

    Keyword arguments are those of `keras_vit.ViT` and override the
    repository's choices: `input_shape` (another resolution: the position
    embedding is resampled bicubically, as timm's loader or transformers'
    `interpolate_pos_encoding` would), `include_top` (default: whether the
    repository has a head or `classes` is given), `classes` (another count
    leaves a fresh head, with a warning, for fine-tuning), `pooling`,
    `classifier_activation`, `representation_size`, the dropout rates,
    `include_preprocessing`, `input_tensor`, `name` (default: the repository
    name, e.g. `"vit_base_patch16_224"`).

    Args:
        handle: `"hf://ORG/NAME"` or `"hf://ORG/NAME@REVISION"`.
        **kwargs: arguments of `keras_vit.ViT`, except the sizes and
            `weights`, which the repository decides.

    Returns:
        A `keras.Model` (a `keras_vit.models.VisionTransformer`).

    Raises:
        TypeError: for an argument the repository decides (`weights`,
            `patch_size`, ...).
        ValueError: for `include_top=True` on a repository without a head
            and no `classes`.
        CheckpointError: see `read_config` and `checkpoint_file`.

    Example:

    ```python
    model = keras_vit.weights.hub.from_pretrained("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    images = keras_vit.preprocess_input(pixels)  # (batch, 224, 224, 3) in [0, 255]
    top = model.predict(images).argmax(-1)
    [model.class_names[i] for i in top]
    ```
    """
    from keras_vit import models
    from keras_vit.weights import loading

    fixed = sorted(set(kwargs) & set(_FIXED_BY_REPOSITORY))
    if fixed:
        raise TypeError(
            f"from_pretrained({handle!r}) takes the architecture and weights from the "
            f"repository; received {', '.join(f'{key}={kwargs[key]!r}' for key in fixed)}. "
            "Build with keras_vit.ViT and load keras_vit.weights.hub.checkpoint_file(handle) to "
            "choose them yourself."
        )
    repo_id, _ = parse_handle(handle)
    config = read_config(handle)
    repo_classes = config["classes"] or 0
    include_top = kwargs.pop("include_top", bool(repo_classes or kwargs.get("classes")))
    classes = kwargs.pop("classes", None)
    if include_top is True:
        if classes is None:
            if not repo_classes:
                raise ValueError(
                    f"{handle} has no classification head (classes=0): pass classes=N with "
                    "include_top=True for a fresh head to fine-tune, or include_top=False for "
                    "features."
                )
            classes = repo_classes
        # The pre-logits layer belongs to the repository's own head: a new
        # head goes straight on the features unless asked otherwise, as in
        # vit_jax's fine-tuning.
        if classes == repo_classes:
            kwargs.setdefault("representation_size", config["representation_size"])
        kwargs["classes"] = classes
    if "input_shape" not in kwargs and kwargs.get("input_tensor") is None:
        kwargs["input_shape"] = (config["image_size"], config["image_size"], 3)
    kwargs.setdefault("name", _model_name(repo_id))

    model = models.ViT(
        None,
        include_top=include_top,
        weights=None,
        patch_size=config["patch_size"],
        hidden_dim=config["hidden_dim"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        mlp_dim=config["mlp_dim"],
        **kwargs,
    )
    # Resample a position embedding as the checkpoint's own library does
    # when it runs at another resolution: timm's state-dict loader uses
    # antialiased bicubic, transformers' interpolate_pos_encoding plain
    # bicubic.
    loading.load_weights(
        model,
        checkpoint_file(handle),
        interpolation="bicubic",
        antialias=config["library"] == "timm",
    )
    names = config["class_names"]
    head = models.get_part(model, "head")
    if names and head is not None and head.units == len(names) and classes == repo_classes:
        model.class_names = names
    return model
