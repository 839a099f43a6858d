"""The architecture's rules, checked on the source (docs/architecture.md): imports go one way
(import-linter's contracts in .importlinter), no module uses another module's private names, and
no code outside a method's own module compares method names (the registry answers)."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mocolab"


def _modules():
    return sorted(p for p in SRC.rglob("*.py"))


def test_imports_go_one_way():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter, in the test extras) is not installed"
    res = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT / "src", capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def _imported_modules(tree: ast.Module, path: Path) -> set[str]:
    """Local names bound to mocolab modules by `import` / `from . import x`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mocolab")):
            base = path.parent if node.level else None
            for a in node.names:
                target = (base / a.name) if base is not None else None
                if target is not None and (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                    names.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mocolab") and a.asname:
                    names.add(a.asname)
    return names


def test_no_module_uses_another_modules_private_names():
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        modules = _imported_modules(tree, path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mocolab")):
                bad += [f"{path.relative_to(SRC)}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, bad


def test_only_a_methods_module_names_its_method():
    """`moco.method == "bank"`-style comparisons live nowhere but in the method's class."""
    name = r"""["'](moco|e2e|bank|mocov3)["']"""
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?{name}|{name}\s*(==|!=)""")
    bad = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in _modules() if "methods" not in p.parts
           for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, bad
