"""Who may import whom (docs/architecture.md), checked on the source: every import of each module,
at the top or inside a function."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "int4onnx"

# module (or package folder) -> the int4onnx modules it may import; third-party modules it must not
ALLOWED = {
    "quant": {"_native", "_threads", "quant"},
    "passes": {"_native", "config", "errors", "io", "methods", "quant", "passes"},
    "methods": set(),
    "config": {"errors", "methods"},
    "report": {"passes"},
}
FORBIDDEN_THIRD_PARTY = {"click": {"cli"}, "onnxruntime": {"runtime", "cli"}, "cffi": {"_native", "tools.build_native"}}
# only these may import the user-facing tools (int4onnx/tools/: bench, evaluate, generate, inspect, build_native)
TOOLS_IMPORTERS = {"cli", "tools"}


def _imports(path: pathlib.Path) -> set[str]:
    """int4onnx-relative names (``passes.plan``, ``_native``) and top-level third-party names imported."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "int4onnx":
                out.update(f"int4onnx.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(rel.parts), path


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda x: x if isinstance(x, str) else "")
def test_imports_follow_the_layers(name, path):
    top = name.split(".")[0]
    for imported in _imports(path):
        head = imported.split(".")[0]
        if head == "int4onnx":
            inner = imported.split(".")[1] if "." in imported else ""
            if top in ALLOWED and inner:
                assert inner in ALLOWED[top] or inner == top, f"{name} imports int4onnx.{inner}"
            if inner == "tools":
                assert top in TOOLS_IMPORTERS, f"{name} (the converter) imports int4onnx.tools"
        elif head in FORBIDDEN_THIRD_PARTY:
            allowed = FORBIDDEN_THIRD_PARTY[head]
            assert top in allowed or name in allowed, f"{name} imports {head}"
