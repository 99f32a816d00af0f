"""Every code example in the docs and the README runs, against the fake APIFRAME.

How the examples are run, so that they stay exactly as a reader copies them:

- A fake APIFRAME is served on a loopback port (`FakeApiframe.serve()`), and
  `APIFRAME_API_KEY` and `APIFRAME_BASE_URL` point at it, as a reader's shell would point
  at the real service. Examples build `AsyncApiframe()` and never mention the fake.
- The ```python blocks of a page run in order in one namespace, as a reader would paste
  them into one interpreter. A block with a top-level `await` runs in the test's event loop
  (on asyncio and on trio); any other block runs in a worker thread, so that it may call
  `asyncio.run()` itself.
- What a page takes as given (the id of a trained model, say) is set up by a hidden
  `<!-- setup ... -->` comment on that page, which the page states in words. The setup code
  alone sees the served fake, as `apiframe_fake`.
- The ```console blocks run their `apiframe` commands through the CLI, with placeholders
  such as `<training id>` filled in with real ids from the fake.
- An HTML comment right before a block changes how it is run:
  `<!-- example: compile-only; why -->` only compiles it (kept for blocks that cannot run
  here, such as one that serves forever), `<!-- example: requires fastapi -->` runs it only
  where that module is installed (each block that needs it says so), and
  `<!-- example: pytest -->` runs the block as a test module, with pytest, and
  `<!-- example: without-key; why -->` runs a console block with no `APIFRAME_*`
  variables set (the CLI then runs on its built-in fake).
- Polls come a hundred times sooner than `PollPolicy` says, so the tests do not sit
  through real waiting; nothing else about the examples changes.
- Tracebacks point at the Markdown file and line of the failing example.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import inspect
import logging
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
import httpx
import pytest

import apiframe_async
import apiframe_async.testing
from apiframe_async.testing import FakeApiframe

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
REFERENCE = sorted((DOCS / "reference").glob("*.md"))

#: Pages whose examples bring their own fake: no served fake, no APIFRAME_* variables.
OWN_FAKE_PAGES = {"testing.md"}

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
MARKER = re.compile(r"<!--\s*example:\s*(?P<what>.*?)\s*-->\s*$")
SETUP = re.compile(r"<!--\s*setup\s*\n(?P<code>.*?)-->", re.DOTALL)
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")
KNOWN_MODES = {"run", "compile-only", "pytest", "without-key"}


@attrs.frozen
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # the line of the block's first line of code, 1-based
    lang: str
    code: str
    marker: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def mode(self) -> str:
        """`run`, `compile-only`, `pytest`, `without-key`, or `requires <module>`."""
        if not self.marker:
            return "run"
        return self.marker.split(";")[0].strip()

    def compiled(self) -> Any:
        """The code, compiled so that tracebacks name the page and line, top-level await allowed."""
        source = "\n" * (self.line - 1) + self.code
        return compile(
            source,
            str(self.page),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with the marker comment just before each."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        lang = info.split()[0].lower() if info else ""
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 2,
                lang="python" if lang in {"py", "python"} else lang,
                code=textwrap.dedent(
                    "\n".join(
                        line.removeprefix(match["indent"]) for line in match["body"].splitlines()
                    )
                ),
                marker=marker["what"] if marker else "",
            )
        )
    return found


def setup_code(page: Path) -> str:
    """The page's hidden setup: what the page tells its reader to have ready."""
    text = page.read_text(encoding="utf-8")
    return "\n".join(textwrap.dedent(m["code"]) for m in SETUP.finditer(text))


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang == "python"]


def console_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang == "console"]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- the environment the examples run in -------------------------------------------------


def _photo(index: int) -> bytes:
    """A tiny file with a JPEG signature; the fake checks the count and the encoding."""
    return b"\xff\xd8\xff\xe0" + bytes(60) + index.to_bytes(2, "big")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding what the docs say a reader has: photos and prompts."""
    me = tmp_path / "me"
    me.mkdir()
    for index in range(12):
        (me / f"photo-{index:02}.jpg").write_bytes(_photo(index))
    (tmp_path / "prompts.txt").write_text(
        "# one prompt per line; TOKMSN stands for the trained subject\n"
        "a realistic portrait of TOKMSN man wearing a navy suit, studio light\n"
        "TOKMSN man hiking in the Alps at sunrise, 35mm photo\n"
        '{"prompt": "TOKMSN man on a beach at golden hour", "aspect_ratio": "16:9"}\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _accept_webhook(request: httpx.Request) -> httpx.Response:
    """Where the fake's webhooks go: the examples' public URLs, which do not exist here."""
    return httpx.Response(200, json={"ok": True})


#: How much sooner polls come than the policy says.
TIME_SCALE = 100


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """Examples set up logging as a program would; the tests after them start without it."""
    ours, root = logging.getLogger("apiframe_async"), logging.getLogger()
    saved = (ours.level, ours.handlers[:], ours.filters[:], root.level, root.handlers[:])
    yield
    ours.setLevel(saved[0])
    ours.handlers[:], ours.filters[:] = saved[1], saved[2]
    root.setLevel(saved[3])
    root.handlers[:] = saved[4]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll a hundred times sooner: the examples' waits take milliseconds, not seconds."""
    interval = apiframe_async.PollPolicy.interval

    def sooner(policy: apiframe_async.PollPolicy, poll_number: int) -> float:
        return interval(policy, poll_number) / TIME_SCALE

    monkeypatch.setattr(apiframe_async.PollPolicy, "interval", sooner)


@pytest.fixture
async def served_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApiframe]:
    """A fake APIFRAME on a loopback port, with the environment pointing at it."""
    hooks = httpx.AsyncClient(transport=httpx.MockTransport(_accept_webhook))
    fake = FakeApiframe(fetches_to_finish=2, webhook_client=hooks)
    async with hooks, fake.serve() as base_url:
        monkeypatch.setenv("APIFRAME_API_KEY", fake.api_key)
        monkeypatch.setenv("APIFRAME_BASE_URL", base_url)
        monkeypatch.setenv("APIFRAME_WEBHOOK_SECRET", "docs-webhook-secret")
        yield fake


def _clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("APIFRAME_API_KEY", "APIFRAME_BASE_URL", "APIFRAME_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)


# -- running the python examples ---------------------------------------------------------


def _missing(block: Block) -> str | None:
    """The module a `requires` block needs that is not installed, if any."""
    if not block.mode.startswith("requires "):
        return None
    for module in block.mode.removeprefix("requires ").replace(",", " ").split():
        if importlib.util.find_spec(module) is None:
            return module
    return None


async def _run_python(block: Block, namespace: dict[str, Any]) -> None:
    code = block.compiled()
    if block.mode in {"compile-only", "pytest"}:  # pytest blocks: `test_pytest_examples_pass`
        return
    if code.co_flags & inspect.CO_COROUTINE:
        await eval(code, namespace)  # noqa: S307 -- the docs' own examples
    else:
        await anyio.to_thread.run_sync(exec, code, namespace)


async def _run_page(page: Path, namespace: dict[str, Any]) -> None:
    """Run the page's setup, then its python examples in order, in `namespace`."""
    setup = setup_code(page)
    if setup:
        await anyio.to_thread.run_sync(exec, compile(setup, f"{page}:<setup>", "exec"), namespace)
    namespace.pop("apiframe_fake", None)
    skipped = []
    for block in python_blocks(page):
        missing = _missing(block)
        if missing is not None:
            block.compiled()
            skipped.append(f"{block.where} needs {missing!r}")
            continue
        await _run_python(block, namespace)
    if skipped:
        pytest.skip("the other examples ran; " + ", ".join(skipped))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p) and p.name not in OWN_FAKE_PAGES],
    ids=page_id,
)
async def test_python_examples_run(page: Path, workdir: Path, served_fake: FakeApiframe) -> None:
    """Each page's python examples run in order, without an error, against the fake."""
    await _run_page(page, {"__name__": "__main__", "apiframe_fake": served_fake})


@pytest.mark.anyio
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p) and p.name in OWN_FAKE_PAGES],
    ids=page_id,
)
async def test_python_examples_with_their_own_fake_run(
    page: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The testing guide's examples run with no APIFRAME_* variables: they bring the fake."""
    _clear_environment(monkeypatch)
    await _run_page(page, {"__name__": "__main__"})


def _pytest_blocks() -> list[Block]:
    return [b for page in PAGES for b in python_blocks(page) if b.mode == "pytest"]


@pytest.mark.parametrize("block", _pytest_blocks(), ids=lambda b: b.where)
def test_pytest_examples_pass(block: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that is a test module passes when pytest runs it, as its reader would run it."""
    _clear_environment(monkeypatch)
    (workdir / "test_example.py").write_text(block.code, encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
    command += ["--rootdir", str(workdir), str(workdir / "test_example.py")]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)  # noqa: S603 -- our own interpreter
    assert done.returncode == 0, f"{block.where}: pytest failed:\n{done.stdout}{done.stderr}"


def test_every_python_example_compiles() -> None:
    """Every python block of every page is valid Python, whether it runs here or not."""
    for page in PAGES:
        for block in python_blocks(page):
            block.compiled()


def test_markers_are_known() -> None:
    """A typo in a marker comment cannot quietly turn an example off."""
    for page in PAGES:
        for block in blocks(page):
            assert block.mode in KNOWN_MODES or block.mode.startswith("requires "), (
                f"{block.where}: unknown marker {block.marker!r}"
            )
            if block.mode == "compile-only":
                assert ";" in block.marker, f"{block.where}: say why it cannot run"


def test_a_wrong_example_fails() -> None:
    """The runner does not swallow errors: a broken example raises where it is."""
    block = Block(page=DOCS / "index.md", line=3, lang="python", code="1 / 0\n")
    with pytest.raises(ZeroDivisionError) as caught:
        anyio.run(_run_python, block, {})
    assert caught.traceback[-1].path == DOCS / "index.md"
    assert caught.traceback[-1].lineno + 1 == 3


# -- running the console examples --------------------------------------------------------


def _commands(block: Block) -> Iterator[str]:
    """The commands of a console block: lines after `$ `, with `\\` continuations joined."""
    command: str | None = None
    for line in block.code.splitlines():
        if command is None and line.startswith("$ "):
            command = line.removeprefix("$ ")
        elif command is not None:
            command += " " + line.strip()
        if command is not None and not command.endswith("\\"):
            yield command.strip()
            command = None
        elif command is not None:
            command = command.removesuffix("\\").rstrip()


def _argv(command: str, ids: dict[str, str]) -> list[str]:
    """The CLI's arguments: prefix stripped, placeholders filled in, globs expanded."""
    for placeholder in PLACEHOLDER.findall(command):
        assert placeholder in ids, f"no value for the placeholder {placeholder}"
        command = command.replace(placeholder, ids[placeholder])
    words = shlex.split(command)
    for prefix in (["apiframe"], ["python", "-m", "apiframe_async"]):
        if words[: len(prefix)] == prefix:
            words = words[len(prefix) :]
            break
    else:
        pytest.fail(f"not an apiframe command: {command}")
    expanded: list[str] = []
    for word in words:
        expanded += sorted(str(p) for p in Path().glob(word)) if "*" in word else [word]
    return expanded


def _invoke(argv: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner  # noqa: PLC0415 -- the `cli` extra

    from apiframe_async._cli import app  # noqa: PLC0415 -- the `cli` extra

    result = CliRunner().invoke(app, argv)
    return result.exit_code, result.output


@pytest.mark.anyio
@pytest.mark.parametrize("page", [p for p in PAGES if console_blocks(p)], ids=page_id)
async def test_console_examples_run(page: Path, workdir: Path, served_fake: FakeApiframe) -> None:
    """Each `apiframe` command shown in a console block runs and exits 0."""
    pytest.importorskip("typer")
    upload_id = served_fake.task_ids("/ai-photo-upload")
    training_id = served_fake.add_trained_model()
    ids = {
        "<training id>": training_id,
        "<upload task id>": served_fake.task_ids("/ai-photo-upload")[len(upload_id)],
        "<task id>": training_id,
    }
    for block in console_blocks(page):
        if block.mode == "compile-only":
            continue
        with pytest.MonkeyPatch.context() as environment:
            if block.mode == "without-key":
                _clear_environment(environment)
            for command in _commands(block):
                argv = _argv(command, ids)
                code, output = await anyio.to_thread.run_sync(_invoke, argv)
                assert code == 0, f"{block.where}: `{command}` exited {code}:\n{output}"


# -- the API reference -------------------------------------------------------------------


def _documented(module: str) -> list[str]:
    pattern = re.compile(rf"^::: {re.escape(module)}\.(?P<name>\w+)\s*$", re.MULTILINE)
    return [
        match["name"]
        for page in REFERENCE
        for match in pattern.finditer(page.read_text(encoding="utf-8"))
    ]


@pytest.mark.parametrize(
    "module", [apiframe_async, apiframe_async.testing], ids=lambda m: m.__name__
)
def test_reference_documents_exactly_the_public_names(module: Any) -> None:
    """The API reference has one entry per name in `__all__`, and no other."""
    documented = _documented(module.__name__)
    assert sorted(documented) == sorted(set(documented)), "documented twice"
    assert set(documented) == set(module.__all__)


def _public_objects() -> Iterator[tuple[str, object]]:
    for module in (apiframe_async, apiframe_async.testing):
        for name in module.__all__:
            obj = getattr(module, name)
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") or attr in {"__init__", "__call__"}:
                        target = member.fget if isinstance(member, property) else member
                        yield f"{module.__name__}.{name}.{attr}", target


def _docstring_examples() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name, obj in _public_objects():
        doc = inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else None
        if not doc or (inspect.isclass(obj) and doc == inspect.getdoc(type(obj))):
            continue
        found.extend(
            (name, textwrap.dedent(match["body"]))
            for match in FENCE.finditer(doc)
            if match["info"].strip() in {"python", "py"}
        )
    return found


@pytest.mark.parametrize(("name", "code"), _docstring_examples(), ids=lambda v: str(v)[:60])
def test_reference_code_examples_compile(name: str, code: str) -> None:
    """The code examples in docstrings, shown in the API reference, are valid Python."""
    compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(recurse=False)
    tests: dict[str, doctest.DocTest] = {}
    for name, obj in _public_objects():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        module = inspect.getmodule(obj)
        for test in finder.find(obj, name, module=module, globs=vars(module or apiframe_async)):
            if test.examples:
                tests.setdefault(test.name, test)
    return list(tests.values())


#: Doctests known to be out of date with the code; strict, so fixing one fails until removed.
STALE_DOCTESTS: dict[str, str] = {}


@pytest.mark.parametrize(
    "test",
    [
        pytest.param(
            t,
            id=t.name,
            marks=[pytest.mark.xfail(reason=STALE_DOCTESTS[t.name], strict=True)]
            if t.name in STALE_DOCTESTS
            else [],
        )
        for t in _doctests()
    ],
)
def test_reference_doctests_pass(test: doctest.DocTest) -> None:
    """The `>>>` examples in docstrings show what the code really does."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=False)
    assert result.failed == 0, "".join(out)


# -- the CLI reference -------------------------------------------------------------------


def _cli_sections() -> dict[str, str]:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## apiframe ([a-z-]+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _cli_commands() -> dict[str, set[str]]:
    pytest.importorskip("typer")
    import typer.main  # noqa: PLC0415 -- the `cli` extra

    from apiframe_async._cli import app  # noqa: PLC0415 -- the `cli` extra

    group = typer.main.get_command(app)
    commands: dict[str, set[str]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        options: set[str] = set()
        for param in command.params:
            options.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        commands[name] = options
    return commands


def test_cli_reference_covers_every_command_and_option() -> None:
    """Each command has a section whose table and examples name all its options, no other."""
    sections = _cli_sections()
    commands = _cli_commands()
    assert set(sections) == set(commands)
    for name, options in commands.items():
        own_lines = [
            line
            for line in sections[name].splitlines()
            if line.startswith(("|", f"$ apiframe {name} "))
        ]
        mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", "\n".join(own_lines)))
        assert options - {"--help"} <= mentioned, f"{name}: undocumented options"
        assert mentioned <= options, f"{name}: documents options it does not have"


def test_cli_reference_covers_the_options_before_the_command() -> None:
    """The options of `apiframe` itself (`--version`, ...) are in the page's opening table."""
    pytest.importorskip("typer")
    import typer.main  # noqa: PLC0415 -- the `cli` extra

    from apiframe_async._cli import app  # noqa: PLC0415 -- the `cli` extra

    group = typer.main.get_command(app)
    options = {o for param in group.params for o in param.opts if o.startswith("--")}
    intro = (DOCS / "cli.md").read_text(encoding="utf-8").split("\n## apiframe ", 1)[0]
    table = "\n".join(line for line in intro.splitlines() if line.startswith("|"))
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", table))
    assert options - {"--help"} == mentioned - {"--api-key", "--base-url"}


def test_docs_mention_no_missing_public_name() -> None:
    """Names shown as `apiframe_async.X` in the guides exist."""
    for page in PAGES:
        for name in re.findall(r"apiframe_async\.(\w+)", page.read_text(encoding="utf-8")):
            if name in {"testing", "__version__"} or name.startswith("_"):
                continue
            assert hasattr(apiframe_async, name), f"{page.name}: apiframe_async.{name}"


def test_error_tree_in_the_guide_is_the_real_one() -> None:
    """The tree drawn in the errors guide has every error, each under its real base."""
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    tree = re.search(r"```text\n(ApiframeError\n.*?)```", text, re.DOTALL)
    assert tree is not None
    parents: list[type] = []
    drawn = set()
    for line in tree[1].splitlines():
        match = re.match(r"(?P<prefix>[│├└─ ]*)(?P<name>\w+)(?: \(also (?P<also>\w+)\))?", line)
        assert match is not None, line
        depth = len(match["prefix"]) // 4
        error = getattr(apiframe_async, match["name"])
        del parents[depth:]
        if parents:
            assert parents[-1] in error.__bases__, f"{error.__name__} is not under {parents[-1]}"
        if match["also"]:
            assert match["also"] in {base.__name__ for base in error.__bases__}, line
        parents.append(error)
        drawn.add(error)
    errors = {
        obj
        for name in apiframe_async.__all__
        if isinstance(obj := getattr(apiframe_async, name), type)
        and issubclass(obj, apiframe_async.ApiframeError)
    }
    assert drawn == errors


#: The longest line of code that shows without scrolling, in the site's code blocks.
PAGE_WIDTH = 80


def test_examples_fit_the_page() -> None:
    """No line of a code block in the guides needs sideways scrolling to be read."""
    for page in sorted(DOCS.glob("*.md")):
        for block in blocks(page):
            for offset, line in enumerate(block.code.splitlines()):
                where = f"{page.name}:{block.line + offset}"
                assert len(line) <= PAGE_WIDTH, f"{where}: {len(line)} characters"
