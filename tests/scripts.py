"""The project's scripts seen from the tests: as modules, for the constants and classes they
define, and as programs run in their --quick mode."""

import importlib.util
import runpy
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path) -> ModuleType:
    """The script at ``path`` as a module. Its folder is importable while it loads, as when
    it runs (the scripts of experiments/extending/ import their common.py)."""
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def run_quick(path: Path, out: Path, *options: str) -> Path:
    """Run the script at ``path`` as ``__main__`` with ``--quick --out out`` and ``options``,
    in this process (a fresh interpreter would spend seconds importing torch and Pyro
    again); its folder is importable, as when it runs. Return ``out``."""
    argv = [str(path), "--quick", "--out", str(out), *options]
    with mock.patch.object(sys, "argv", argv), mock.patch.object(
            sys, "path", [str(path.parent), *sys.path]):
        runpy.run_path(str(path), run_name="__main__")
    return out
