"""What built a model: a factory's name and the JSON arguments it was called with.

A run directory must say which model it holds, so that ``evaluate``, ``plot``, ``sample``
and ``reconstruct`` rebuild exactly that model, never another one whose parameters happen
to have the same names and shapes. A :class:`ModelSpec` is that statement:

- ``factory``: ``"package.module:function"`` or ``"path/to/file.py:function"`` (a function
  or a class, called with the arguments), the built-in VAE being ``"pyro_vae.model:VAE"``;
- ``arguments``: a JSON object of keyword arguments;
- ``source``: for a factory outside ``pyro_vae``, a digest of the file that defines it, so
  that a model rebuilt from an edited file (the same parameter names and shapes, other
  code) is refused by name unless the caller says to go on.

The object a factory returns has ``model`` and ``guide`` methods (a Pyro pair). It carries
its spec as ``obj.spec``; :class:`pyro_vae.VAE` sets its own, and :func:`build_model`
sets it for any other factory.

A spec is data. Rebuilding one imports code only for factories inside ``pyro_vae`` itself
(:data:`BUILT_IN`); for any other, the caller names the factory (``--model FILE:FUNCTION``),
and it must be the one the spec records.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BUILT_IN = ("pyro_vae.model:VAE",)  # factories rebuilt without being named by the caller


@dataclass(frozen=True)
class ModelSpec:
    """A factory's name and the keyword arguments that build the model (JSON values)."""

    factory: str
    arguments: dict = field(default_factory=dict)
    source: str | None = None  # the factory file's digest (None: built in, or not recorded)

    def __post_init__(self):
        _split(self.factory)  # a malformed name fails here, by name
        try:
            json.dumps(self.arguments)
        except TypeError as e:
            raise ValueError(f"the arguments of {self.factory} are not JSON ({e}): a run "
                             "directory records a model by name and JSON arguments") from e

    @property
    def short_name(self) -> str:
        """``stem:function``: what two spellings of one factory have in common
        (``pkg.models:make`` and ``src/pkg/models.py:make`` give ``models:make``)."""
        where, name = _split(self.factory)
        stem = Path(where).stem if where.endswith(".py") else where.rsplit(".", 1)[-1]
        return f"{stem}:{name}"

    def to_dict(self) -> dict:
        d = {"factory": self.factory, "arguments": self.arguments}
        return d if self.source is None else {**d, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        if not isinstance(d, dict) or not {"factory", "arguments"} <= set(d) <= {
                "factory", "arguments", "source"}:
            raise ValueError(f"a model spec has the keys 'factory', 'arguments' and "
                             f"optionally 'source', got {d!r}")
        return cls(d["factory"], d["arguments"], d.get("source"))

    def __str__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"{self.factory}({arguments})"


def build_model(factory: str | Callable, **arguments):
    """Call ``factory(**arguments)`` and record on the result how it was built
    (``result.spec``), so that :func:`pyro_vae.fit` writes it into the run directory and
    :func:`pyro_vae.load_run` can rebuild it.

    ``factory`` is a name (``"pkg.module:function"``, ``"path/to/file.py:function"``) or the
    callable itself, whose name is then worked out from where it is defined: a module that
    Python can import by name, or else its file.

    Example:

    >>> from pyro_vae import build_model
    >>> vae = build_model("pyro_vae.model:VAE", x_dim=4, z_dim=2, hidden=[8])
    >>> print(vae.spec)
    pyro_vae.model:VAE(x_dim=4, z_dim=2, hidden=[8])
    """
    if isinstance(factory, str):
        name, fn = factory, resolve(factory)
    else:
        name, fn = name_of(factory), factory
    spec = ModelSpec(name, dict(arguments), None if name in BUILT_IN else source_digest(fn))
    built = fn(**arguments)
    if not (callable(getattr(built, "model", None)) and callable(getattr(built, "guide", None))):
        raise ValueError(f"{name} returned {type(built).__name__}, which has no model and guide "
                         "methods: a factory returns an object with both")
    built.spec = spec
    return built


def rebuild(spec: ModelSpec, factory: str | Callable | None = None, edited: bool = False):
    """The model ``spec`` describes. ``factory`` (a name or a callable) must be given for
    anything outside :data:`BUILT_IN`, and must be the factory ``spec`` names, defined in a
    file as it was when the spec was recorded: an edited file is refused unless
    ``edited``, and then it is rebuilt with a line saying so."""
    if factory is None:
        if spec.factory not in BUILT_IN:
            raise ValueError(
                f"the model was built by {spec.factory}, outside pyro_vae; a run directory "
                f"never runs code just because it names it: pass --model {spec.factory} (in "
                "Python: factory=...) to rebuild it")
        factory = spec.factory
    given = ModelSpec(factory if isinstance(factory, str) else name_of(factory))
    if given.short_name != spec.short_name:
        raise ValueError(f"the run holds a model built by {spec.factory}, not by "
                         f"{given.factory}: pass the factory it was trained with")
    built = build_model(factory, **spec.arguments)
    now = built.spec.source
    if spec.source is not None and now != spec.source:
        where = source_file(resolve(factory) if isinstance(factory, str) else factory)
        if not edited:
            raise ValueError(
                f"{where}, which defines the factory {spec.factory}, has changed since the run "
                f"was trained (digest {spec.source} then, {now} now): its parameters may load "
                "into other code. Restore the file, or pass --edited-model (in Python: "
                "edited=True) to rebuild the model from the file as it is now")
        print(f"warning: rebuilding {spec.factory} from an edited {where} (digest "
              f"{spec.source} then, {now} now)", file=sys.stderr)
    built.spec = spec  # the run's record stands: the model it holds is the one recorded
    return built


def source_file(fn: Callable) -> Path | None:
    """The file that defines ``fn`` (None for a builtin)."""
    try:
        return Path(inspect.getsourcefile(fn) or inspect.getfile(fn))
    except TypeError:
        return None


def source_digest(fn: Callable) -> str | None:
    """A digest (BLAKE2b, 64 bits) of the file that defines ``fn``."""
    path = source_file(fn)
    if path is None or not path.is_file():
        return None
    return hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()


def resolve(name: str) -> Callable:
    """The callable ``name`` names: ``pkg.module:function`` is imported,
    ``path/to/file.py:function`` is loaded from the file (its folder importable while it
    loads, as when the file runs as a script)."""
    where, attribute = _split(name)
    if where.endswith(".py"):
        module = _load_file(Path(where), name)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"cannot import {where!r} for the factory {name}: {e}") from e
    try:
        obj = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"{where} has no {attribute!r} (the factory {name})") from None
    if not callable(obj):
        raise ValueError(f"{name} is not callable: a factory is a function or a class")
    return obj


def name_of(fn: Callable) -> str:
    """``module:qualname`` if the module imports by that name, else ``file.py:qualname``
    (scripts, files loaded by path), the file relative to the working folder if inside it."""
    if "<locals>" in fn.__qualname__:
        raise ValueError(f"cannot name the factory {fn.__qualname__}: it is defined inside a "
                         "function; define it at the top level of a module or script")
    module = sys.modules.get(fn.__module__)
    path = getattr(module, "__file__", None)
    if fn.__module__ != "__main__":
        try:
            found = importlib.util.find_spec(fn.__module__)
        except (ImportError, ValueError):
            found = None
        if found is not None and path and found.origin and os.path.samefile(found.origin, path):
            return f"{fn.__module__}:{fn.__qualname__}"
    if not path:
        raise ValueError(f"cannot name the factory {fn!r}: it is defined in no file; define "
                         "it in a module or script")
    path = Path(path).resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{path}:{fn.__qualname__}"


def _split(name: str) -> tuple[str, str]:
    where, colon, attribute = str(name).rpartition(":")
    if not colon or not where or not attribute:
        raise ValueError(f"a factory is named 'package.module:function' or "
                         f"'path/to/file.py:function', got {name!r}")
    return where, attribute


def _load_file(path: Path, name: str):
    if not path.is_file():
        raise ValueError(f"no file {path} (the factory {name})")
    # one module per file and content, loaded once: an edited file loads anew
    digest = hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()
    key = f"pyro_vae_factory_{path.resolve()}_{digest}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[key] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[key]
        raise ValueError(f"loading {path} for the factory {name} failed: "
                         f"{type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(folder)
    return module
