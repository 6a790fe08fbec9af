"""The push: what of an output folder belongs on the Hub, as exactly that, in one ``HfApi.create_commit``.

:func:`push_to_hub` promises:

- **one commit**: every file goes in a single ``create_commit``, so the repository is either fully updated
  or untouched; remote files the new export does not contain (an old ``pytorch_model.bin``, stale
  pictures) are deleted *in that same commit*, so the remote is exactly what was pushed;
- **privacy is the user's**: ``private=None`` leaves visibility to the namespace's default, ``private=True``
  on an existing public repository stops with :class:`HubVisibilityError` before anything is sent, and a
  repository this call created is deleted again when its first commit fails;
- **nothing from outside the folder**: a symlink to content outside ``output_dir`` is refused (export
  files) or skipped with a warning (pictures); the user's own ``output_dir/README.md`` is never read or
  written: the card is rendered into the upload;
- **errors say what to do**: transient HTTP failures (5xx, 429, dropped connections) are retried with
  exponential back-off; 401/403 raise :class:`HubAuthenticationError`, which says how to log in. The token
  is never printed or logged.

The endpoint is read when a function runs: the ``endpoint`` argument, else the ``HF_ENDPOINT``
environment variable, else ``huggingface_hub``'s default. (``huggingface_hub`` itself reads
``HF_ENDPOINT`` once, at import, so setting it later would otherwise be ignored.)
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from paka_hf.hub.card import (
    BaseModelRef,
    find_pictures,
    publishable_training_config,
    redact_secrets,
    render_model_card,
    resolve_base_model,
)
from paka_hf.utils.errors import ConfigError, MissingPathError, PaKAUserError
from paka_hf.utils.files import ADAPTER_DIR, ADAPTER_FILES, CARD_FILE, EXPORT_FILES, TRAINING_CONFIG_FILE
from paka_hf.utils.paths import REPO_ID_PATTERN, is_inside

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload PaKA-adapted DINOv2 backbone"
#: Remote files a push never deletes: ``.gitattributes`` is the Hub's own (LFS rules made at creation).
KEEP_REMOTE = (".gitattributes",)


class HubAuthenticationError(PaKAUserError, PermissionError):
    """The Hub refused the credentials (HTTP 401/403). The message says how to log in."""


class HubVisibilityError(PaKAUserError, ValueError):
    """A private push was asked for but the repository exists and is public: nothing is pushed."""


class UnsafeUploadError(PaKAUserError, ValueError):
    """A file to upload is a symlink to content outside the output folder: nothing is pushed."""


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT`` read at this call, else ``huggingface_hub``'s import-time endpoint.

    Args:
        endpoint: an endpoint URL, or ``None``.

    Returns:
        The endpoint URL without a trailing ``/``.
    """
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _status_code(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception types of the HTTP client huggingface_hub uses (httpx2 in hub 2.x)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            kind = getattr(module, name, None)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                errors.append(kind)
    return tuple(errors)


def _is_transient(err: BaseException) -> bool:
    status = _status_code(err)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(err, _transport_errors()):
        return True
    if isinstance(err, json.JSONDecodeError):  # an HTML error page from a gateway instead of the Hub's JSON
        return True
    cause = err.__cause__ or err.__context__
    return cause is not None and cause is not err and _is_transient(cause)


def _auth_error(err: BaseException, repo_id: str, endpoint: str) -> HubAuthenticationError:
    status = _status_code(err)
    what = "not authenticated" if status == 401 else "not allowed to write to this repository"
    return HubAuthenticationError(
        f"The Hub at {endpoint} refused the push to {repo_id!r} (HTTP {status}: {what}). Log in with "
        "`hf auth login` (or set the HF_TOKEN environment variable, or pass token=...) using a token with "
        "*write* access to the namespace; check that the organization exists and that you are a member "
        "with write rights. Tokens: https://huggingface.co/settings/tokens"
    )


def _with_retries(
    action: Callable[[], Any], *, what: str, repo_id: str, endpoint: str, max_retries: int, backoff_s: float
) -> Any:
    """Run ``action``; retry transient HTTP failures with exponential back-off; translate auth errors."""
    from huggingface_hub.errors import LocalTokenNotFoundError

    attempt = 0
    while True:
        try:
            return action()
        except LocalTokenNotFoundError as err:
            raise HubAuthenticationError(
                f"No Hugging Face token found for {what} on {repo_id!r}: run `hf auth login` or set the HF_TOKEN "
                "environment variable (or pass token=...)."
            ) from err
        except Exception as err:  # noqa: BLE001 - classified below, re-raised when not transient
            if _status_code(err) in (401, 403):
                raise _auth_error(err, repo_id, endpoint) from err
            if not _is_transient(err) or attempt >= max_retries:
                if _is_transient(err):
                    logger.error(
                        "%s on %s failed after %d attempts: %s", what, repo_id, attempt + 1, type(err).__name__
                    )
                raise
            wait = backoff_s * (2**attempt)
            attempt += 1
            status = _status_code(err)
            logger.warning(
                "%s on %s failed (%s); retry %d/%d in %.1f s",
                what,
                repo_id,
                f"HTTP {status}" if status else type(err).__name__,
                attempt,
                max_retries,
                wait,
            )
            time.sleep(wait)


def collect_upload_files(output_dir: str | os.PathLike) -> dict[str, Path]:
    """Map path-in-repo → local file for everything :func:`push_to_hub` uploads (the card is rendered apart).

    Exactly: :data:`EXPORT_FILES`, ``training_config.yaml``, the pictures of :func:`find_pictures` and, for a
    LoRA run, the adapter (``adapter/adapter_config.json``, ``adapter/adapter_model.safetensors``). Nothing else in the folder (checkpoints, optimizer state, logs, pickles, a ``README.md``) is ever
    uploaded. Raises :class:`~paka_hf.utils.errors.MissingPathError` listing what is missing, and
    :class:`UnsafeUploadError` when one of these files is a symlink to content outside ``output_dir``
    (pictures of that kind are skipped with a warning by :func:`find_pictures`).

    Args:
        output_dir: the training output (export) folder.

    Returns:
        ``{path in the repository: local file}``.

    Raises:
        MissingPathError: a required file is missing (the message says how to produce it).
        UnsafeUploadError: a required file is a symlink to content outside ``output_dir``.
    """
    out = Path(output_dir)
    required = [*EXPORT_FILES, TRAINING_CONFIG_FILE]
    if (out / ADAPTER_DIR).is_dir():  # a LoRA export: the adapter goes with the merged model, whole or not at all
        required += [f"{ADAPTER_DIR}/{name}" for name in ADAPTER_FILES]
    missing = [name for name in required if not (out / name).is_file()]
    if missing:
        hint = ""
        if any(name in EXPORT_FILES for name in missing):
            hint += " Export the backbone with paka_hf.hub.save_backbone(model, output_dir)."
        if any(name.startswith(f"{ADAPTER_DIR}/") for name in missing):
            hint += f" {out / ADAPTER_DIR} is incomplete: export again (paka_hf.modeling.lora.export_lora_backbone) or remove it."
        if TRAINING_CONFIG_FILE in missing:
            hint += (
                f" {TRAINING_CONFIG_FILE} is written with the exported weights when training ends (scripts/train.py "
                "exports the backbone to its output_dir); a run that has not ended has it only in its checkpoint-N "
                "folders, which are not exports."
            )
        raise MissingPathError(f"{out} lacks {', '.join(missing)}; nothing was pushed.{hint}")
    outside = [name for name in required if not is_inside(out / name, out)]
    if outside:
        targets = ", ".join(f"{name} -> {(out / name).resolve()}" for name in outside)
        raise UnsafeUploadError(
            f"{out} holds symlinks to files outside it ({targets}); nothing was pushed. Only the folder's own "
            "content is uploaded: copy those files into the folder if they are what you mean to publish."
        )
    files = {name: out / name for name in required}
    for picture in find_pictures(out):
        files[picture.path] = out / picture.path
    return files


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    *,
    commit_description: str | None = None,
    endpoint: str | None = None,
    max_retries: int = 4,
    backoff_s: float = 2.0,
    **card_options: Any,
):
    """Publish ``output_dir`` to ``repo_id`` in one commit; return the ``huggingface_hub.CommitInfo``.

    The commit holds exactly ``model.safetensors``, ``config.json``, ``preprocessor_config.json``,
    ``pictures/*.png``, the LoRA adapter's ``adapter/*`` when there is one, ``training_config.yaml`` (token-like values redacted; a local ``model_name_or_path``, like a LoRA adapter's
    ``base_model_name_or_path``, replaced by the base's Hub id or ``None``, never published:
    :func:`~paka_hf.hub.card.resolve_base_model`) and ``README.md``, rendered now
    by :func:`~paka_hf.hub.card.render_model_card` (``card_options`` go to it: ``license``, ``base_model``,
    ``pipeline_tag``, ...) and uploaded from memory; it deletes every other remote file but ``.gitattributes``.
    Nothing is written to ``output_dir``. The branch ``revision`` is created if missing.

    ``private``: ``None`` (default) leaves a new repository's visibility to the namespace's default;
    ``True`` creates it private and refuses (:class:`HubVisibilityError`) to push into an existing public
    one; ``False`` creates it public. An existing repository's visibility is never changed. When this call
    creates the repository and then fails, it deletes the repository again.

    Every transient failure (HTTP 5xx/429, connection errors) is retried up to ``max_retries`` times with
    back-off ``backoff_s * 2**i``; the commit is built afresh on each attempt against the branch head it
    was computed from (``parent_commit``), so a concurrent commit is never silently overwritten. HTTP
    401/403 raise :class:`HubAuthenticationError`. ``token`` defaults to the logged-in token / ``HF_TOKEN``;
    it is never printed or logged.

    Args:
        output_dir: the training output (export) folder.
        repo_id: the target model repository, ``org/name``.
        private: the visibility of a repository this call creates, and whether an existing one must be private.
        eval_results: evaluation JSON files or dicts for the card (:func:`~paka_hf.hub.card.render_model_card`).
        revision: the branch to commit to; ``main`` when ``None``.
        token: a Hub token; the logged-in one when ``None``.
        commit_message: the commit's title.
        commit_description: the commit's description.
        endpoint: the Hub endpoint (:func:`resolve_endpoint`).
        max_retries: how many times a transient failure is retried.
        backoff_s: the first retry's wait in seconds, doubled on each retry.
        **card_options: keyword arguments of :func:`~paka_hf.hub.card.render_model_card`.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit.

    Raises:
        ConfigError: ``repo_id`` is not ``org/name``, or ``card_options["base_model"]`` is not a Hub id.
        MissingPathError: a file to upload is missing (:func:`collect_upload_files`).
        UnsafeUploadError: a file to upload is a symlink to content outside ``output_dir``.
        MislabelledResultsError: an evaluation result belongs to neither model.
        HubVisibilityError: ``private=True`` and the repository exists and is public.
        HubAuthenticationError: the Hub answered 401 or 403.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if not isinstance(repo_id, str) or not REPO_ID_PATTERN.match(repo_id):
        raise ConfigError(f"repo_id must look like 'org/name' (got {repo_id!r})")
    out = Path(output_dir)
    files = collect_upload_files(out)
    training_config = redact_secrets(yaml.safe_load(files[TRAINING_CONFIG_FILE].read_text(encoding="utf-8")) or {})
    base = resolve_base_model(training_config, card_options.get("base_model"))
    card_bytes = render_model_card(out, repo_id, eval_results=eval_results, **card_options).content.encode("utf-8")
    config_bytes = yaml.safe_dump(publishable_training_config(training_config, base), sort_keys=False).encode("utf-8")
    uploads: dict[str, str | bytes] = {name: str(path) for name, path in files.items()}
    uploads[TRAINING_CONFIG_FILE] = config_bytes
    uploads[CARD_FILE] = card_bytes
    adapter_config = f"{ADAPTER_DIR}/{ADAPTER_FILES[0]}"
    if adapter_config in files:
        uploads[adapter_config] = _publishable_adapter_config(files[adapter_config], base)

    endpoint = resolve_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    retry = dict(repo_id=repo_id, endpoint=endpoint, max_retries=max_retries, backoff_s=backoff_s)
    branch = revision or "main"

    def commit():
        # Fresh operations on every attempt: huggingface_hub mutates them and forbids reuse after a commit.
        head = api.repo_info(repo_id, revision=branch)
        stale = sorted(
            s.rfilename for s in head.siblings or () if s.rfilename not in uploads and s.rfilename not in KEEP_REMOTE
        )
        if stale:
            logger.info("Deleting %d remote file(s) the export does not contain: %s", len(stale), ", ".join(stale))
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in uploads.items()]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        with warnings.catch_warnings():
            # huggingface_hub 2.4.0 uploads LFS files with httpx2 2.17.0's deprecated data=<bytes> ("Use
            # 'content=<...>' to upload raw bytes/text content."), a DeprecationWarning per file we cannot avoid.
            # It is raised in huggingface_hub's upload threads: the filter list is process-wide, so this holds there.
            warnings.filterwarnings("ignore", message=r"Use 'content=<\.\.\.>'", category=DeprecationWarning)
            return api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message,
                commit_description=commit_description,
                revision=revision,
                parent_commit=head.sha,
            )

    created = _ensure_repo(api, repo_id, private, retry)
    try:
        if branch != "main":
            _with_retries(
                lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), what="create_branch", **retry
            )
        logger.info("Pushing %d files from %s to %s (%s)", len(uploads), out, repo_id, branch)
        info = _with_retries(commit, what="create_commit", **retry)
    except BaseException:
        if created:
            _delete_created_repo(api, repo_id)
        raise
    logger.info("Pushed %s: %s", repo_id, getattr(info, "commit_url", info))
    return info


def _publishable_adapter_config(path: Path, base: BaseModelRef) -> str | bytes:
    """The LoRA adapter's config as it may be published: peft records the base as the path it was loaded from,
    which becomes the base's Hub id, or ``None`` when that is not known (``PeftModel.from_pretrained(base, ...)``
    takes the base model itself and needs neither). An adapter config naming a Hub id is uploaded as it is."""
    config = json.loads(path.read_text(encoding="utf-8"))
    recorded = config.get("base_model_name_or_path")
    if recorded is None or (REPO_ID_PATTERN.match(str(recorded)) and not Path(recorded).expanduser().exists()):
        return str(path)
    config["base_model_name_or_path"] = base.hub_id
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _ensure_repo(api, repo_id: str, private: bool | None, retry: Mapping[str, Any]) -> bool:
    """Check the repository's visibility against ``private``, create it if missing; ``True`` if created here."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = _with_retries(lambda: api.repo_info(repo_id), what="repo_info", **retry)
    except RepositoryNotFoundError:
        _with_retries(lambda: api.create_repo(repo_id, private=private), what="create_repo", **retry)
        return True
    if private and not info.private:
        raise HubVisibilityError(
            f"{repo_id} already exists and is public, but a private push was asked for; nothing was pushed. "
            "Make the repository private on the Hub (Settings) first, or push to another repo_id."
        )
    if private is False and info.private:
        logger.info("%s exists and is private; it stays private (a push never changes visibility)", repo_id)
    return False


def _delete_created_repo(api, repo_id: str) -> None:
    """Remove the repository this push created and could not fill, so no empty repository is left behind."""
    try:
        api.delete_repo(repo_id, missing_ok=True)
        logger.warning("The first push to %s failed; deleted the repository it had created.", repo_id)
    except Exception as err:  # noqa: BLE001 - the push's own error is the one to report
        logger.error(
            "The first push to %s failed and deleting the new, empty repository failed too (%s): delete "
            "it on the Hub.",
            repo_id,
            type(err).__name__,
        )
