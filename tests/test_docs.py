"""The README and docs/: short front door, working commands, no broken links, the method sections the code cites."""

import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS, ROOT / "benchmarks" / "README.md"]
README_LIMIT = 12_000  # bytes: the front door stays short; the studies live in docs/results.md

INSTALL_AND_RUN = "bash scripts/setup.sh --app && .venv/bin/python app.py"
INSTALL_AND_TEST = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"  # .ci/run relies on this one

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _links(text: str) -> list[str]:
    """Markdown link and image targets outside fenced code blocks."""
    return LINK.findall(FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings."""
    text = FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}


def test_slug_follows_github():
    """The anchor rule the link check relies on."""
    assert _slug("Two ways to build the Ambient side") == "two-ways-to-build-the-ambient-side"
    assert _slug("N = 300") == "n--300"
    assert _slug("The noise cutoff sigma_c (`Cutoff`)") == "the-noise-cutoff-sigma_c-cutoff"


def test_readme_is_short():
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} (studies go to docs/)"


def test_readme_keeps_space_front_matter_and_opens_with_the_two_commands():
    text = README.read_text()
    assert text.startswith("---\n"), "README.md must start with the Hugging Face Space YAML block"
    front, _, rest = text[4:].partition("\n---\n")
    fields = dict(line.split(": ", 1) for line in front.splitlines() if ": " in line)
    assert fields.get("sdk") == "gradio" and fields.get("app_file") == "app.py"
    first_block = re.search(r"```bash\n(.*?)```", rest, re.S)
    assert first_block and rest.index(first_block.group(0)) < 200, "the two commands come first"
    lines = [ln.strip() for ln in first_block.group(1).splitlines()]
    assert INSTALL_AND_RUN in lines and INSTALL_AND_TEST in lines


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    setup, _, test = INSTALL_AND_TEST.partition(" && ")
    assert setup in ci and test in ci


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(path):
    broken = []
    for target in _links(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_link_check_catches_a_broken_link(tmp_path):
    """The checker itself: a missing file and a missing heading are both reported."""
    (tmp_path / "a.md").write_text("# Here\n\n[ok](#here) [gone](nope.md) [bad](a.md#there) `[code](x.md)`\n")
    found = _links((tmp_path / "a.md").read_text())
    assert "nope.md" in found and "a.md#there" in found
    assert "there" not in _anchors(tmp_path / "a.md") and "here" in _anchors(tmp_path / "a.md")


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"method.md", "results.md", "latent-pairs.md", "testing.md"} <= names


def test_method_sections_cited_by_the_code_exist():
    """Citations like `docs/method.md ("Measuring memorization")` or `method.md, "Two ways"` name a real heading."""
    headings = [h.lower() for h in re.findall(r"^#+\s+(.*)$", (ROOT / "docs" / "method.md").read_text(), re.M)]
    cited = []
    sources = [*(ROOT / "ambient").rglob("*.py"), *(ROOT / "tests").glob("*.py")]
    for src in (s for s in sources if s.name != Path(__file__).name):
        for name in re.findall(r"method\.md[ ,(]{1,3}\"([^\"]+)\"", src.read_text()):
            cited.append((src.name, name))
            assert any(h.startswith(name.lower()) for h in headings), f'{src.name} cites method.md "{name}"'
    assert cited, "expected the code to cite sections of docs/method.md"


def test_readme_speaks_to_users():
    """The front door describes the project, not how it was made."""
    text = README.read_text().lower()
    for word in ("issue", "session", "goal", "stops"):
        assert not re.search(rf"\b{word}\b", text), f"README.md mentions {word!r}"


def test_readme_python_example_names_exist():
    """Every name the README's Python example imports exists, and every call binds to its signature."""
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    tree = ast.parse(code)
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name] = importlib.import_module(alias.name)
    for node in tree.body:  # `index = TrainingSetIndex.load(...)`: `index` is a TrainingSetIndex
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and len(node.targets) == 1:
            func, target = node.value.func, node.targets[0]
            owner = func.value if isinstance(func, ast.Attribute) else func
            if isinstance(target, ast.Name) and isinstance(owner, ast.Name) and inspect.isclass(names.get(owner.id)):
                names[target.id] = names[owner.id]
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            target = names[func.id]
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in names:
            target = getattr(names[func.value.id], func.attr, None)
            assert target is not None, f"{func.value.id} has no attribute {func.attr}"
            if inspect.isclass(names[func.value.id]) and inspect.isfunction(target):
                target = target.__get__(object.__new__(names[func.value.id]))  # a method, called on an instance
        else:
            continue
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):  # builtins without a signature
            continue
        try:
            sig.bind_partial(*[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
        except TypeError as e:
            raise AssertionError(f"line {node.lineno} of the README's example: {ast.unparse(node.func)}: {e}") from e
        checked += 1
    assert checked >= 3


def test_app_doc_shows_the_api_tabs_tested_example():
    """docs/app.md's client example is the API tab's, which tests/test_app_api.py runs against a live server."""
    from demo.ui import API_DOC

    ours = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "app.md").read_text(), re.S)
    assert ours and ours.group(1) == re.search(r"```python\n(.*?)```", API_DOC, re.S).group(1)


def _help(verb: str) -> str:
    """``ambient VERB --help``, in process."""
    from ambient.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([verb, "--help"])
    return out.getvalue()


def test_readme_cli_examples_use_real_verbs_and_options():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]  # continuation lines joined
    commands = [ln for ln in lines if ln.startswith(("ambient ", "python -m ambient "))]
    assert commands, "the README shows the command line"
    helps: dict[str, str] = {}
    for line in commands:
        words = shlex.split(line.split("#")[0].replace("python -m ambient", "ambient"))
        verb = words[1]
        helps.setdefault(verb, _help(verb))
        for flag in (w for w in words[2:] if w.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", helps[verb]), f"`ambient {verb}` has no option {flag}"
