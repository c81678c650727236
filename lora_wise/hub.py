"""The Hugging Face Hub as LoRA-WiSE talks to it: repo ids, the token, and what its failures mean.

Every module that calls the Hub goes through here for three things:

* :func:`check_repo_id` -- an ``owner/name`` repo id, checked by huggingface_hub's own
  validator, or a :class:`~lora_wise.errors.RepoIdError` saying what was expected;
* :func:`require_token` -- the token huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``),
  or a :class:`~lora_wise.errors.HubAuthError` naming how to log in; never printed;
* :func:`translate` and :func:`talking_to_hub` -- a failed request, recognised by its type
  (huggingface_hub's errors; connection errors of requests, httpx, httpx2 and sockets), becomes the
  :class:`~lora_wise.errors.HubError` subclass that says what to do, in one line;
* :func:`fail_fast_when_unreachable` -- for a command-line run: once a connection to a host has
  failed, huggingface_hub's requests to it give up at once for a while (answering from its cache
  where it can) instead of retrying for half a minute.

huggingface_hub is imported by the functions that need it, so importing this module is free.
"""

from __future__ import annotations

import sys
import threading
import time
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
    for name in ("httpx", "httpx2"):  # huggingface_hub 1.x talks through httpx, 2.x through httpx2
        module = sys.modules.get(name)
        if module is not None:
            found.append(module.TransportError)
    return tuple(found)


def translate(exc: BaseException, action: str) -> HubError | None:
    """The :class:`HubError` a failed Hub request means, naming the fix; None for any other exception.

    ``action`` completes "the Hub refused to ...", e.g. ``"upload to me/LoRA-WiSE"``.
    """
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        LocalTokenNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, BrokenPipeError):  # a ConnectionError, but of this process's output: never the Hub's
        return None
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
    if isinstance(exc, LocalEntryNotFoundError):  # the Hub was not reached and the cache lacks the file
        return HubConnectionError(f"could not reach the Hugging Face Hub to {action}, and it is not in the local cache "
                                  f"({detail}); check your connection (and that HF_HUB_OFFLINE is not set), then "
                                  f"try again")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
        return HubNotFoundError(f"the Hub could not {action} ({detail}); check the repo id, and log in with "
                                f"`hf auth login` if the repo is private")
    if isinstance(exc, _connection_errors()):
        return HubConnectionError(f"could not reach the Hugging Face Hub to {action} ({detail}); check your "
                                  f"connection (and that HF_HUB_OFFLINE is not set), then try again")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the Hub failed to {action} ({detail}); try again later")
    return None


def repo_files(api, repo_id: str, repo_type: str = "dataset") -> list[str]:
    """The files of a Hub repo through ``api`` (an ``HfApi``); ``[]`` for a repo not created yet.

    A store that nothing was written to has no repo: that is an empty store, not an error.
    Any other failure propagates (inside :func:`talking_to_hub` it becomes a :class:`HubError`).
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return list(api.list_repo_files(repo_id, repo_type=repo_type))
    except RepositoryNotFoundError:
        return []


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


# --------------------------------------------------------------------------- failing fast when offline

#: How long a host whose connection failed counts as unreachable (seconds).
UNREACHABLE_FOR_S = 30.0
#: Seconds to wait for a TCP/TLS connection to the Hub (huggingface_hub waits forever by default).
CONNECT_TIMEOUT_S = 10.0

_unreachable: dict[str, tuple[float, str]] = {}  # host -> (when connecting failed, why)
_unreachable_lock = threading.Lock()


def fail_fast_when_unreachable(connect_timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Make huggingface_hub give up on a host at once after a connection to it has failed.

    huggingface_hub retries a failed connection five times over 23 seconds (DNS failures
    included); ``datasets.load_dataset`` of a repo id, a download or an upload then spends
    that long before it fails.  This installs (``huggingface_hub.set_client_factory``) its
    default client with two changes: connecting times out after ``connect_timeout`` seconds,
    and once connecting to a host has failed, requests to that host raise huggingface_hub's
    own ``OfflineModeIsEnabled`` for :data:`UNREACHABLE_FOR_S` seconds -- which it does not
    retry, and answers from its cache where it can, exactly as with ``HF_HUB_OFFLINE=1``.
    So a command fails in about a second, in one line (:func:`translate`).  Proxies set in
    the environment keep their own transport (and huggingface_hub's retries).

    Meant for the command line (``lora-wise``), not for a library import: it changes
    huggingface_hub's client for the whole process.  Returns False where this
    huggingface_hub has no such client (nothing changed).
    """
    try:
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.errors import OfflineModeIsEnabled
        from huggingface_hub.utils._http import hf_request_event_hook
    except ImportError:  # huggingface_hub < 2 (requests or httpx): left as it is
        return False

    class FailFastTransport(httpx2.HTTPTransport):
        def handle_request(self, request):
            host = request.url.host
            with _unreachable_lock:
                failed, why = _unreachable.get(host, (None, ""))
            if failed is not None and time.monotonic() - failed < UNREACHABLE_FOR_S:
                raise OfflineModeIsEnabled(f"cannot connect to {host}: {why}")
            try:
                return super().handle_request(request)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                with _unreachable_lock:
                    _unreachable[host] = (time.monotonic(), str(exc) or type(exc).__name__)
                raise

    def client_factory():
        return httpx2.Client(transport=FailFastTransport(), event_hooks={"request": [hf_request_event_hook]},
                             follow_redirects=True, timeout=httpx2.Timeout(None, connect=connect_timeout))

    set_client_factory(client_factory)
    return True
