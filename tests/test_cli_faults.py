"""Every expected failure of a command is one ``error:`` line and exit status 2; a closed pipe ends quietly.

Cases: a dataset argument that is neither a folder nor a Hub repo id (decided without any
network call: a real listening socket stands in for the Hub and must see no connection); a
well-formed repo id whose Hub cannot be reached (a closed local port: huggingface_hub would
retry for 23 s, the command gives up in about a second); the network failing during ``push``
and ``leaderboard deploy`` (``HfApi`` replaced at the network boundary by one that raises the
real connection errors of httpx2, httpx, requests and huggingface_hub); an ``OSError`` of the
environment (disk full) from any command; output into a pipe whose reader has gone.  A bug
still shows its traceback (tests/test_cli.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from fake_hub import SECRET, RecordingHfApi, install
from lora_wise.builder.write import BUILD_DIR
from lora_wise.cli import main
from lora_wise.cli.main import EXIT_BROKEN_PIPE


def cli(*args, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_wise.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def hub_at(monkeypatch):
    """Point huggingface_hub and datasets at a local address, online: ``hub_at(port)`` returns the env."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def env(port: int) -> dict:
        return dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN=SECRET)
    return env


@pytest.fixture
def listening_hub():
    """A real socket listening where the Hub is said to be; ``connections()`` counts who came."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)

    def connections() -> int:
        count = 0
        while True:
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    yield server.getsockname()[1], connections
    server.close()


@pytest.fixture
def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


# ----------------------------------------------------------------------------- dataset arguments

@pytest.mark.parametrize("args", [
    ["baseline", "dsire", "{arg}", "mini_low_r8"],
    ["evaluate", "dsire", "{arg}", "mini_low_r8"],
    ["leaderboard", "add-baselines", "{arg}"],
    ["submit", "{csv}", "--config", "mini_low_r8", "--method", "m", "--dataset", "{arg}"],
])
def test_a_dataset_that_is_neither_a_folder_nor_a_repo_id_is_refused_with_no_hub_call(args, hub_at, listening_hub,
                                                                                      tmp_path):
    port, connections = listening_hub
    csv = tmp_path / "predictions.csv"
    csv.write_text("model_id,prediction\nm,1\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for arg, says in [("no-such-folder", "no-such-folder"), (str(a_file), "is a file")]:
        start = time.monotonic()
        result = cli(*[a.format(arg=arg, csv=csv) for a in args], env=hub_at(port), cwd=str(tmp_path))
        line = one_line(result)
        assert says in line and "Hub" in line and "repo id" in line, line  # names what it takes
        assert time.monotonic() - start < 60
    assert connections() == 0  # decided here: nothing asked the Hub


@pytest.mark.parametrize("args", [
    ["baseline", "dsire", "nobody/nothing", "mini_low_r8"],
    ["leaderboard", "add-baselines", "nobody/nothing"],
    ["import-official", "nobody/nothing", "{tmp}/out"],
    ["leaderboard", "show", "--results-repo", "nobody/results"],
])
def test_a_repo_id_whose_hub_cannot_be_reached_fails_fast_in_one_line(args, hub_at, closed_port, tmp_path):
    start = time.monotonic()
    line = one_line(cli(*[a.format(tmp=tmp_path) for a in args], env=hub_at(closed_port)))
    took = time.monotonic() - start
    assert "could not reach the Hugging Face Hub" in line and "nobody/" in line and "check your connection" in line
    assert took < 15, f"{took:.1f} s: huggingface_hub's retries (23 s) were not cut short"
    assert SECRET not in line


# ----------------------------------------------------------------------------- the network during push and deploy

def _connection_errors():
    import httpx
    import httpx2
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return [
        httpx2.ConnectError("[Errno -2] Name or service not known", request=request),
        httpx2.ReadTimeout("The read operation timed out", request=request),
        httpx.ConnectError("[Errno 111] Connection refused"),
        requests.exceptions.ConnectionError("Max retries exceeded (NewConnectionError)"),
        OfflineModeIsEnabled("cannot connect to huggingface.co: [Errno 101] Network is unreachable"),
        LocalEntryNotFoundError("cannot find the requested files in the local cache"),
        ConnectionResetError(104, "Connection reset by peer"),
    ]


@pytest.fixture
def built_folder(synthetic_benchmark, tmp_path):
    folder = tmp_path / "lora-wise"
    shutil.copytree(synthetic_benchmark, folder)
    (folder / BUILD_DIR / "mini_low_r8").mkdir(parents=True)
    return folder


@pytest.mark.parametrize("error", _connection_errors(), ids=lambda e: type(e).__module__ + "." + type(e).__name__)
@pytest.mark.parametrize("command", ["push", "deploy"])
def test_the_network_failing_during_push_or_deploy_is_one_line(command, error, built_folder, monkeypatch, tmp_path,
                                                               capsys):
    install(monkeypatch)

    def fail(self, **kwargs):
        raise error

    monkeypatch.setattr(RecordingHfApi, "upload_folder", fail)
    if command == "push":
        argv, action = ["push", str(built_folder), "me/LoRA-WiSE"], "upload to me/LoRA-WiSE"
    else:
        argv = ["leaderboard", "deploy", "me/board", "--dataset", "me/LoRA-WiSE", "--results-repo", "me/results",
                "--out", str(tmp_path / "space")]
        action = "deploy the Space me/board"
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not reach the Hugging Face Hub to {action}"), err
    assert "check your connection" in err and SECRET not in err


# ----------------------------------------------------------------------------- the environment, the pipe

def _run_with(patch: str, *args) -> subprocess.CompletedProcess:
    code = f"import sys\n{patch}\nfrom lora_wise.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("raised,says", [
    ("OSError(28, 'No space left on device')", "no space left on the device, errno ENOSPC"),
    ("OSError(122, 'Disk quota exceeded')", "disk quota exceeded, errno EDQUOT"),
    ("OSError(27, 'File too large')", "file-size limit"),
    ("OSError(30, 'Read-only file system', '/data/x')", "/data/x: the file system is read-only, errno EROFS"),
    ("PermissionError(13, 'Permission denied', '/data/x')", "/data/x: permission denied, errno EACCES"),
])
def test_an_os_error_of_the_environment_is_one_line(raised, says):
    patch = ("import lora_wise.configs as c\n"
             f"def fail(*a, **k): raise {raised}\n"
             "c.iter_configs = fail")
    result = _run_with(patch, "configs")
    line = one_line(result)
    assert line.startswith("error: cannot run `lora-wise configs` (") and says in line, line


@pytest.mark.parametrize("raised", ["FileNotFoundError(2, 'No such file or directory', '/x')",
                                    "PermissionError(13, 'Permission denied')", "OSError('no errno')"])
def test_other_os_errors_are_bugs_and_keep_their_traceback(raised):
    """A missing file the code expected, or a refusal that names no path, is no environment failure to hide."""
    patch = ("import lora_wise.configs as c\n"
             f"def fail(*a, **k): raise {raised}\n"
             "c.iter_configs = fail")
    result = _run_with(patch, "configs")
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "error: " not in result.stderr


@pytest.mark.parametrize("args", [["configs", "--json"], ["configs"], ["leaderboard", "show"]])
def test_output_into_a_closed_pipe_ends_quietly(args):
    """The reader is gone before the command writes (``lora-wise configs --json | head -n 0``, say)."""
    process = subprocess.Popen([sys.executable, "-m", "lora_wise.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE == 141
    assert err == ""


def test_a_pipe_into_head_ends_quietly(tmp_path):
    if not shutil.which("head"):
        pytest.skip("no head here")
    command = f"'{sys.executable}' -m lora_wise.cli configs --json | head -n 1"
    result = subprocess.run(["bash", "-c", f"{command}; echo \"status=${{PIPESTATUS[0]}}\" >&2"],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout == "[\n"
    status = result.stderr.strip().splitlines()
    assert status[-1] in ("status=0", "status=141") and len(status) == 1, result.stderr  # nothing but the status
