"""Downloading a file into a cache whole or not at all.

Written here rather than calling `keras.utils.get_file`, which
keras.applications uses, because get_file (Keras 3.15) cannot keep the
promises of named weights: it streams into the final cache path, so a killed
download leaves a partial file that the next call takes as cached, and a
second process starting meanwhile reads a torn file; it opens the URL with no
timeout, so a stalled server hangs the caller forever; and after a hash
mismatch it leaves the bad file in place. The cache folder, the progress bar
(Keras' `Progbar`) and the "Downloading data from URL" line are Keras'.

Here the body goes to a temporary file beside the target, and it is renamed
into place only after its length matches the server's `Content-Length`, its
MD5 the `x-goog-hash` header that Google Cloud Storage sends, its SHA-256
the expected one where known, and `verify(path)` accepts it. A file lock
(the `filelock` library, which huggingface_hub uses for its cache) makes
concurrent first uses download once.
"""

import base64
import hashlib
import os
import pathlib
import re
import secrets
import sys
import tempfile

DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A file that could not be downloaded, or that failed its checks."""


def timeout_seconds():
    """Seconds to wait for a connection or for the next bytes of a body.

    `KERAS_VIT_DOWNLOAD_TIMEOUT` overrides the default of 30 s.
    """
    value = os.environ.get("KERAS_VIT_DOWNLOAD_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(
            f"KERAS_VIT_DOWNLOAD_TIMEOUT must be a positive number of seconds, received {value!r}."
        )
    return seconds


def cache_dir():
    """Keras' model cache: `$KERAS_HOME/models`, else `~/.keras/models`.

    Read at each call (Keras reads `KERAS_HOME` once, at import).
    """
    home = os.environ.get("KERAS_HOME")
    if not home:
        home = os.path.join(os.path.expanduser("~"), ".keras")
        if not os.access(os.path.dirname(home), os.W_OK):
            home = os.path.join(tempfile.gettempdir(), ".keras")
    return pathlib.Path(home) / "models"


def _goog_md5(headers):
    """The base64 MD5 from Google Cloud Storage's `x-goog-hash` header, if any."""
    for part in headers.get("x-goog-hash", "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "md5" and value:
            return value
    return None


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def download(url, target, sha256=None, verify=None, hint="", progress=True):
    """Downloads `url` to `target` unless `target` already exists.

    Args:
        url: the http(s) URL.
        target: the cache path (its folder is created).
        sha256: the file's expected SHA-256 (hex), or `None` where unknown.
        verify: optional callable taking the downloaded temporary path; an
            exception from it rejects the file.
        hint: a sentence added to every error (how to get the file by hand).
        progress: show Keras' progress bar.

    Returns:
        `target` as a `pathlib.Path`.

    Raises:
        DownloadError: naming the URL and `target`, after removing whatever
            was partly written; the next call downloads again.
    """
    import filelock

    target = pathlib.Path(target)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock file stays beside the target (deleting it would race with a
    # process that is opening it).
    with filelock.FileLock(str(target) + ".lock"):
        if target.is_file():  # another process downloaded it meanwhile
            return target
        # A fresh name opened exclusively ("x"), rather than mkstemp, whose
        # files are private (0600): the cached file gets the permissions any
        # new file would (the umask), as get_file's do.
        tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.part"
        try:
            with open(tmp, "xb") as out:
                _fetch(url, out, sha256, progress)
                out.flush()
                os.fsync(out.fileno())
            if verify is not None:
                try:
                    verify(tmp)
                except Exception as error:  # noqa: BLE001 -- any failure rejects the file
                    raise DownloadError(
                        f"{url} was downloaded but is not a usable checkpoint ({_one_line(error)}); "
                        f"it was removed and not cached at {target}."
                    ) from error
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except DownloadError as error:
            _remove(tmp)
            if hint and hint not in str(error):
                raise DownloadError(f"{error} {hint}") from error.__cause__
            raise
        except BaseException:
            _remove(tmp)
            raise
    return target


def _fetch(url, out, sha256, progress):
    import keras
    import requests

    seconds = timeout_seconds()
    where = f"downloading {url}"
    try:
        # identity: the length and hashes are the stored file's, never a
        # compressed transfer's.
        response = requests.get(url, stream=True, timeout=(seconds, seconds),
                                headers={"Accept-Encoding": "identity"})
    except requests.Timeout as error:
        raise DownloadError(f"{where}: no answer within {seconds:g} s (KERAS_VIT_DOWNLOAD_TIMEOUT).") from error
    except requests.RequestException as error:
        raise DownloadError(f"{where} failed: {_connection_reason(error)}.") from error
    with response:
        if response.status_code != 200:
            raise DownloadError(f"{where}: the server answered HTTP {response.status_code} {response.reason}.")
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        md5_expected = _goog_md5(response.headers)
        md5, sha = hashlib.md5(), hashlib.sha256()
        received = 0
        print(f"Downloading data from {url}", file=sys.stdout, flush=True)
        bar = keras.utils.Progbar(length, unit_name="B") if progress else None
        try:
            for chunk in response.iter_content(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                sha.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(received)
        except requests.RequestException as error:
            if _timed_out(error):
                raise DownloadError(
                    f"{where}: the server stopped sending after {received} bytes; no data for "
                    f"{seconds:g} s (KERAS_VIT_DOWNLOAD_TIMEOUT)."
                ) from error
            raise DownloadError(
                f"{where}: the connection broke after {received} bytes"
                + (f" of {length}" if length is not None else "") + f" ({_one_line(error)})."
            ) from error
    if length is not None and received != length:
        raise DownloadError(f"{where}: received {received} bytes, but the server announced {length}.")
    if md5_expected is not None:
        actual = base64.b64encode(md5.digest()).decode()
        if actual != md5_expected:
            raise DownloadError(
                f"{where}: the body's MD5 {actual} differs from the server's x-goog-hash md5={md5_expected} "
                "(corrupted in transfer)."
            )
    if sha256 is not None and sha.hexdigest() != sha256.lower():
        raise DownloadError(
            f"{where}: SHA-256 {sha.hexdigest()} differs from the expected {sha256} (wrong or corrupted file)."
        )


def _timed_out(error):
    import requests
    import urllib3

    # requests reports a read timeout inside a body as a ConnectionError
    # wrapping urllib3's ReadTimeoutError.
    return isinstance(error, requests.Timeout) or any(
        isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in error.args
    )


def _connection_reason(error):
    """The cause of a failed connection in a few words (requests nests it deep)."""
    text = _one_line(error)
    found = re.search(r"Failed to resolve '([^']+)'", text)
    if found:
        return f"cannot resolve the host {found.group(1)} (no network, or no DNS)"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text


def _one_line(error):
    return " ".join(str(error).split())


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
