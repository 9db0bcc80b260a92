"""The README's and the manual's examples run, and print what the page shows.

Pages are parsed with Sybil (its markdown lexers, its ``<!-- skip: next "reason" -->`` directive and its
per-document namespace); each page is one test whose examples run in page order:

- a ```python block runs in the page's namespace; when a ```text block follows it directly, that block is
  what the code must print (stdout), compared as doctest compares (``...`` matches anything, runs of
  whitespace are equal);
- a ```console block holds ``$ command`` lines (``\\`` continues a line) each followed by its output;
  every command runs in bash, in a directory of its own per page where ``t5ort`` names the installed
  package (so ``t5ort/assets/numbers/onnx`` is the bundled export). The output compared is stdout, or
  stdout and stderr together when the command fails (errors go to stderr);
- a block that cannot run here (a GPU, a server in the foreground, an install) is preceded by
  ``<!-- skip: next "reason" -->``: a skip without a reason fails the page, and so does a ```python or
  ```console block that neither runs nor is skipped.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil", reason="the [docs] extra (sybil) is not installed")
from sybil import Region, Sybil  # noqa: E402
from sybil.parsers.markdown import SkipParser  # noqa: E402
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer  # noqa: E402

import t5ort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
RUN = {"python", "console"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_checker = doctest.OutputChecker()


def _differs(expected: str, got: str) -> str | None:
    if _checker.check_output(expected, got, FLAGS):
        return None
    example = doctest.Example("", expected)
    return _checker.output_difference(example, got, FLAGS)


def _evaluate_python(example) -> str | None:
    source, expected = example.parsed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"{example.path}:{example.line}", "exec"), example.namespace)
    if expected is not None:
        return _differs(expected, out.getvalue())
    return None


def _commands(block: str) -> list[tuple[str, str]]:
    """``$ command`` lines (with ``\\`` continuations) and the output lines after each."""
    commands: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = [line[2:]]
            while command[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            commands.append(("\n".join(command), []))
        elif commands:
            commands[-1][1].append(line)
        else:
            raise ValueError(f"console block line before any '$ ' command: {line!r}")
        i += 1
    return [(c, "\n".join(o) + "\n" if o else "") for c, o in commands]


def _evaluate_console(example) -> str | None:
    cwd = example.namespace["__workdir__"]
    for command, expected in _commands(example.parsed):
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300,
                              env=example.namespace["__env__"])
        got = proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr
        difference = _differs(expected, got)
        if difference:
            return f"$ {command}\n(exit {proc.returncode})\n{difference}\nstderr:\n{proc.stderr[-2000:]}"
    return None


class CodeAndOutputParser:
    """```python blocks with the ```text block that follows them, and ```console blocks."""

    lexer = FencedCodeBlockLexer(language=r"[\w-]*", mapping={"language": "language", "source": "source"})

    def __call__(self, document):
        blocks = list(self.lexer(document))
        for i, block in enumerate(blocks):
            language = block.lexemes["language"]
            if language == "python":
                expected, end = None, block.end
                following = blocks[i + 1] if i + 1 < len(blocks) else None
                if (following is not None and following.lexemes["language"] == "text"
                        and not document.text[block.end:following.start].strip()):
                    expected, end = str(following.lexemes["source"]), following.end
                yield Region(block.start, end, (str(block.lexemes["source"]), expected), _evaluate_python)
            elif language == "console":
                yield Region(block.start, block.end, str(block.lexemes["source"]), _evaluate_console)


SYBIL = Sybil(parsers=[SkipParser(), CodeAndOutputParser()], path=str(ROOT), patterns=PAGES)
SKIP = re.compile(r"<!--\s*skip:\s*(\w+)(.*?)-->", re.S)
FENCE = re.compile(r"^```(\S*)\s*$", re.M)


@pytest.fixture
def workdir(tmp_path):
    package = Path(t5ort.__file__).resolve().parent
    (tmp_path / "t5ort").symlink_to(package)
    return tmp_path


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(page, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    document = SYBIL.parse(ROOT / page)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="100", NO_COLOR="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    document.namespace.update(__workdir__=str(workdir), __env__=env, __name__="__docs__")
    ran, skipped, failures = 0, 0, []
    for example in document.examples():
        try:
            result = example.evaluate()
        except unittest.SkipTest:
            skipped += 1
            continue
        except Exception as e:  # noqa: BLE001  (each example is reported with its line)
            failures.append(f"{page}:{example.line}: {type(e).__name__}: {e}")
            break  # later examples of the page depend on this one's namespace
        if example.region.evaluator in (_evaluate_python, _evaluate_console):
            ran += 1
        if result:
            failures.append(f"{page}:{example.line}:\n{result}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("page", PAGES)
def test_every_runnable_block_runs_or_is_skipped_with_a_reason(page):
    """A ```python or ```console block is either run (and its output compared) or skipped with a reason in
    the page source; skips never go unexplained."""
    text = (ROOT / page).read_text()
    for match in SKIP.finditer(text):
        action, reason = match.group(1), match.group(2).strip()
        line = text.count("\n", 0, match.start()) + 1
        assert action == "next", f"{page}:{line}: use 'skip: next \"reason\"' (one block at a time)"
        assert re.fullmatch(r'"[^"]+"', reason), f"{page}:{line}: a skip needs a reason in quotes"
    document = SYBIL.parse(ROOT / page)
    covered = [(r.start, r.end) for _, r in document.regions]
    opening = [m for m in FENCE.finditer(text)]
    for i in range(0, len(opening) - 1, 2):  # fences pair up: an opening, then its closing
        start, language = opening[i].start(), opening[i].group(1)
        assert language, f"{page}:{text.count(chr(10), 0, start) + 1}: a code block without a language"
        if language in RUN:
            skipped = any(not text[m.end():start].strip() for m in SKIP.finditer(text))
            line = text.count("\n", 0, start) + 1
            assert skipped or any(a <= start < b for a, b in covered), f"{page}:{line}: a {language} block not run"


def test_the_readme_test_command_is_what_ci_runs():
    """The README's test command is the one .ci/run runs, word for word, and the manual's build follows it."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e '.[export,test]' && pytest -q"
    assert f"$ {command}\n" in readme
    assert command in ci
    assert "mkdocs build --strict" in ci.split(command, 1)[1]


def test_the_readme_stays_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "<!-- benchmark:start" in readme and "<!-- benchmark:end -->" in readme
    assert not re.search(r"\bround \d", readme, re.I), "measurements are labelled by date, version and commit"


def test_the_serving_page_names_every_flag_and_metric():
    """docs/serving.md lists every `t5ort serve` flag and every metric /metrics exposes."""
    import argparse

    from t5ort.cli import build_parser

    page = (ROOT / "docs" / "serving.md").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for a in commands.choices["serve"]._actions for o in a.option_strings if o.startswith("--")}
    assert flags - {"--help"} and not [f for f in flags - {"--help"} if f"`{f}`" not in page]
    metrics = set(re.findall(r'"(t5ort_[a-z_]+)"', (ROOT / "t5ort" / "serve" / "metrics.py").read_text()))
    metrics |= {f"t5ort_encoder_cache_{n}" for n in ("hits", "misses", "evictions")}
    assert metrics and not [m for m in metrics if m not in page]
