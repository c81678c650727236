"""``lora-wise push`` with ``huggingface_hub.HfApi`` replaced at the network boundary.

The replacement records calls and checks what an upload would send (the files
under ``folder_path`` that the patterns select), so the tests see exactly what
the Hub would receive; nothing else is faked.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest

from builder.push import PushError, push
from builder.write import BUILD_DIR
from lora_wise.cli import main

SECRET = "hf_lorawiseTestTokenDoNotPrint0123456789"


class RecordingHfApi:
    """Stands in for HfApi: records create_repo/upload_folder and what each upload would send."""

    instances: list["RecordingHfApi"] = []

    def __init__(self, *args, **kwargs):
        self.calls: list[tuple[str, dict]] = []
        self.sent: dict[str, bytes] = {}
        RecordingHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None,
                      delete_patterns=None, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "path_in_repo": path_in_repo,
                                             "allow_patterns": allow_patterns, "delete_patterns": delete_patterns,
                                             **kwargs}))
        root = Path(folder_path)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file():
                continue
            if allow_patterns and not any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                continue
            if ignore_patterns and any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                continue
            self.sent[f"{path_in_repo}/{rel}" if path_in_repo else rel] = path.read_bytes()
        return "commit"


@pytest.fixture
def folder(synthetic_benchmark, tmp_path):
    """A copy of a built folder, with build bookkeeping beside the data as a real build leaves it."""
    copy = tmp_path / "lora-wise"
    shutil.copytree(synthetic_benchmark, copy)
    (copy / BUILD_DIR / "mini_low_r8").mkdir(parents=True)
    (copy / BUILD_DIR / "mini_low_r8" / "manifest.json").write_text("{}")
    return copy


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    RecordingHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return RecordingHfApi


def test_push_creates_the_repo_and_uploads_card_and_shards(folder, fake_hub, capsys):
    assert main(["push", str(folder), "me/LoRA-WiSE-mini", "--private"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "https://huggingface.co/datasets/me/LoRA-WiSE-mini" in out
    (api,) = fake_hub.instances
    name, create = api.calls[0]
    assert name == "create_repo" and create == {"repo_id": "me/LoRA-WiSE-mini", "repo_type": "dataset",
                                                "private": True, "exist_ok": True}
    uploads = [kwargs for name, kwargs in api.calls[1:]]
    assert all(u["repo_type"] == "dataset" for u in uploads)
    assert [u["path_in_repo"] for u in uploads] == ["data/mini_low_r8", "data/mini_medium_r8", None]
    assert all(u["delete_patterns"] == ["*.parquet"] for u in uploads[:2])  # stale remote shards go
    local = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in folder.rglob("*") if p.is_file() and BUILD_DIR not in p.parts}
    assert api.sent == local  # exactly the card and the shards, byte for byte; no bookkeeping
    assert "me/LoRA-WiSE-mini" in api.sent["README.md"].decode()  # the card's example names the repo


def test_dry_run_lists_files_and_touches_nothing(folder, fake_hub, capsys):
    card = (folder / "README.md").read_bytes()
    assert main(["push", str(folder), "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "README.md" in out and "data/mini_low_r8/test-00000.parquet" in out
    assert BUILD_DIR not in out
    assert fake_hub.instances == [] and (folder / "README.md").read_bytes() == card


def test_no_token_is_a_clear_error(folder, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise AssertionError("no Hub call may happen without a token")

    monkeypatch.setattr(huggingface_hub, "HfApi", unreachable)
    assert main(["push", str(folder), "me/x"]) == 2
    assert "hf auth login" in capsys.readouterr().err


def test_folder_problems_are_refused_before_any_upload(folder, tmp_path, fake_hub):
    with pytest.raises(PushError, match="does not exist"):
        push(tmp_path / "nowhere", "me/x")
    with pytest.raises(PushError, match="<user or org>/<name>"):
        push(folder, "no-slash")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PushError, match="no built LoRA-WiSE config"):
        push(tmp_path / "empty", "me/x")
    units = folder / BUILD_DIR / "mini_low_r8" / "units"
    units.mkdir()
    (units / "m0001-n00002.parquet").write_bytes(b"staged")
    with pytest.raises(PushError, match="not sealed into shards yet"):
        push(folder, "me/x")
    assert fake_hub.instances == []


def test_hub_refusal_names_the_fix_and_never_the_token(folder, fake_hub, monkeypatch, capsys):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self, repo_id, **kwargs):
        url = "https://huggingface.co/api/repos/create"
        response = httpx.Response(401, request=httpx.Request("POST", url))
        raise HfHubHTTPError(f"401 Client Error: Unauthorized for url: {url}", response=response)

    monkeypatch.setattr(RecordingHfApi, "create_repo", refuse)
    assert main(["push", str(folder), "me/x"]) == 2
    err = capsys.readouterr().err
    assert "hf auth login" in err and "me/x" in err and SECRET not in err
