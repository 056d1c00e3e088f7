"""Imports run one way (docs/ARCHITECTURE.md): the command line on top, then the figures and the
report, then the phases, then the building blocks (config, data, models, method, baselines,
engine, errors); `fsa_lt.library` uses `fsa_lt.method` and `fsa_lt.errors` alone. Every import counts, those inside
functions too: a lazy import up the layers is still a dependency up the layers."""
import ast

from conftest import ROOT

PACKAGE = ROOT / "fsa_lt"
# higher imports lower, never the reverse
LAYER = {"cli": 3, "viz": 2, "phases": 1}


def _module(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path):
    """The fsa_lt modules `path` imports, as lists of names (fsa_lt first)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name.split(".") for a in node.names if a.name.split(".")[0] == "fsa_lt"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "fsa_lt":
                base = node.module.split(".")
            else:
                continue
            out.append(base)
            out += [base + [a.name] for a in node.names if (PACKAGE.joinpath(*base[1:], a.name)).exists()
                    or PACKAGE.joinpath(*base[1:], a.name + ".py").exists()]
    return out


def _layer(mod):
    top = mod[1] if len(mod) > 1 else ""
    return LAYER.get(top.removesuffix(".py"), 0)


def layer_violations(root=PACKAGE):
    found = []
    for path in sorted(root.rglob("*.py")):
        mod = _module(path)
        for target in _imports(path):
            if _layer(target) > _layer(mod):
                found.append(f"{'.'.join(mod)} imports {'.'.join(target)}")
            if mod[:2] == ["fsa_lt", "library"] and target[:2] not in (["fsa_lt", "errors"], ["fsa_lt", "method"], ["fsa_lt"]):
                found.append(f"fsa_lt.library imports {'.'.join(target)} (only fsa_lt.method and fsa_lt.errors)")
    return found


def test_imports_run_one_way():
    assert layer_violations() == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself, on a made-up package: a function-level relative import up the layers
    is found, imports down the layers and within a layer are not."""
    import test_layers

    pkg = tmp_path / "fsa_lt"
    for d in ("phases", "viz", "engine"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from .phases import pipeline\nimport fsa_lt.viz.report\n")
    (pkg / "phases" / "pipeline.py").write_text(
        "from ..engine import io\nfrom . import summary\n\ndef run():\n    from ..viz.report import write\n")
    (pkg / "phases" / "summary.py").write_text("import fsa_lt.cli\n")
    (pkg / "viz" / "report.py").write_text("from ..phases import summary\n")
    (pkg / "engine" / "io.py").write_text("")
    (pkg / "library.py").write_text("from .errors import FsaError\nfrom .engine import io\n")
    monkeypatch.setattr(test_layers, "ROOT", tmp_path)
    monkeypatch.setattr(test_layers, "PACKAGE", pkg)
    only = "(only fsa_lt.method and fsa_lt.errors)"
    assert layer_violations(pkg) == [f"fsa_lt.library imports fsa_lt.engine {only}",
                                     f"fsa_lt.library imports fsa_lt.engine.io {only}",
                                     "fsa_lt.phases.pipeline imports fsa_lt.viz.report",
                                     "fsa_lt.phases.summary imports fsa_lt.cli"]
