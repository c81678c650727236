"""The Hub helper: repo ids by huggingface_hub's validator, the token, and Hub failures known by their type."""

from __future__ import annotations

import socket
import time

import httpx
import httpx2
import pytest
import requests
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, LocalTokenNotFoundError,
                                    OfflineModeIsEnabled, RepositoryNotFoundError)

from lora_wise import hub
from lora_wise.errors import (HubAuthError, HubConnectionError, HubError, HubNotFoundError, LoRAWiSEError,
                              RepoIdError)


def http_error(cls, status: int):
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return cls(f"{status} Client Error\nRequest ID: abc", response=httpx.Response(status, request=request))


@pytest.mark.parametrize("text,ok", [("me/LoRA-WiSE", True), (" me/x ", True), ("no-slash", False),
                                     ("a/b/c", False), ("me/bad..name", False), ("me/", False), ("", False)])
def test_repo_ids(text, ok):
    assert hub.is_repo_id(text.strip()) is ok
    if ok:
        assert hub.check_repo_id(text, "dataset") == text.strip()
    else:
        with pytest.raises(RepoIdError, match=r"dataset .* is not a Hub repo id; give <user or org>/<name>"):
            hub.check_repo_id(text, "dataset")


@pytest.mark.parametrize("exc,kind,says", [
    (http_error(HfHubHTTPError, 401), HubAuthError, "hf auth login"),
    (http_error(RepositoryNotFoundError, 403), HubAuthError, "hf auth login"),
    (http_error(GatedRepoError, 403), HubAuthError, "gated"),
    (LocalTokenNotFoundError("no token"), HubAuthError, "hf auth login"),
    (http_error(RepositoryNotFoundError, 404), HubNotFoundError, "check the repo id"),
    (httpx.ConnectError("connection refused"), HubConnectionError, "check your connection"),
    (requests.exceptions.ConnectionError("DNS"), HubConnectionError, "check your connection"),
    (httpx2.ConnectError("[Errno -2] Name or service not known"), HubConnectionError, "check your connection"),
    (httpx2.ReadTimeout("timed out"), HubConnectionError, "check your connection"),
    (OfflineModeIsEnabled("cannot connect"), HubConnectionError, "check your connection"),
    (LocalEntryNotFoundError("not in the cache"), HubConnectionError, "not in the local cache"),
    (http_error(HfHubHTTPError, 500), HubError, "try again later"),
])
def test_hub_failures_are_known_by_type_and_name_the_fix(exc, kind, says):
    error = hub.translate(exc, "upload to me/x")
    assert type(error) is kind and isinstance(error, LoRAWiSEError)
    text = str(error)
    assert says in text and "me/x" in text and "\n" not in text  # one line, naming the fix


def test_other_exceptions_are_not_hub_failures():
    assert hub.translate(RuntimeError("401 in a message is no Hub error"), "upload to me/x") is None
    assert hub.translate(BrokenPipeError(32, "Broken pipe"), "upload to me/x") is None  # our stdout, not the Hub
    assert hub.translate(KeyError("x"), "upload to me/x") is None
    with pytest.raises(RuntimeError, match="a bug"):
        with hub.talking_to_hub("upload to me/x"):
            raise RuntimeError("a bug")
    with pytest.raises(HubAuthError) as raised:
        with hub.talking_to_hub("upload to me/x"):
            raise http_error(HfHubHTTPError, 401)
    assert isinstance(raised.value.__cause__, HfHubHTTPError)


def test_no_token_is_an_auth_error(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(HubAuthError, match="no Hugging Face token found to push to me/x: log in with `hf auth login`"):
        hub.require_token("push to me/x")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert hub.require_token("push to me/x") == "hf_secret"


@pytest.fixture
def fail_fast(monkeypatch):
    """:func:`hub.fail_fast_when_unreachable` installed for the test, huggingface_hub's own client after it."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import; the tests set HF_HUB_OFFLINE=1
    monkeypatch.setattr(hub, "_unreachable", {})
    assert hub.fail_fast_when_unreachable()
    yield
    set_client_factory(default_client_factory)


def test_a_host_that_refused_a_connection_is_given_up_at_once(fail_fast):
    """huggingface_hub retries a refused connection for 23 s; with the fail-fast client the first refusal
    ends the call, and later calls to that host fail before connecting -- with huggingface_hub's offline
    error, which it answers from its cache where it can."""
    from huggingface_hub import HfApi

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    api = HfApi(endpoint=f"http://127.0.0.1:{port}", token=False)
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(hub.HubConnectionError, match="could not reach the Hugging Face Hub to list me/x"):
            with hub.talking_to_hub("list me/x"):
                api.list_repo_files("me/x", repo_type="dataset")
        assert time.monotonic() - start < 10
    assert isinstance(hub._unreachable.get("127.0.0.1"), tuple), hub._unreachable


def test_repo_files_are_empty_for_a_repo_not_created_yet_and_other_failures_propagate():
    class Api:
        def __init__(self, error=None):
            self.error = error

        def list_repo_files(self, repo_id, repo_type):
            assert repo_type == "dataset"
            if self.error:
                raise self.error
            return ["a.json", "b/c.json"]

    assert hub.repo_files(Api(), "me/results") == ["a.json", "b/c.json"]
    assert hub.repo_files(Api(http_error(RepositoryNotFoundError, 404)), "me/results") == []
    with pytest.raises(HfHubHTTPError):
        hub.repo_files(Api(http_error(HfHubHTTPError, 500)), "me/results")
    with pytest.raises(HubError, match="the Hub failed to list"):
        with hub.talking_to_hub("list me/results"):
            hub.repo_files(Api(http_error(HfHubHTTPError, 500)), "me/results")
