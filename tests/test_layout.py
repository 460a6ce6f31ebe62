"""The codebase's shape: layers point one way, entry points live in orchestration/, and config modules
import without torch (so a bad config value is refused before any heavy import)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["common", "harness", "pipeline", "tokenize_images", "training", "orchestration"]
# What each package may import from this project (orchestration -> libraries -> harness -> common).
ALLOWED = {
    "common": {"common"},
    "harness": {"common", "harness"},
    "pipeline": {"common", "pipeline"},
    "tokenize_images": {"common", "harness", "tokenize_images"},
    "training": {"common", "harness", "tokenize_images", "training"},
    "orchestration": set(PACKAGES),
}
ENTRY_SCRIPTS = sorted(p.stem for p in (REPO / "orchestration").glob("*.py") if p.stem != "__init__")


def project_imports(path: Path) -> set[str]:
    """Top-level project packages that a module imports, anywhere in it (lazy imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


def library_modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_point_one_way(package):
    wrong = {
        str(path.relative_to(REPO)): sorted(project_imports(path) - ALLOWED[package])
        for pkg, path in library_modules()
        if pkg == package
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_only_entry_scripts_touch_sys_path():
    entry = {REPO / "training" / "train_prior.py"}
    touching = [
        str(path.relative_to(REPO))
        for package, path in library_modules()
        if package != "orchestration" and path not in entry and "sys.path" in path.read_text()
    ]
    assert touching == []


def test_config_modules_import_without_torch():
    code = (
        "import sys; import harness.config, pipeline.config, tokenize_images.config, training.config; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("script", ENTRY_SCRIPTS + ["train_prior"])
def test_entry_scripts_run_by_path_and_as_modules(script, tmp_path):
    """`python orchestration/X.py --help` from any directory, and `python -m orchestration.X --help`."""
    path = REPO / ("training" if script == "train_prior" else "orchestration") / f"{script}.py"
    module = f"{path.parent.name}.{script}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    by_path = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert by_path.returncode == 0, by_path.stderr
    as_module = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert as_module.returncode == 0, as_module.stderr
    summary = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
    assert summary in by_path.stdout and summary in as_module.stdout


def test_every_harness_export_resolves_to_its_object():
    """harness/__init__ resolves names lazily; none may be shadowed by a submodule of the same name."""
    import types

    import harness

    for name in harness.__all__:
        assert not isinstance(getattr(harness, name), types.ModuleType), name
