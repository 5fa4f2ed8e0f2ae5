"""Fetching one file of a Hugging Face Hub repository through
huggingface_hub, every failure turned into a `CheckpointError` that says what
to do. Never a PyTorch pickle: loading one can run code."""

import pathlib

from keras_vit.weights.formats import CheckpointError

CHECKPOINT = "model.safetensors"
CONFIG = "config.json"
_PICKLE = "pytorch_model.bin"


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
    return f"`hf download {repo_id} {CHECKPOINT} {CONFIG}{revision_arg}`"


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
        f"{handle} has no {CHECKPOINT} {where}{pickle_note}. keras_vit reads only "
        "safetensors checkpoints: pick a repository that has one (most timm and "
        "transformers ViT repositories do), or convert the weights yourself with "
        "`safetensors.torch.save_file(torch.load(path, weights_only=True), "
        f"'{CHECKPOINT}')` and load that file with keras_vit.load_weights."
    )


def download(handle, repo_id, revision, filename):
    """`hf_hub_download` of one file of the handle's repository, with every
    failure turned into one `CheckpointError` that says what to do."""
    hub = _hub()
    from huggingface_hub import constants, errors

    command = _download_command(repo_id, revision)
    try:
        return pathlib.Path(hub.hf_hub_download(repo_id, filename, revision=revision))
    except errors.LocalEntryNotFoundError as error:
        # Neither downloaded nor cached: offline, or the Hub unreachable.
        if filename == CHECKPOINT and _cached_pickle(hub, repo_id, revision):
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
        if filename == CHECKPOINT:
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
