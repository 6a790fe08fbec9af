"""The push: everything of an output folder that belongs on the Hub, in one ``HfApi.create_commit``.

Transient HTTP failures (5xx, 429, dropped connections) are retried with exponential back-off; 401/403
raise :class:`HubAuthenticationError`, which says how to log in. The token is never printed or logged.

The endpoint is read when a function runs: the ``endpoint`` argument, else the ``HF_ENDPOINT``
environment variable, else ``huggingface_hub``'s default. (``huggingface_hub`` itself reads
``HF_ENDPOINT`` once, at import, so setting it later would otherwise be ignored.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .card import find_pictures, redact_secrets, write_model_card
from .export import CARD_FILE, EXPORT_FILES, TRAINING_CONFIG_FILE

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload PaKA-adapted DINOv2 backbone"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

class HubAuthenticationError(PermissionError):
    """The Hub refused the credentials (HTTP 401/403). The message says how to log in."""


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT`` read now, else ``huggingface_hub``'s import-time endpoint."""
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
                    logger.error("%s on %s failed after %d attempts: %s", what, repo_id, attempt + 1, type(err).__name__)
                raise
            wait = backoff_s * (2**attempt)
            attempt += 1
            status = _status_code(err)
            logger.warning(
                "%s on %s failed (%s); retry %d/%d in %.1f s",
                what, repo_id, f"HTTP {status}" if status else type(err).__name__, attempt, max_retries, wait,
            )
            time.sleep(wait)


def collect_upload_files(output_dir: str | os.PathLike) -> dict[str, Path]:
    """Map path-in-repo → local file for everything :func:`push_to_hub` uploads (card not included).

    Exactly: :data:`EXPORT_FILES`, ``training_config.yaml`` and ``pictures/*.png``. Raises
    ``FileNotFoundError`` listing what is missing. Nothing else in the folder (checkpoints, optimizer
    state, logs, pickles) is ever uploaded.
    """
    out = Path(output_dir)
    required = [*EXPORT_FILES, TRAINING_CONFIG_FILE]
    missing = [name for name in required if not (out / name).is_file()]
    if missing:
        hint = ""
        if any(name in EXPORT_FILES for name in missing):
            hint += " Export the backbone with paka_hf.hub.save_backbone(model, output_dir)."
        if TRAINING_CONFIG_FILE in missing:
            hint += f" {TRAINING_CONFIG_FILE} is written by the trainer (scripts/train.py) at the start of training."
        raise FileNotFoundError(f"{out} lacks {', '.join(missing)}; nothing was pushed.{hint}")
    files = {name: out / name for name in required}
    for picture in find_pictures(out):
        files[picture.path] = out / picture.path
    return files


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    *,
    commit_description: str | None = None,
    endpoint: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    max_retries: int = 4,
    backoff_s: float = 2.0,
):
    """Publish ``output_dir`` to ``repo_id`` in one commit; return the ``huggingface_hub.CommitInfo``.

    Uploads exactly ``model.safetensors``, ``config.json``, ``preprocessor_config.json``, ``README.md``
    (rendered now by :func:`render_model_card` and also written to ``output_dir/README.md``),
    ``pictures/*.png`` and ``training_config.yaml`` (token-like values redacted). Creates the repository
    if needed (``private`` applies only then) and the branch ``revision`` if it does not exist.

    Every transient failure (HTTP 5xx/429, connection errors) is retried up to ``max_retries`` times with
    back-off ``backoff_s * 2**i``; the commit is built afresh on each attempt, and since all files go in a
    single ``create_commit`` the repository is either fully updated or untouched. HTTP 401/403 raise
    :class:`HubAuthenticationError`. ``token`` defaults to the logged-in token / ``HF_TOKEN``; it is never
    printed or logged.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if not isinstance(repo_id, str) or not _HUB_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'org/name' (got {repo_id!r})")
    out = Path(output_dir)
    files = collect_upload_files(out)
    card_path = write_model_card(out, repo_id, eval_results=eval_results, license=license, base_model=base_model)
    config_bytes = yaml.safe_dump(
        redact_secrets(yaml.safe_load(files[TRAINING_CONFIG_FILE].read_text(encoding="utf-8")) or {}),
        sort_keys=False,
    ).encode("utf-8")

    endpoint = resolve_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    retry = dict(repo_id=repo_id, endpoint=endpoint, max_retries=max_retries, backoff_s=backoff_s)

    _with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), what="create_repo", **retry)
    if revision not in (None, "main"):
        _with_retries(
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), what="create_branch", **retry
        )

    def commit():
        # Fresh operations on every attempt: huggingface_hub mutates them and forbids reuse after a commit.
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
            for name, path in files.items()
            if name != TRAINING_CONFIG_FILE
        ]
        operations.append(CommitOperationAdd(path_in_repo=TRAINING_CONFIG_FILE, path_or_fileobj=config_bytes))
        operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card_path)))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
        )

    logger.info("Pushing %d files from %s to %s (%s)", len(files) + 1, out, repo_id, revision or "main")
    info = _with_retries(commit, what="create_commit", **retry)
    logger.info("Pushed %s: %s", repo_id, getattr(info, "commit_url", info))
    return info

