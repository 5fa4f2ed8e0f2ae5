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
import pathlib
import re
import warnings

from keras_vit import variants
from keras_vit.weights import CheckpointError

_PREFIX = "hf://"
_CHECKPOINT = "model.safetensors"
_CONFIG = "config.json"
_PICKLE = "pytorch_model.bin"
# The Hub's rules for each half of a repo id (huggingface_hub's
# `validate_repo_id`): letters, digits, "-", "_" and "."; no leading or
# trailing "-" or "."; no "--" or ".." (checked apart).
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HANDLE_PATTERN = re.compile(
    rf"^hf://(?P<org>{_REPO_PART})/(?P<name>{_REPO_PART})(?:@(?P<revision>[^\s@]+))?$"
)
# The plain ViTs among timm's architectures; everything else (CLIP, SigLIP,
# registers, RoPE, hybrids, DINOv2, average pooling, ...) adds or changes
# layers that keras_vit does not have.
_TIMM_PATTERN = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)$")
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
# timm `model_args` that set sizes keras_vit takes over.
_TIMM_SIZE_ARGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# timm `model_args` that change nothing keras_vit's architecture depends on.
_TIMM_FREE_ARGS = {
    "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
    "drop_path_rate", "weight_init", "fix_init", "dynamic_img_size", "dynamic_img_pad",
    "num_classes", "global_pool",
}
# timm `model_args` that keras_vit can represent with these values only
# (timm's defaults for a plain ViT).
_TIMM_FIXED_ARGS = {
    "in_chans": (3,),
    "qkv_bias": (True,),
    "qk_norm": (False,),
    "scale_attn_norm": (False,),
    "scale_mlp_norm": (False,),
    "proj_bias": (True,),
    "init_values": (None,),
    "class_token": (True,),
    "pos_embed": ("learn",),
    "no_embed_class": (False,),
    "reg_tokens": (0,),
    "pre_norm": (False,),
    "final_norm": (True,),
    "fc_norm": (None, False),
    "pool_include_prefix": (False,),
    "embed_norm_layer": (None,),
    "norm_layer": (None,),
    "act_layer": (None, "gelu"),
}
_TRANSFORMERS_ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
_WNID_PATTERN = re.compile(r"^n\d{8}$")
_IMAGENET_CLASSES = (1000, 21843)
# keras_vit.preprocess_input's mapping to [-1, 1] is mean = std = 0.5.
_VIT_MEAN_STD = 0.5
# Arguments of `from_pretrained` that the repository decides.
_FIXED_BY_REPOSITORY = (
    "variant", "weights", "patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim",
)


def is_handle(weights):
    """Tells whether `weights` is a Hugging Face Hub handle, `"hf://..."`.

    Only the prefix is checked; `parse_handle` validates the rest.

    Args:
        weights: anything passed as `weights=`.

    Returns:
        `True` for a string that starts with `"hf://"`, else `False`.

    Example:

    >>> keras_vit.hub.is_handle("hf://google/vit-base-patch16-224")
    True
    >>> keras_vit.hub.is_handle("imagenet")
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

    >>> keras_vit.hub.parse_handle("hf://google/vit-base-patch16-224")
    ('google/vit-base-patch16-224', None)
    >>> keras_vit.hub.parse_handle("hf://timm/vit_tiny_patch16_224.augreg_in21k@main")
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


def _hub():
    try:
        import huggingface_hub
    except ImportError as error:
        raise ImportError(
            "Hugging Face Hub handles ('hf://ORG/NAME') need the huggingface_hub package: "
            "pip install huggingface_hub"
        ) from error
    return huggingface_hub


def _download_command(repo_id, revision):
    revision_arg = f" --revision {revision}" if revision else ""
    return f"`hf download {repo_id} {_CHECKPOINT} {_CONFIG}{revision_arg}`"


def _cached_pickle(hub, repo_id, revision):
    """Whether the cache holds the repository's `pytorch_model.bin` (no request)."""
    try:
        found = hub.try_to_load_from_cache(repo_id, _PICKLE, revision=revision)
    except Exception:  # noqa: BLE001 -- only a hint for the message
        return False
    return isinstance(found, str)


def _remote_pickle(hub, repo_id, revision):
    """Whether the repository has a `pytorch_model.bin` (one request, online only)."""
    try:
        return bool(hub.file_exists(repo_id, _PICKLE, revision=revision))
    except Exception:  # noqa: BLE001 -- only a hint for the message
        return False


def _no_safetensors_message(handle, where, has_pickle):
    pickle_note = (
        f"; it has a {_PICKLE}, a PyTorch pickle, which keras_vit does not read because "
        "loading a pickle can run code"
        if has_pickle
        else f" (keras_vit never reads a PyTorch pickle such as {_PICKLE}: loading one can "
        "run code)"
    )
    return (
        f"{handle} has no {_CHECKPOINT} {where}{pickle_note}. keras_vit reads only "
        "safetensors checkpoints: pick a repository that has one (most timm and "
        "transformers ViT repositories do), or convert the weights yourself with "
        "`safetensors.torch.save_file(torch.load(path, weights_only=True), "
        f"'{_CHECKPOINT}')` and load that file with keras_vit.load_weights."
    )


def _download(handle, filename):
    """`hf_hub_download` of one file of the handle's repository, with every
    failure turned into one `CheckpointError` that says what to do."""
    repo_id, revision = parse_handle(handle)
    hub = _hub()
    from huggingface_hub import constants, errors

    command = _download_command(repo_id, revision)
    try:
        return pathlib.Path(hub.hf_hub_download(repo_id, filename, revision=revision))
    except errors.LocalEntryNotFoundError as error:
        # Neither downloaded nor cached: offline, or the Hub unreachable.
        if filename == _CHECKPOINT and _cached_pickle(hub, repo_id, revision):
            where = "in the Hugging Face cache " + (
                "(huggingface_hub is offline, so the Hub was not asked)"
                if constants.HF_HUB_OFFLINE
                else "(and the Hub could not be reached)"
            )
            raise CheckpointError(_no_safetensors_message(handle, where, True)) from error
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"Cannot get {filename} of {handle}: huggingface_hub is offline "
                f"(HF_HUB_OFFLINE=1) and the file is not in its cache "
                f"({constants.HF_HUB_CACHE}). Set HF_HUB_OFFLINE=0 to download it, or fill "
                f"the cache where the Hub can be reached: {command}."
            ) from error
        raise CheckpointError(
            f"Cannot download {filename} of {handle} from {constants.ENDPOINT}, and it is "
            f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}): {error} Check the "
            "network (or HF_ENDPOINT, for a mirror), or fill the cache where the Hub can be "
            f"reached: {command}."
        ) from error
    except errors.GatedRepoError as error:
        raise CheckpointError(
            f"{handle} is a gated repository: accept its conditions at "
            f"{constants.ENDPOINT}/{repo_id} with your account, then log in "
            "(`hf auth login`) or set HF_TOKEN, and retry."
        ) from error
    except errors.RepositoryNotFoundError as error:
        raise CheckpointError(
            f"{handle}: there is no repository {repo_id!r} on {constants.ENDPOINT}, or it is "
            "private (then log in with `hf auth login` or set HF_TOKEN). Check the spelling "
            "of the handle."
        ) from error
    except errors.RevisionNotFoundError as error:
        raise CheckpointError(
            f"{handle}: repository {repo_id!r} has no revision {revision!r} (a branch, tag "
            "or commit hash)."
        ) from error
    except errors.EntryNotFoundError as error:
        if filename == _CHECKPOINT:
            raise CheckpointError(
                _no_safetensors_message(
                    handle, "on the Hub", _remote_pickle(hub, repo_id, revision)
                )
            ) from error
        raise CheckpointError(
            f"{handle} has no {filename}: keras_vit reads timm and transformers ViT "
            "repositories, which have one."
        ) from error
    except Exception as error:  # noqa: BLE001 -- filtered to the hub's own errors below
        # huggingface_hub also lets its HTTP client's errors through (a proxy
        # error, an HTTP error status) and OSErrors of the cache (disk full,
        # permissions); anything else is a bug to see as it is.
        module = type(error).__module__.split(".")[0]
        if not isinstance(error, OSError) and module not in ("huggingface_hub", "httpx", "httpx2"):
            raise
        message = " ".join(str(error).split())
        raise CheckpointError(
            f"Cannot get {filename} of {handle}: {type(error).__name__}: {message}. To work "
            f"without the network, fill the cache where the Hub can be reached: {command}, "
            "and set HF_HUB_OFFLINE=1."
        ) from error


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
    path = keras_vit.hub.checkpoint_file("hf://google/vit-base-patch16-224")
    model = keras_vit.ViTB16(weights=None)
    keras_vit.load_weights(model, path)
    ```
    """
    return _download(handle, _CHECKPOINT)


def _refuse(handle, what, value, expected):
    raise CheckpointError(
        f"{handle}: {what}={value!r} in its {_CONFIG} is not a ViT keras_vit can represent "
        f"(expected {expected})."
    )


def _imagenet_names(classes):
    """`keras_vit.imagenet`'s short names and WordNet ids for 1k / 21k, if known."""
    if classes not in _IMAGENET_CLASSES:
        return None, None
    try:
        from keras_vit import imagenet

        return tuple(imagenet.class_names(classes)), tuple(imagenet.wnids(classes))
    except (ImportError, AttributeError, ValueError, OSError):
        return None, None


def _timm_class_names(config, classes):
    labels = config.get("label_names")
    if labels is not None and (not isinstance(labels, list) or len(labels) != classes):
        labels = None
    if labels is None:
        return list(_imagenet_names(classes)[0] or ()) or None
    labels = [str(label) for label in labels]
    if all(_WNID_PATTERN.match(label) for label in labels):
        names, wnids = _imagenet_names(len(labels))
        if names is not None:
            by_wnid = dict(zip(wnids, names))
            if all(label in by_wnid for label in labels):
                # Mapped by WordNet id, not position: right whatever order
                # the repository lists its classes in.
                return [by_wnid[label] for label in labels]
    return labels


def _image_size(value, handle, what):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1] \
            and isinstance(value[0], int) and value[0] > 0:
        return value[0]
    _refuse(handle, what, value, "a positive int, or a square size")


def _timm_config(handle, config):
    architecture = str(config.get("architecture", "")).split(".")[0]
    match = _TIMM_PATTERN.match(architecture)
    if not match:
        raise CheckpointError(
            f"{handle}: timm architecture {architecture!r} is not a plain ViT keras_vit can "
            "build: keras_vit reads 'vit_{tiny,small,base,large,huge}_patch<P>_<size>' "
            "models (no CLIP, SigLIP, registers, RoPE, hybrid or distilled variants)."
        )
    size, patch_size, name_size = match.groups()
    sizes = variants.get_config(f"{_TIMM_SIZES[size]}/{patch_size}")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        _refuse(handle, "model_args", model_args, "a dict")
    for key, value in model_args.items():
        allowed = _TIMM_FIXED_ARGS.get(key)
        if allowed is not None and value not in allowed:
            _refuse(handle, f"model_args.{key}", value, " or ".join(map(repr, allowed)))
        if allowed is None and key not in _TIMM_FREE_ARGS and key not in _TIMM_SIZE_ARGS:
            raise CheckpointError(
                f"{handle}: model_args.{key}={value!r} in its {_CONFIG} is not an argument "
                "keras_vit knows how to represent: its plain ViTs take img_size, patch_size, "
                "embed_dim, depth, num_heads, mlp_ratio and dropout rates."
            )

    hidden_dim = model_args.get("embed_dim", sizes.hidden_dim)
    mlp_ratio = model_args.get("mlp_ratio", sizes.mlp_dim / sizes.hidden_dim)
    result = {
        "patch_size": model_args.get("patch_size", sizes.patch_size),
        "hidden_dim": hidden_dim,
        "num_layers": model_args.get("depth", sizes.num_layers),
        "num_heads": model_args.get("num_heads", sizes.num_heads),
        "mlp_dim": int(hidden_dim * mlp_ratio),
    }
    # The resolution the weights were made for: timm builds the model at
    # model_args' img_size, else at pretrained_cfg's input_size, else at the
    # size its name ends with.
    if "img_size" in model_args:
        image_size = _image_size(model_args["img_size"], handle, "model_args.img_size")
    elif pretrained_cfg.get("input_size"):
        input_size = list(pretrained_cfg["input_size"])
        if len(input_size) != 3 or input_size[0] != 3:
            _refuse(handle, "pretrained_cfg.input_size", input_size, "[3, height, width]")
        image_size = _image_size(input_size[1:], handle, "pretrained_cfg.input_size")
    else:
        image_size = int(name_size)
    result["image_size"] = image_size

    global_pool = config.get("global_pool", model_args.get("global_pool", "token"))
    if global_pool != "token":
        _refuse(handle, "global_pool", global_pool,
                "'token': keras_vit's heads read the class token")
    num_features = config.get("num_features")
    if num_features is not None and num_features != hidden_dim:
        _refuse(handle, "num_features", num_features, f"the width {hidden_dim}")
    classes = config.get("num_classes", pretrained_cfg.get("num_classes", 0)) or 0
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        _refuse(handle, "num_classes", classes, "a non-negative int")

    for key in ("mean", "std"):
        value = pretrained_cfg.get(key)
        if value is not None and any(abs(float(v) - _VIT_MEAN_STD) > 1e-6 for v in value):
            warnings.warn(
                f"{handle} was trained on images normalised with mean="
                f"{pretrained_cfg.get('mean')} and std={pretrained_cfg.get('std')}, not the "
                "[-1, 1] of keras_vit.preprocess_input (mean = std = 0.5): normalise its "
                "inputs as the checkpoint expects, ((x / 255) - mean) / std, instead of "
                "calling preprocess_input or using include_preprocessing=True.",
                stacklevel=3,
            )
            break

    result.update(
        classes=classes,
        class_names=_timm_class_names(config, classes) if classes else None,
        representation_size=None,
        library="timm",
    )
    return result


def _safetensors_shapes(path):
    """Tensor names and shapes from a safetensors header, without its data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"Cannot read {path} as a '.safetensors' file: {error}") from error


def _transformers_class_names(config, classes):
    id2label = config.get("id2label") or {}
    try:
        labels = {int(index): str(label) for index, label in id2label.items()}
    except (TypeError, ValueError, AttributeError):
        return None
    if sorted(labels) != list(range(classes)):
        return None
    names = [labels[index] for index in range(classes)]
    # transformers names the classes of a config without labels "LABEL_0", ...
    if all(name == f"LABEL_{index}" for index, name in enumerate(names)):
        return None
    return names


def _transformers_config(handle, config):
    def check(key, default, allowed, expected):
        value = config.get(key, default)
        if value not in allowed:
            _refuse(handle, key, value, expected)
        return value

    check("model_type", None, ("vit",), "'vit'")
    check("num_channels", 3, (3,), "3: keras_vit models take RGB images")
    check("qkv_bias", True, (True,), "True: keras_vit's attention has q, k, v biases")
    check("hidden_act", "gelu", ("gelu",), "'gelu', the exact GELU of keras_vit's MLPs")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture is not None and architecture not in _TRANSFORMERS_ARCHITECTURES:
        _refuse(handle, "architectures", architectures,
                " or ".join(repr([a]) for a in _TRANSFORMERS_ARCHITECTURES))

    result = {}
    for ours, theirs in (
        ("patch_size", "patch_size"),
        ("hidden_dim", "hidden_size"),
        ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"),
        ("mlp_dim", "intermediate_size"),
    ):
        value = config.get(theirs)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            _refuse(handle, theirs, value, "a positive int")
        result[ours] = value
    result["image_size"] = _image_size(config.get("image_size"), handle, "image_size")

    representation_size = None
    if architecture == "ViTForImageClassification":
        classes = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    elif architecture == "ViTModel":
        classes = 0
        # ViTModel has a pooler (the original's tanh pre-logits layer) unless
        # it was built with add_pooling_layer=False, which its config does not
        # record: only the checkpoint's own names tell.
        shapes = _safetensors_shapes(checkpoint_file(handle))
        pooler = shapes.get("pooler.dense.weight", shapes.get("vit.pooler.dense.weight"))
        if pooler is not None:
            check("pooler_act", "tanh", ("tanh",), "'tanh', the original's pre-logits")
            representation_size = int(pooler[0])
    else:
        # No `architectures` (a config written by hand): the checkpoint's
        # names say whether it has a classifier and a pooler.
        shapes = _safetensors_shapes(checkpoint_file(handle))
        classifier = shapes.get("classifier.weight")
        classes = int(classifier[0]) if classifier is not None else 0
        pooler = shapes.get("pooler.dense.weight", shapes.get("vit.pooler.dense.weight"))
        representation_size = int(pooler[0]) if pooler is not None and not classes else None
    result.update(
        classes=classes,
        class_names=_transformers_class_names(config, classes) if classes else None,
        representation_size=representation_size,
        library="transformers",
    )
    return result


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
    config = keras_vit.hub.read_config("hf://google/vit-base-patch16-224")
    config["hidden_dim"], config["classes"], config["class_names"][281]
    # (768, 1000, 'tabby, tabby cat')
    ```
    """
    path = _download(handle, _CONFIG)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{handle}: cannot read its {_CONFIG} ({path}): {error}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{handle}: its {_CONFIG} ({path}) is not a JSON object.")
    if "architecture" in config:
        return _timm_config(handle, config)
    if "model_type" in config:
        return _transformers_config(handle, config)
    raise CheckpointError(
        f"{handle}: its {_CONFIG} has neither timm's 'architecture' nor transformers' "
        "'model_type': keras_vit reads timm and transformers ViT repositories."
    )


def _model_name(repo_id):
    name = re.sub(r"[^0-9A-Za-z_]+", "_", repo_id.split("/")[1]).strip("_")
    return name or "vit"


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
    model = keras_vit.hub.from_pretrained("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    images = keras_vit.preprocess_input(pixels)  # (batch, 224, 224, 3) in [0, 255]
    top = model.predict(images).argmax(-1)
    [model.class_names[i] for i in top]
    ```
    """
    from keras_vit import models
    from keras_vit import weights as vit_weights

    fixed = sorted(set(kwargs) & set(_FIXED_BY_REPOSITORY))
    if fixed:
        raise TypeError(
            f"from_pretrained({handle!r}) takes the architecture and weights from the "
            f"repository; received {', '.join(f'{key}={kwargs[key]!r}' for key in fixed)}. "
            "Build with keras_vit.ViT and load keras_vit.hub.checkpoint_file(handle) to "
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
    vit_weights.load_weights(
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
