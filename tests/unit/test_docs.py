"""The documentation runs: every ```python block of README.md and docs/**/*.md is executed.

The blocks of one page run in order, in one namespace (a later block uses what an earlier one
defined), as asynchronous code (a block may ``await`` at its top level), in a temporary working
directory (SQLite files land there). A block preceded by an HTML comment
``<!-- not run: needs PostgreSQL -->`` (or Redis) is not run: only a page about one of those
servers may hold such blocks, and the reason must name it. Shell blocks are never run.

Besides running: every block is ruff-formatted and lint-clean, the reference lists every public
name with its parameters, and no page points outside the repository.
"""

from __future__ import annotations

import ast
import inspect
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import fastapi_atomic
import fastapi_atomic.testing
import fastapi_atomic.websession

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
REFERENCE = ROOT / "docs" / "reference.md"

#: the public names of fastapi_atomic.testing (it has no __all__)
TESTING_NAMES = [
    "FakeUnitOfWork",
    "WebSessionStoreContract",
    "run_in_unit_of_work",
    "make_record",
    "new_key",
]
#: the only reasons a block may give for not running
SERVERS = ("PostgreSQL", "Redis")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    #: the line of the opening fence, counted from 1
    line: int
    language: str
    code: str
    #: why the block is not run, from the comment before it; None when it runs
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (indented fences, as in lists, included)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = _NOT_RUN.match(previous)
        blocks.append(
            Block(
                page=page,
                line=index + 1,
                language=language,
                code="\n".join(body) + "\n",
                not_run=marker["reason"] if marker else None,
            )
        )
        index = end + 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    return [block for block in blocks_of(page) if block.language == "python"]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


PAGES_WITH_PYTHON = [page for page in PAGES if python_blocks(page)]


def test_the_documentation_is_there() -> None:
    assert (ROOT / "docs" / "index.md").is_file()
    assert not (ROOT / "docs" / "guide.md").exists(), "the guide was split into docs/practices/"
    assert len(PAGES_WITH_PYTHON) >= 10


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=page_id)
async def test_the_python_blocks_of_a_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks(page)
    runnable = [block for block in blocks if block.not_run is None]
    if not runnable:
        pytest.skip("; ".join(f"{block.where}: {block.not_run}" for block in blocks))
    monkeypatch.chdir(tmp_path)
    # A real module, so that anything resolving names through sys.modules (pydantic, FastAPI,
    # dataclasses, pickling) finds the page's definitions.
    module = types.ModuleType("docs_example_" + re.sub(r"\W", "_", page_id(page)))
    module.__file__ = str(page)
    sys.modules[module.__name__] = module
    try:
        for block in runnable:
            await run_block(block, module.__dict__)
    finally:
        for value in list(module.__dict__.values()):
            if isinstance(value, AsyncEngine):
                await value.dispose()
        del sys.modules[module.__name__]


async def run_block(block: Block, namespace: dict[str, object]) -> None:
    """Run one block; its line numbers in a traceback are the page's own."""
    source = "\n" * block.line + block.code
    code = compile(
        source, str(block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, namespace)  # a coroutine when the block awaits at its top level
    if inspect.iscoroutine(result):
        await result


def test_blocks_that_do_not_run_say_which_server_they_need() -> None:
    skipped = [
        (block.where, block.not_run)
        for page in PAGES
        for block in python_blocks(page)
        if block.not_run is not None
    ]
    for where, reason in skipped:
        assert reason.startswith("needs ") and any(server in reason for server in SERVERS), (
            f"{where}: {reason!r} names no server ({', '.join(SERVERS)})"
        )
    assert len(skipped) <= 4, skipped  # a few: the examples are tested by running them


def test_only_python_and_shell_blocks_hold_code() -> None:
    """A block in another language is never run: only what cannot run may use one."""
    allowed = {"python", "sh", "text", ""}
    odd = [
        f"{block.where} ({block.language})"
        for page in PAGES
        for block in blocks_of(page)
        if block.language not in allowed
    ]
    assert odd == []


def _ruff() -> str:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed")
    return found


def test_the_python_blocks_are_formatted_and_lint_clean(tmp_path: Path) -> None:
    """Each block on its own, with the project's ruff settings.

    Allowed only because a block is part of a page: ``await`` at the top level (F704) and a
    name an earlier block of the page defined (F821).
    """
    ruff = _ruff()
    names: dict[str, str] = {}
    for page in PAGES:
        for block in python_blocks(page):
            name = re.sub(r"\W", "_", f"{page_id(page)}_{block.line}") + ".py"
            (tmp_path / name).write_text(block.code, encoding="utf-8")
            names[name] = block.where
    config = [
        *("--config", str(ROOT / "pyproject.toml")),
        # The blocks sit outside the project: name its packages for the import sorting.
        *("--config", 'lint.isort.known-first-party = ["fastapi_atomic", "shop"]'),
        "--no-cache",
    ]
    formatted = subprocess.run(
        [ruff, "format", "--check", "--diff", *config, "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    checked = subprocess.run(
        [ruff, "check", "--output-format", "concise", "--ignore", "F704,F821", *config, "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )

    def where(output: str) -> str:
        for name, location in names.items():
            output = output.replace(name, location)
        return output

    assert formatted.returncode == 0, where(formatted.stdout + formatted.stderr)
    assert checked.returncode == 0, where(checked.stdout + checked.stderr)


# --- the reference ---------------------------------------------------------------------------


def public_names() -> Iterator[tuple[str, object]]:
    for name in fastapi_atomic.__all__:
        yield name, getattr(fastapi_atomic, name)
    for name in fastapi_atomic.websession.__all__:
        yield name, getattr(fastapi_atomic.websession, name)
    for name in TESTING_NAMES:
        yield name, getattr(fastapi_atomic.testing, name)


def reference_sections() -> dict[str, str]:
    """The reference's entries: a heading "### `name`" and the text up to the next heading."""
    text = REFERENCE.read_text(encoding="utf-8")
    parts = re.split(r"^#{2,4} `([A-Za-z_][A-Za-z0-9_]*)`.*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_the_reference_has_an_entry_for_every_public_name() -> None:
    sections = reference_sections()
    missing = [name for name, _ in public_names() if name not in sections]
    assert missing == []


def test_every_reference_entry_names_the_parameters() -> None:
    """A signature that changes in the code and not in the reference fails here."""
    sections = reference_sections()
    stale: list[str] = []
    for name, value in public_names():
        if not callable(value) or not getattr(value, "__module__", "").startswith("fastapi_atomic"):
            continue  # Annotated aliases and Literal types have no signature of their own
        if isinstance(value, type) and issubclass(value, BaseException):
            continue
        try:
            parameters = inspect.signature(value).parameters
        except (TypeError, ValueError):
            continue
        for parameter in parameters:
            if parameter.startswith("_") or parameter in ("self", "args", "kwargs"):
                continue
            if not re.search(rf"\b{parameter}\b", sections.get(name, "")):
                stale.append(f"{name}: {parameter}")
    assert stale == []


# --- links -----------------------------------------------------------------------------------


def test_no_page_points_outside_the_repository() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for forbidden in ("CONTRACT.md", "../shared"):
            assert forbidden not in text, f"{page_id(page)} mentions {forbidden}"


def test_relative_links_lead_to_files_of_the_repository() -> None:
    broken: list[str] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path):
                continue  # an anchor on the same page, or a URL
            resolved = (page.parent / path).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{page_id(page)}: {target}")
    assert broken == []
