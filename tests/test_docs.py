"""The README and docs/ stand alone: no link or path leaves the project, no relative link is dangling.

A clone of the project has nothing beside it, so README.md and docs/*.md may name files of
the repository only: a relative link must resolve inside it to a file or folder that exists,
and no text may point at `../` outside it, at machine-specific absolute folders (/work,
/tmp, /home, /root, /shared) or at a `shared/` folder the repository does not have.
"""
from __future__ import annotations

import re

import pytest
from pathlib import Path

from conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
UP = re.compile(r"(?<![\w./-])(?:\.\./)+[^\s)`'\"<>,;]*")
ABSOLUTE = re.compile(r"(?<![\w.~$-])/(?:work|tmp|home|root|shared)(?:/|\b)")
SHARED = re.compile(r"(?<![\w./-])shared/")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def problems(md: Path, root: Path) -> list[str]:
    """Every link or path of ``md`` that leaves ``root`` or names a missing file, as 'FILE:LINE: ...'."""
    out = []
    rel = md.relative_to(root)
    for lineno, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{rel}:{lineno}"
        for target in LINK.findall(line):
            if target.startswith(EXTERNAL) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not path:
                continue
            if path.startswith("/"):
                out.append(f"{where}: absolute link {target}")
                continue
            full = md.parent / path
            if not _inside(full, root):
                out.append(f"{where}: link leaves the project: {target}")
            elif not full.exists():
                out.append(f"{where}: link to a missing file: {target}")
        for token in UP.findall(LINK.sub(" ", line)):  # paths outside links (links are checked above)
            full = md.parent / token
            if not _inside(full, root):
                out.append(f"{where}: path leaves the project: {token}")
            elif not full.exists():
                out.append(f"{where}: path to a missing file: {token}")
        for m in ABSOLUTE.finditer(line):
            out.append(f"{where}: machine-specific absolute path: {line[m.start():m.start() + 40].split()[0]}")
        for m in SHARED.finditer(line):
            out.append(f"{where}: a 'shared/' folder outside the project: {line[m.start():m.start() + 40].split()[0]}")
    return out


def test_readme_and_docs_stay_inside_the_project():
    files = doc_files(ROOT)
    assert len(files) >= 7  # README + ARCHITECTURE, BENCHMARKS, LARGE_SCALE, LIBRARY, METHOD, RESULTS
    found = [p for f in files for p in problems(f, ROOT)]
    assert found == [], "\n".join(found)


def test_readme_points_at_the_project_docs():
    text = (ROOT / "README.md").read_text()
    for target in ("docs/METHOD.md", "docs/LIBRARY.md", "docs/ARCHITECTURE.md"):
        assert f"]({target})" in text, target
    assert "## Your own data" in text and "fsa-lt data --config imagefolder_resnet50" in text
    method = (ROOT / "docs" / "METHOD.md").read_text()
    # the specification names every [choice] the method's code marks
    assert method.count("[choice]") >= 5 and "## Choices the paper leaves open" in method
    for name in ("normalize_cams", "decompose_masks", "usable_locations", "head_tail_split", "confusing_classes",
                 "draw_tail", "draw_head", "synthesize", "fuse_pooled", "shot_groups"):
        assert f"`{name}" in method or f"`FSASampler.{name}" in method, name


def test_the_checker_finds_what_it_should(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("ok\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "README.md").write_text(
        "[spec](../shared/docs/METHOD.md) and [a](docs/A.md) and [web](https://example.org/x)\n"
        "run `python ../shared/tools/cifar10.py fetch DIR`\n"
        "[gone](docs/B.md#part) [anchor](#install) [dir](src)\n"
        "export FSA_DATA_ROOT=/tmp/cifar; see /work/.library/device/README.md; /data/imagenet is fine\n"
        "copy shared/tools/x.py; the phases shared by both; --workdir /shared/runs\n")
    (tmp_path / "docs" / "C.md").write_text("[up](../README.md) [out](../../elsewhere.md) [code](../src)\n")
    found = [p for f in doc_files(tmp_path) for p in problems(f, tmp_path)]
    assert found == [
        "README.md:1: link leaves the project: ../shared/docs/METHOD.md",
        "README.md:2: path leaves the project: ../shared/tools/cifar10.py",
        "README.md:3: link to a missing file: docs/B.md#part",
        "README.md:4: machine-specific absolute path: /tmp/cifar;",
        "README.md:4: machine-specific absolute path: /work/.library/device/README.md;",
        "README.md:5: machine-specific absolute path: /shared/runs",
        "README.md:5: a 'shared/' folder outside the project: shared/tools/x.py;",
        "docs/C.md:1: link leaves the project: ../../elsewhere.md",
    ]


def test_install_line_is_what_ci_runs():
    """README's CPU install line is the one .ci/run runs, it pairs torch with the torchvision
    made for it, and pyproject names torchvision as a dependency."""
    import shlex
    import tomllib

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Install", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if ln.strip()]
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip().startswith("python -m pip install")]
    assert len(ci) == 1
    readme_args = shlex.split(line)[2:]  # after "pip install"
    ci_args = [a for a in shlex.split(ci[0])[4:] if a != "-q"]  # after "python -m pip install"
    assert readme_args == ci_args
    pins = dict(a.split("==") for a in readme_args if "==" in a)
    assert set(pins) == {"torch", "torchvision"}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("torchvision") for d in deps)
    # the pair is one torchvision names as its own: its metadata pins that torch
    from importlib import metadata

    try:
        installed = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        pytest.skip("torchvision is not installed: its torch pin cannot be read")
    if installed.split("+")[0] == pins["torchvision"]:
        from packaging.requirements import Requirement

        want = [Requirement(r) for r in metadata.requires("torchvision") or [] if Requirement(r).name == "torch"]
        assert want and want[0].specifier.contains(pins["torch"]), want
