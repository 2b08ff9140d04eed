"""The project's scripts seen from the tests: as modules, for the constants and classes they
define, and as programs run in their --quick mode."""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path) -> ModuleType:
    """The script at ``path`` as a module. Its folder is importable while it loads, as when
    it runs (the scripts of experiments/extending/ import their common.py)."""
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def run_quick(path: Path, out: Path, *options: str) -> Path:
    """Run the script at ``path`` with ``--quick --out out`` and ``options``; return ``out``."""
    r = subprocess.run([sys.executable, str(path), "--quick", "--out", str(out), *options],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out
