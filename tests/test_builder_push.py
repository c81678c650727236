"""``lora-wise push`` with ``huggingface_hub.HfApi`` replaced at the network boundary
(``fake_hub.RecordingHfApi``: the calls and the exact bytes an upload would send)."""

from __future__ import annotations

import shutil

import pytest

from fake_hub import SECRET, RecordingHfApi, install
from lora_wise.builder.push import PushError, push
from lora_wise.builder.write import BUILD_DIR
from lora_wise.cli import main
from lora_wise.errors import RepoIdError



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
    return install(monkeypatch)


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
    assert [u["path_in_repo"] for u in uploads] == ["data/mini_low_r8", "data/mini_low_r8_snapshots",
                                                    "data/mini_medium_r8", "data/mini_medium_r8_snapshots", None]
    assert all(u["delete_patterns"] == ["*.parquet"] for u in uploads[:4])  # stale remote shards go
    local = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in folder.rglob("*") if p.is_file() and BUILD_DIR not in p.parts}
    assert api.sent == local  # exactly the card and the shards, byte for byte; no bookkeeping
    assert "me/LoRA-WiSE-mini" in api.sent["README.md"].decode()  # the card's example names the repo


def test_dry_run_lists_files_and_touches_nothing(folder, fake_hub, capsys):
    card = (folder / "README.md").read_bytes()
    assert main(["push", str(folder), "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "README.md" in out and "data/mini_low_r8/test-00000-" in out
    assert "data/mini_low_r8_snapshots/test-00000-" in out
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
    with pytest.raises(RepoIdError, match="<user or org>/<name>"):
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
