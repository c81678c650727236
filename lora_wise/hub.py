"""The Hugging Face Hub as LoRA-WiSE talks to it: repo ids, the token, and what its failures mean.

Every module that calls the Hub goes through here for three things:

* :func:`check_repo_id` -- an ``owner/name`` repo id, checked by huggingface_hub's own
  validator, or a :class:`~lora_wise.errors.RepoIdError` saying what was expected;
* :func:`require_token` -- the token huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``),
  or a :class:`~lora_wise.errors.HubAuthError` naming how to log in; never printed;
* :func:`translate` and :func:`talking_to_hub` -- a failed request, recognised by its type
  (huggingface_hub's errors; connection errors of requests, httpx and sockets), becomes the
  :class:`~lora_wise.errors.HubError` subclass that says what to do, in one line.

huggingface_hub is imported by the functions that need it, so importing this module is free.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from .errors import HubAuthError, HubConnectionError, HubError, HubNotFoundError, LoRAWiSEError, RepoIdError

#: An example repo id for error messages.
EXAMPLE = "me/LoRA-WiSE"


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is a Hub repo id ``owner/name`` (huggingface_hub's rules for the name)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    owner, slash, name = str(text).partition("/")
    if not (owner and slash and name) or "/" in name:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str, what: str = "repo id") -> str:
    """``repo_id`` stripped, when it is an ``owner/name`` Hub repo id; else a :class:`RepoIdError`."""
    text = str(repo_id or "").strip()
    if not is_repo_id(text):
        raise RepoIdError(f"{what} {repo_id!r} is not a Hub repo id; give <user or org>/<name>, e.g. {EXAMPLE}")
    return text


def require_token(action: str) -> str:
    """The token huggingface_hub finds (``HF_TOKEN``, else ``hf auth login``); a :class:`HubAuthError` if none."""
    from huggingface_hub import get_token

    token = get_token()
    if token is None:
        raise HubAuthError(f"no Hugging Face token found to {action}: log in with `hf auth login` or set HF_TOKEN "
                           f"(a token with write access), then try again")
    return token


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the sockets and of the HTTP libraries in use (one not imported raised nothing)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    requests = sys.modules.get("requests")
    if requests is not None:
        found += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        found.append(httpx.TransportError)
    return tuple(found)


def translate(exc: BaseException, action: str) -> HubError | None:
    """The :class:`HubError` a failed Hub request means, naming the fix; None for any other exception.

    ``action`` completes "the Hub refused to ...", e.g. ``"upload to me/LoRA-WiSE"``.
    """
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalTokenNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    message = str(exc).strip()
    detail = f"{type(exc).__name__}: {message.splitlines()[0] if message else 'no message'}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, LocalTokenNotFoundError):
        return HubAuthError(f"no Hugging Face token found to {action}: log in with `hf auth login` or set HF_TOKEN")
    if isinstance(exc, GatedRepoError):
        return HubAuthError(f"the Hub refused to {action} ({detail}): the repo is gated; accept its terms on its "
                            f"Hub page, then log in with `hf auth login` (or set HF_TOKEN)")
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return HubAuthError(f"the Hub refused to {action} ({detail}); log in with `hf auth login` (or set "
                            f"HF_TOKEN) with a token allowed to {action}")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
        return HubNotFoundError(f"the Hub could not {action} ({detail}); check the repo id, and log in with "
                                f"`hf auth login` if the repo is private")
    if isinstance(exc, _connection_errors()):
        return HubConnectionError(f"could not reach the Hugging Face Hub to {action} ({detail}); check your "
                                  f"connection (and that HF_HUB_OFFLINE is not set), then try again")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the Hub failed to {action} ({detail}); try again later")
    return None


@contextmanager
def talking_to_hub(action: str) -> Iterator[None]:
    """Run Hub requests; a Hub failure leaves the block as the :class:`HubError` that names the fix."""
    try:
        yield
    except LoRAWiSEError:
        raise
    except Exception as exc:
        error = translate(exc, action)
        if error is None:
            raise
        raise error from exc
