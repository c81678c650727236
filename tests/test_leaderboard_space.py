"""The leaderboard as a Hub Space: the assembled folder, its deployment, and seeding on start.

The assembled folder is imported in a fresh interpreter the way a Space runs it (its own
folder as the working directory, no PYTHONPATH), and by path from elsewhere, so the tests see
the vendored packages win over this checkout's editable install.  Deployment goes through ``huggingface_hub.HfApi``
replaced at the network boundary by a recorder that checks what an upload would send.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from fake_hub import SECRET, install
from module_graph import ModuleGraph
from lora_wise.leaderboard.baselines import REFERENCE_METHODS, SEED_ENV, seed_baselines
from lora_wise.leaderboard.space import LEFT_OUT, assemble_space, deploy_space, space_requirements
from lora_wise.leaderboard.store import SQLiteStore, StoreError
from lora_wise.cli import main
from lora_wise.errors import RepoIdError

ROOT = Path(__file__).resolve().parents[1]


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, sep, _ = text[4:].partition("\n---\n")
    assert sep, "the front matter is not closed"
    return yaml.safe_load(head)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return assemble_space(tmp_path_factory.mktemp("space") / "lora-wise-leaderboard",
                          dataset="me/LoRA-WiSE", results_repo="me/lora-wise-results")


def test_card_front_matter_is_a_gradio_space_for_the_installed_gradio(space):
    meta = front_matter(space / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == version("gradio")
    assert meta["app_file"] == "app.py" and (space / meta["app_file"]).is_file()
    assert meta["license"] == "apache-2.0" and meta["title"]
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "me/LoRA-WiSE" in meta["datasets"]


def test_requirements_are_the_leaderboard_extra_and_core_pinned_as_installed(space):
    import configparser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line for line in (space / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == space_requirements()
    pinned = {canonicalize_name(Requirement(line).name): str(Requirement(line).specifier) for line in lines}
    # what setup.cfg declares (core + the leaderboard extra) and nothing else: no torch, no builder deps
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = [r for r in (cfg["options"]["install_requires"] + "\n" + cfg["options.extras_require"]["leaderboard"])
                .splitlines() if r.strip()]
    assert set(pinned) == {canonicalize_name(Requirement(r).name) for r in declared}
    assert "torch" not in pinned
    for name, spec in pinned.items():
        assert spec == f"=={version(name)}"


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_space_carries_the_package_the_app_needs_and_nothing_else(space):
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "lora_wise", "requirements.txt"]
    library = {rel for rel in _files(ROOT / "lora_wise") if rel.split("/")[0] not in LEFT_OUT}
    board = {f"leaderboard/{rel}" for rel in _files(ROOT / "leaderboard")}
    assert _files(space / "lora_wise") == library | board
    assert not (space / "lora_wise" / "builder").exists() and not (space / "lora_wise" / "cli").exists()


def test_the_space_imports_only_what_it_carries(space):
    """Every import of a lora_wise module in the copied package -- lazy ones included -- finds it in the copy."""
    graph = ModuleGraph.read({"lora_wise": space / "lora_wise"})
    assert "lora_wise.leaderboard.app" in graph.files
    missing = [f"{imp.source} (line {imp.line}) imports {imp.written}" for imp in graph.imports
               if imp.missing and imp.written.split(".")[0] == "lora_wise"]
    assert not missing, "the Space would fail on: " + "; ".join(missing)
    assert (space / "lora_wise" / "resources" / "paper_results.csv").is_file()
    assert not list(space.rglob("__pycache__"))
    assert str(ROOT) not in "".join(p.read_text() for p in (space / "README.md", space / "app.py"))


@pytest.mark.parametrize("how", ["from its folder", "by path from elsewhere"])
def test_space_app_imports_its_own_copies_and_builds_without_launching(how, space, synthetic_benchmark, tmp_path):
    """Import ``app`` as a Space's interpreter would: demo built, nothing launched, the vendored code used.

    A Space runs ``python app.py`` in its folder; loading app.py by path from another directory
    shows that app.py itself puts its folder first (this checkout's editable install is on the path too).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORA_WISE_", "PYTHON"))}
    env.update(LORA_WISE_DATASET=str(synthetic_benchmark), LORA_WISE_LEADERBOARD_DB=str(tmp_path / "board.sqlite"),
               LORA_WISE_CACHE=str(tmp_path / "cache"), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")  # the folder stays as built
    if how == "from its folder":
        cwd, load = space, "import app"
    else:
        cwd = tmp_path
        load = ("import importlib.util; spec = importlib.util.spec_from_file_location('app', %r);"
                "app = importlib.util.module_from_spec(spec); spec.loader.exec_module(app)" % str(space / "app.py"))
    probe = (f"{load}; import json, sys, lora_wise.leaderboard, lora_wise, gradio;"
             "print(json.dumps({'leaderboard': lora_wise.leaderboard.__file__, 'lora_wise': lora_wise.__file__,"
             " 'app': app.__file__, 'blocks': isinstance(app.demo, gradio.Blocks), 'running': app.demo.is_running,"
             " 'modules': sorted({m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')"
             " or m.startswith('lora_wise.builder')})}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for package in ("leaderboard", "lora_wise"):
        assert Path(found[package]).resolve().is_relative_to(space.resolve()), found
    assert Path(found["app"]).resolve() == (space / "app.py").resolve()
    assert found["blocks"] and not found["running"]
    assert found["modules"] == []  # torch and the builder are not needed on the Space


@pytest.fixture
def fake_hub(monkeypatch):
    return install(monkeypatch)


def test_deploy_creates_the_space_sets_its_variables_and_uploads_the_folder(fake_hub, tmp_path, capsys):
    out = tmp_path / "space"
    assert main(["leaderboard", "deploy", "me/lora-wise-leaderboard", "--dataset", "me/LoRA-WiSE",
                 "--results-repo", "me/lora-wise-results", "--private", "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert SECRET not in printed + err
    assert "https://huggingface.co/spaces/me/lora-wise-leaderboard" in printed and "HF_TOKEN secret" in printed
    (api,) = fake_hub.instances
    names = [name for name, _ in api.calls]
    # the variables are in place before the upload starts the Space's build
    assert names == ["create_repo", "add_space_variable", "add_space_variable", "add_space_variable", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "me/lora-wise-leaderboard", "repo_type": "space", "space_sdk": "gradio",
                               "private": True, "exist_ok": True}
    assert api.variables == {"LORA_WISE_DATASET": "me/LoRA-WiSE", "LORA_WISE_LEADERBOARD_REPO": "me/lora-wise-results",
                             SEED_ENV: "1"}
    assert all(kw["repo_id"] == "me/lora-wise-leaderboard" for _, kw in api.calls)
    upload = api.calls[-1][1]
    assert upload["repo_type"] == "space" and upload["path_in_repo"] is None
    assert upload["delete_patterns"] == ["lora_wise/*"]  # stale modules go, nothing else
    assert SECRET not in repr(api.calls)
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert api.sent == local  # the assembled folder, byte for byte
    assert {"README.md", "app.py", "requirements.txt", "lora_wise/leaderboard/app.py",
            "lora_wise/configs.py"} <= set(api.sent)
    assert not any(name.startswith(("builder/", "lora_wise/builder/")) for name in api.sent)
    assert not any(SECRET.encode() in data for data in api.sent.values())
    assert "sdk: gradio" in api.sent["README.md"].decode()


def test_deploy_to_a_temporary_folder_leaves_nothing_behind(fake_hub, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = deploy_space("me/board", "me/LoRA-WiSE", "me/results", api=fake_hub())
    assert not result.folder.exists() and "app.py" in result.files
    assert set(fake_hub.instances[0].sent) == set(result.files)
    assert list(tmp_path.iterdir()) == []


def test_dry_run_lists_the_files_and_calls_nothing(monkeypatch, tmp_path, capsys):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise AssertionError("a dry run makes no Hub call")

    monkeypatch.setattr(huggingface_hub, "HfApi", unreachable)
    monkeypatch.setattr(huggingface_hub, "get_token", unreachable)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["leaderboard", "deploy", "me/board", "--dataset", "me/LoRA-WiSE", "--results-repo", "me/results",
                 "--dry-run", "--out", str(tmp_path / "space")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dry run, nothing uploaded")
    for name in ("README.md", "app.py", "requirements.txt", "lora_wise/leaderboard/app.py", "lora_wise/data.py"):
        assert f"  {name}\n" in printed
    assert f"{SEED_ENV}=1" in printed and SECRET not in printed
    assert (tmp_path / "space" / "app.py").is_file()


def test_bad_ids_and_foreign_folders_are_refused_before_any_call(fake_hub, tmp_path, capsys):
    with pytest.raises(RepoIdError, match="Space id 'board' is not a Hub repo id"):
        deploy_space("board", "me/LoRA-WiSE", "me/results")
    with pytest.raises(RepoIdError, match="dataset 'lora-wise' is not a Hub repo id"):
        deploy_space("me/board", "lora-wise", "me/results")
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["leaderboard", "deploy", "me/board", "--dataset", "me/LoRA-WiSE", "--results-repo", "me/results",
                 "--out", str(foreign)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert fake_hub.instances == []


def test_no_token_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise AssertionError("no Hub call may happen without a token")

    monkeypatch.setattr(huggingface_hub, "HfApi", unreachable)
    assert main(["leaderboard", "deploy", "me/board", "--dataset", "me/LoRA-WiSE", "--results-repo", "me/r"]) == 2
    assert "hf auth login" in capsys.readouterr().err


# --------------------------------------------------------------------------- seeding on start

def _references(store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in store.entries(split="test"):
        if entry.reference:
            out.setdefault(entry.config, []).append(entry.method)
    return {config: sorted(methods) for config, methods in out.items()}


def test_app_seeds_the_reference_baselines_only_when_asked(synthetic_benchmark, tmp_path, monkeypatch):
    from lora_wise.leaderboard.app import build_app

    store = SQLiteStore(tmp_path / "board.sqlite")
    monkeypatch.delenv(SEED_ENV, raising=False)
    build_app(store=store, dataset=synthetic_benchmark)
    assert store.entries() == []  # `lora-wise leaderboard serve` as before

    monkeypatch.setenv(SEED_ENV, "1")
    demo = build_app(store=store, dataset=synthetic_benchmark)
    both = sorted(REFERENCE_METHODS.values())
    assert _references(store) == {"mini_low_r8": both, "mini_medium_r8": both}
    table = next(b for b in demo.blocks.values() if b.elem_id == "board-mini_medium_r8")
    assert len(table.value["data"]) == 2  # the page shows what was just seeded

    build_app(store=store, dataset=synthetic_benchmark)  # a restart adds nothing
    assert len(store.entries()) == 4


def test_seeding_fills_only_configs_without_references(synthetic_benchmark, tmp_path):
    from lora_wise.leaderboard.baselines import add_baselines

    store = SQLiteStore(tmp_path / "board.sqlite")
    add_baselines(synthetic_benchmark, configs=["mini_low_r8"], store=store)
    before = {e.id for e in store.entries()}
    added = seed_baselines(synthetic_benchmark, store)
    assert {r.entry.config for r in added} == {"mini_medium_r8"} and len(added) == 2
    assert before <= {e.id for e in store.entries()} and len(store.entries()) == 4


def test_a_failure_to_seed_is_logged_and_the_app_starts(synthetic_benchmark, tmp_path, monkeypatch, caplog):
    from lora_wise.leaderboard.app import build_app

    class ReadOnlyStore(SQLiteStore):
        def append(self, entry):
            raise StoreError("cannot store the entry in hf://datasets/me/results (401)")

    store = ReadOnlyStore(tmp_path / "board.sqlite")
    monkeypatch.setenv(SEED_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="lora_wise.leaderboard.baselines"):
        demo = build_app(store=store, dataset=synthetic_benchmark)
    assert demo is not None and store.entries() == []
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 2 and all("401" in m and "add-baselines" in m for m in failures)
    assert any("mini_low_r8" in m for m in failures) and any("mini_medium_r8" in m for m in failures)
