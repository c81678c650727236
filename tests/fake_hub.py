"""``huggingface_hub.HfApi`` replaced at the network boundary, for the push and deploy tests.

The recorder keeps every call with its arguments and, for ``upload_folder``, the bytes the
upload would send (the files under ``folder_path`` that the patterns select), so a test sees
exactly what the Hub would receive; nothing else is faked.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

#: A token the tests put in the environment and then look for in every output.
SECRET = "hf_lorawiseTestTokenDoNotPrint0123456789"


class RecordingHfApi:
    """Stands in for HfApi: records create_repo, add_space_variable and upload_folder."""

    instances: list["RecordingHfApi"] = []

    def __init__(self, *args, **kwargs):
        self.calls: list[tuple[str, dict]] = []
        self.sent: dict[str, bytes] = {}
        self.variables: dict[str, str] = {}
        RecordingHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        kind = kwargs.get("repo_type") or "model"
        return f"https://huggingface.co/{kind}s/{repo_id}" if kind != "model" else f"https://huggingface.co/{repo_id}"

    def add_space_variable(self, repo_id, key, value, **kwargs):
        self.calls.append(("add_space_variable", {"repo_id": repo_id, "key": key, "value": value, **kwargs}))
        self.variables[key] = value
        return {}

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None,
                      delete_patterns=None, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "path_in_repo": path_in_repo,
                                             "allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns,
                                             "delete_patterns": delete_patterns, **kwargs}))
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


def install(monkeypatch) -> type[RecordingHfApi]:
    """Replace ``huggingface_hub.HfApi`` with the recorder and put :data:`SECRET` in HF_TOKEN."""
    import huggingface_hub

    RecordingHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return RecordingHfApi
