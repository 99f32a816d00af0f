"""Developer tasks.

`nox` runs what CI runs: lint, typing, the docs build, and the test suite against the
built wheel (`build`). `nox -s tests` runs the suite on the work tree, `nox -s bench` the
loopback benchmark.
"""

from __future__ import annotations

import pathlib
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "docs", "build"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
ROOT = pathlib.Path(__file__).parent
# One test process per core (pytest-xdist): most of the suite waits on loopback sockets,
# timers and child processes, so two processes on two cores halve its wall time.
# `nox -s tests -- -n 0` runs it in one process.
PARALLEL = ("-n", "auto")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff's linter and formatter check."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Mypy --strict over the package, the tests and the never-run typing examples."""
    session.install("-e", ".", *_group("typing"))
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on asyncio and trio (anyio's pytest plugin)."""
    session.install("-e", ".[cli,server,testing]", *_group("tests"))
    session.run("pytest", *PARALLEL, *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site with warnings as errors (`build` runs every example in it)."""
    session.install("-e", ".[cli,server]", *_group("docs"))
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


@nox.session
def build(session: nox.Session) -> None:
    """Build sdist and wheel into dist/, install the wheel, and run the tests against it.

    The tests run from a copy outside the work tree, so they import the installed wheel;
    `tests/test_packaging.py` then also checks what the wheel and the sdist hold.
    """
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--outdir", str(dist))
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    # The docs' FastAPI examples run too; mkdocs itself is not needed here.
    fastapi = [r for r in _group("docs") if r.startswith("fastapi")]
    session.install(f"{wheel}[cli,server,testing]", *_group("tests"), *fastapi)
    session.install("--force-reinstall", "--no-deps", str(wheel))
    copy = pathlib.Path(session.create_tmp()) / "wheel-tests"
    shutil.rmtree(copy, ignore_errors=True)
    for folder in ("tests", "docs", "examples"):
        shutil.copytree(ROOT / folder, copy / folder)
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, copy / name)
    session.chdir(copy)
    env = {"APIFRAME_WHEEL": str(wheel), "APIFRAME_SDIST": str(sdist)}
    session.run("pytest", *PARALLEL, *session.posargs, env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """The loopback benchmark: our client beside raw httpx and aiohttp, in one run."""
    session.install("-e", ".", *_group("bench"))
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def goodput(session: nox.Session) -> None:
    """Goodput at an account's limits: our client beside aiohttp and httpx worker pools."""
    session.install("-e", ".", *_group("bench"))
    session.run("python", "benchmarks/goodput.py", *session.posargs)
