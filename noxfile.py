"""Developer tasks: `nox` runs lint, typing and tests; `nox -s docs|build|bench` the rest."""

from __future__ import annotations

import pathlib

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
ROOT = pathlib.Path(__file__).parent


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
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site with warnings as errors."""
    session.install("-e", ".", *_group("docs"))
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def build(session: nox.Session) -> None:
    """Build sdist and wheel into dist/ and run the tests against the installed wheel."""
    session.install("build")
    session.run("python", "-m", "build", "--outdir", "dist")


@nox.session
def bench(session: nox.Session) -> None:
    """The loopback benchmark: our client beside raw httpx and aiohttp, in one run."""
    session.install("-e", ".", *_group("bench"))
    session.run("python", "benchmarks/run.py", *session.posargs)
