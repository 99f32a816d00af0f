"""The CLI in a terminal: literal text, no escapes, no tracebacks; its fake remembers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import apiframe_async
from apiframe_async import _cli

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
HOSTILE = "key refused [/red] [bold]x[/] \x1b[31mred\x1b[0m \x1b]0;pwned\x07 \u202edesrever"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APIFRAME_", "FORCE_COLOR", "PY_COLORS"))
    }
    env |= {"APIFRAME_FAKE_STATE": str(tmp_path / "state.json"), "COLUMNS": "200"}
    return env | extra


def apiframe(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m apiframe_async ARGS` and check its exit code and that nothing leaked."""
    result = subprocess.run(  # noqa: S603 -- our own CLI, with this interpreter
        [sys.executable, "-m", "apiframe_async", *args],
        env=env or _env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == code, result.stderr
    _assert_clean(result.stdout + result.stderr)
    return result


def _assert_clean(output: str) -> None:
    assert "Traceback" not in output
    for char in ("\x1b", "\x07", "\u202e"):
        assert char not in output


def test_a_long_line_stays_one_line_on_a_narrow_terminal(tmp_path: Path) -> None:
    """A script reading our output gets one line per message, whatever the width."""
    result = apiframe(
        tmp_path,
        *("account", "--api-key", "k", "--base-url", "api.apiframe.pro"),
        env=_env(tmp_path, COLUMNS="40"),
        code=1,
    )
    assert result.stderr.count("\n") == 1, result.stderr
    assert "(allowed: https://host[/path])" in result.stderr


def test_a_base_url_with_markup_like_text_is_printed_literally(tmp_path: Path) -> None:
    """`--base-url api.apiframe.pro`: one error line with `[/path]` intact, no MarkupError."""
    result = apiframe(
        tmp_path, "account", "--api-key", "k", "--base-url", "api.apiframe.pro", code=1
    )
    assert result.stderr.strip() == (
        "error: base_url: 'api.apiframe.pro' is not an http(s) URL (allowed: https://host[/path])"
    )


def test_the_serve_fake_hint_keeps_its_extra(tmp_path: Path) -> None:
    """Without uvicorn, the hint says `pip install 'apiframe-async[server]'` in full."""
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from apiframe_async._cli import main\n"
        "sys.argv = ['apiframe', 'serve-fake', '--port', '0']\n"
        "main()\n"
    )
    result = subprocess.run(  # noqa: S603 -- this interpreter, our own code
        [sys.executable, "-c", code],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'apiframe-async[server]'" in result.stderr
    _assert_clean(result.stderr)


class _Hostile(BaseHTTPRequestHandler):
    """A server whose error text holds rich markup and terminal escape sequences."""

    def do_GET(self) -> None:
        body = json.dumps({"message": HOSTILE}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_server_text_with_markup_and_escapes_is_shown_literally(
    tmp_path: Path, hostile_server: str
) -> None:
    """`[/red]` stays text (no crash) and escape sequences are shown escaped, not run."""
    result = apiframe(
        tmp_path, "account", "--api-key", "sk-test-9a8b7c", "--base-url", hostile_server, code=1
    )
    line = result.stderr.strip()
    assert line.startswith("error: 401 key refused [/red] [bold]x[/] \\x1b[31mred\\x1b[0m")
    assert "\\x1b]0;pwned\\x07" in line
    assert "\\u202edesrever" in line


def test_a_missing_prompts_file_is_one_line(tmp_path: Path) -> None:
    """A prompts file that is not there: one error line naming it literally."""
    result = apiframe(tmp_path, "generate-many", "[/red]prompts.txt", code=1)
    assert result.stderr.startswith("error: [Errno 2] No such file or directory")
    assert "[/red]prompts.txt" in result.stderr


def test_typers_own_errors_keep_their_message_and_code(tmp_path: Path) -> None:
    """A usage error raised inside a command is typer's: exit 2, its message, nothing more."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("TOKMSN man\n")
    result = apiframe(tmp_path, "generate-many", str(prompts), "--api-key", "sk-x-123", code=2)
    assert "--training-id is required with a real API key" in result.stderr
    assert "unexpected" not in result.stderr


def test_an_exit_code_from_a_command_passes_through(capsys: pytest.CaptureFixture[str]) -> None:
    """`typer.Exit(n)` raised inside a command's async body is its exit code, no error line."""

    async def main() -> None:
        raise typer.Exit(3)

    with pytest.raises(typer.Exit) as caught:
        _cli._run(main)
    assert caught.value.exit_code == 3
    assert capsys.readouterr().err == ""


def test_version(tmp_path: Path) -> None:
    """`apiframe --version` prints the package version."""
    result = apiframe(tmp_path, "--version")
    assert result.stdout.strip() == f"apiframe-async {apiframe_async.__version__}"


def test_ctrl_c_while_prompts_are_read_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C while stdin is still open: exit 130, one plain line, nothing sent."""
    process = subprocess.Popen(
        [sys.executable, "-m", "apiframe_async", "generate-many", "-", "--journal", "j.db"],
        env=_env(tmp_path),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write("TOKMSN man one\n")
    process.stdin.flush()  # stdin stays open: every prompt is read before the job starts
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "nothing was sent" in stderr
    assert not (tmp_path / "j.db").exists()
    _assert_clean(stderr)


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a bug of ours ends in one `error:` line and exit 1, not a traceback."""

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise TypeError("something odd")

    monkeypatch.setattr(apiframe_async.AsyncApiframe, "account", broken)
    result = CliRunner().invoke(_cli.app, ["account"])
    assert result.exit_code == 1
    assert "error: unexpected TypeError: something odd" in result.output
    assert "Traceback" not in result.output


# -- the built-in fake keeps its state between commands -----------------------------------


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_upload_train_wait_generate_chain_on_the_fake(tmp_path: Path) -> None:
    """Each command is a new process; the fake carries tasks and credits from one to the next."""
    photos = []
    for index in range(10):
        photo = tmp_path / f"me-{index}.png"
        photo.write_bytes(PNG + bytes([index]))
        photos.append(photo.name)
    upload = _json(
        apiframe(tmp_path, "upload", *photos, "--ethnicity", "white", "--gender", "male")
    )
    assert upload["status"] == "finished"
    training = _json(apiframe(tmp_path, "train", str(upload["task_id"]), "--no-wait"))
    trained = _json(apiframe(tmp_path, "wait", str(training["task_id"])))
    assert trained["status"] == "finished"
    generation = _json(
        apiframe(tmp_path, "generate", "TOKMSN man", "--training-id", str(trained["task_id"]))
    )
    assert generation["image_urls"]
    account = _json(apiframe(tmp_path, "account"))
    assert account["credits"] == 10_000 - 2 - 4 * 10 - 1
    state = tmp_path / "state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    kinds = [task["kind"] for task in json.loads(state.read_text())["tasks"]]
    # One demo model (made once, by the first command), then the user's own tasks.
    demo = ["ai-photo-upload", "ai-photo-train"]
    assert kinds == [*demo, "ai-photo-upload", "ai-photo-train", "ai-photo-generate"]


def test_the_state_can_be_pointed_elsewhere_and_reset(tmp_path: Path) -> None:
    """`--fake-state` beats `$APIFRAME_FAKE_STATE`; `reset-fake` starts afresh."""
    other = tmp_path / "elsewhere" / "fake.json"
    apiframe(tmp_path, "--fake-state", str(other), "generate", "TOKMSN man")
    assert other.is_file()
    assert not (tmp_path / "state.json").exists()
    task_ids = [t["task_id"] for t in json.loads(other.read_text())["tasks"]]
    fetched = _json(apiframe(tmp_path, "--fake-state", str(other), "fetch", task_ids[-1]))
    assert fetched["missing"] == []
    reset = apiframe(tmp_path, "--fake-state", str(other), "reset-fake")
    assert "reset" in reset.stderr
    assert not other.exists()
    fetched = _json(apiframe(tmp_path, "--fake-state", str(other), "fetch", task_ids[-1]))
    assert fetched["missing"] == [task_ids[-1]]


def test_an_unusable_state_is_replaced_with_a_warning(tmp_path: Path) -> None:
    """A damaged state file is one warning line, then a fresh fake."""
    (tmp_path / "state.json").write_text("{not json")
    result = apiframe(tmp_path, "account")
    assert "unusable" in result.stderr
    assert _json(result)["credits"] == 10_000
