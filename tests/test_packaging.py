"""What ships: the wheel and the sdist hold what they should, and nothing else.

The checks of built files run when `nox -s build` gives their paths in `APIFRAME_WHEEL` and
`APIFRAME_SDIST`; it runs the whole suite against the installed wheel, from a copy of the
tests outside the work tree. The other checks run everywhere.
"""

from __future__ import annotations

import email
import email.message
import importlib.metadata
import importlib.resources
import json
import os
import re
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import apiframe_async

WHEEL = os.environ.get("APIFRAME_WHEEL")
SDIST = os.environ.get("APIFRAME_SDIST")
ROOT = Path(__file__).resolve().parents[1]

needs_wheel = pytest.mark.skipif(not WHEEL, reason="set APIFRAME_WHEEL (nox -s build does)")
needs_sdist = pytest.mark.skipif(not SDIST, reason="set APIFRAME_SDIST (nox -s build does)")


def test_py_typed_ships_with_the_package() -> None:
    """Type checkers read the package's annotations: `py.typed` is installed beside it."""
    assert importlib.resources.files("apiframe_async").joinpath("py.typed").is_file()


def test_changelog_keeps_a_changelog() -> None:
    """CHANGELOG.md follows Keep a Changelog: Unreleased first, known section names."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/" in text
    releases = re.findall(r"^## \[(.+?)\]", text, flags=re.MULTILINE)
    assert releases
    assert releases[0] == "Unreleased"
    kinds = set(re.findall(r"^### (.+)$", text, flags=re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


# -- the wheel ---------------------------------------------------------------------------


def _wheel() -> zipfile.ZipFile:
    assert WHEEL is not None
    return zipfile.ZipFile(WHEEL)


def _dist_info(names: list[str]) -> str:
    (folder,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    return folder


def _metadata() -> email.message.Message:
    with _wheel() as wheel:
        names = wheel.namelist()
        return email.message_from_bytes(wheel.read(f"{_dist_info(names)}/METADATA"))


@needs_wheel
def test_wheel_holds_the_package_and_its_metadata_only() -> None:
    """No tests, docs, caches or stray files: the package, `py.typed`, the metadata."""
    with _wheel() as wheel:
        names = wheel.namelist()
    dist_info = _dist_info(names)
    stray = [n for n in names if not n.startswith(("apiframe_async/", f"{dist_info}/"))]
    assert stray == []
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    package = {n for n in names if n.startswith("apiframe_async/")}
    assert {"apiframe_async/__init__.py", "apiframe_async/py.typed"} <= package
    assert "apiframe_async/testing/__init__.py" in package
    assert all(n.endswith((".py", "py.typed")) for n in package), sorted(package)
    assert f"{dist_info}/licenses/LICENSE" in names


@needs_wheel
def test_wheel_metadata_is_complete() -> None:
    """License, Python versions, classifiers, URLs and the four extras are declared."""
    meta = _metadata()
    assert meta["Name"] == "apiframe-async"
    assert meta["Version"] == apiframe_async.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Summary"]
    assert meta["Description-Content-Type"] == "text/markdown"
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert {"Framework :: AsyncIO", "Framework :: Trio"} <= set(classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Documentation", "Changelog", "Source"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert set(meta.get_all("Provides-Extra") or []) == {"cli", "server", "testing", "otel"}
    requires = meta.get_all("Requires-Dist") or []
    for extra in ("cli", "server", "testing", "otel"):
        assert any(f"extra == '{extra}'" in r or f'extra == "{extra}"' in r for r in requires)
    otel = [r for r in requires if "otel" in r.split(";", 1)[-1]]
    assert [re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in otel] == ["opentelemetry-api"]
    assert {"anyio", "attrs", "cattrs", "httpx", "tenacity"} <= {
        re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r
    }


@needs_wheel
def test_wheel_declares_the_command_and_the_pytest_plugin() -> None:
    """The `apiframe` command and the `apiframe_fake` fixture's plugin are entry points."""
    with _wheel() as wheel:
        names = wheel.namelist()
        entry_points = wheel.read(f"{_dist_info(names)}/entry_points.txt").decode()
    assert re.search(r"^apiframe = apiframe_async\._cli:main$", entry_points, re.MULTILINE)
    assert "[pytest11]" in entry_points
    assert "apiframe_async.testing._pytest_plugin" in entry_points


@needs_wheel
def test_the_tests_run_against_the_installed_wheel() -> None:
    """This run imports the package installed from the wheel, not a work tree."""
    installed = Path(sysconfig.get_paths()["purelib"]).resolve()
    package = Path(apiframe_async.__file__).resolve()
    assert package.is_relative_to(installed), package
    assert not package.is_relative_to(ROOT), package
    direct_url = importlib.metadata.distribution("apiframe-async").read_text("direct_url.json")
    assert not (direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


# -- the sdist ---------------------------------------------------------------------------


@needs_sdist
def test_sdist_holds_what_a_rebuild_and_its_tests_need() -> None:
    """The sdist has the package, tests, docs and project files, and no build debris."""
    assert SDIST is not None
    with tarfile.open(SDIST) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    expected = {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "mkdocs.yml",
        "noxfile.py",
        "apiframe_async/__init__.py",
        "apiframe_async/py.typed",
        "tests/conftest.py",
        "tests/test_docs.py",
        "docs/index.md",
    }
    assert expected <= names, sorted(expected - names)
    debris = ("site/", "dist/", ".git/", ".nox/", ".venv/", ".mypy_cache/", ".ruff_cache/")
    assert not [n for n in names if n.startswith(debris) or "__pycache__" in n]
