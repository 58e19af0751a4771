"""Statement handlers: a registry keyed by AST class.

A handler module (``lql/exec/<group>.py``) registers its functions with::

    from lql.exec import handler
    from lql import ast

    @handler(ast.Walk)
    def walk(session, stmt) -> Result: ...

:class:`lql.session.Session` finds the handler for a statement with
:func:`lookup`, which imports the statement's group module on first use (so
that start-up stays light: ``SHOW MODELS`` never imports the inference engine).
A group module that does not exist yet is fine: the statement then raises
:class:`~lql.errors.NotBuiltError` naming the missing capability.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from .. import ast

__all__ = ["handler", "lookup", "registered", "GROUPS", "CAPABILITIES", "import_errors"]

#: handler group module (under ``lql.exec``) for each AST class
#: (a hint: a handler registered in another group module is still found, at the
#: cost of importing the group modules in order until it turns up)
GROUPS: dict[type, str] = {
    ast.Extract: "lifecycle", ast.Use: "browse", ast.UseModel: "browse",
    ast.UseRemote: "remote", ast.Compile: "compile", ast.Diff: "compile",
    ast.Walk: "browse", ast.Describe: "browse", ast.Select: "browse", ast.ExplainWalk: "browse",
    ast.Infer: "infer", ast.ExplainInfer: "infer", ast.Trace: "infer", ast.SaveSteer: "infer",
    ast.Insert: "mutate", ast.Delete: "mutate", ast.Update: "mutate", ast.Merge: "mutate",
    ast.Rebalance: "mutate",
    ast.BeginPatch: "patches", ast.SavePatch: "patches", ast.ApplyPatch: "patches",
    ast.RemovePatch: "patches", ast.ShowPatches: "patches",
    ast.ShowRelations: "browse", ast.ShowLayers: "browse", ast.ShowFeatures: "browse",
    ast.ShowEntities: "browse", ast.ShowModels: "introspect", ast.Stats: "browse",
    ast.SetChat: "introspect", ast.Help: "introspect",
    ast.UseSae: "sae", ast.DescribeSaeFeature: "sae", ast.SelectSaeFeatures: "sae",
    ast.EvaluateSae: "sae", ast.Capture: "sae",
}

#: what is missing when a statement has no handler, as a user reads it
CAPABILITIES: dict[type, str] = {
    ast.Extract: "vindex extraction", ast.Use: "vindex reader", ast.UseModel: "live model loading",
    ast.UseRemote: "remote vindex client", ast.Compile: "compiler", ast.Diff: "vindex diff",
    ast.Walk: "browse engine", ast.Describe: "browse engine", ast.Select: "browse engine",
    ast.ExplainWalk: "browse engine",
    ast.Infer: "inference engine", ast.ExplainInfer: "inference engine", ast.Trace: "inference engine",
    ast.SaveSteer: "steering",
    ast.Insert: "edit overlay", ast.Delete: "edit overlay", ast.Update: "edit overlay",
    ast.Merge: "edit overlay", ast.Rebalance: "edit overlay",
    ast.BeginPatch: "patch engine", ast.SavePatch: "patch engine", ast.ApplyPatch: "patch engine",
    ast.RemovePatch: "patch engine", ast.ShowPatches: "patch engine",
    ast.ShowRelations: "introspection", ast.ShowLayers: "introspection",
    ast.ShowFeatures: "introspection", ast.ShowEntities: "introspection",
    ast.ShowModels: "introspection", ast.Stats: "introspection",
    ast.SetChat: "session settings", ast.Help: "help",
    ast.UseSae: "SAE support", ast.DescribeSaeFeature: "SAE support",
    ast.SelectSaeFeatures: "SAE support", ast.EvaluateSae: "SAE support",
    ast.Capture: "activation capture",
}

ALL_GROUPS = ("lifecycle", "browse", "introspect", "infer", "mutate", "patches", "compile",
              "remote", "sae")

_HANDLERS: dict[type, Callable] = {}
_imported: set[str] = set()
_IMPORT_LOCK = threading.RLock()
#: group module name -> the exception its import raised (other than "module absent")
import_errors: dict[str, BaseException] = {}


def handler(*ast_classes: type) -> Callable:
    """Register the decorated function as the handler of ``ast_classes``."""
    if not ast_classes:
        raise TypeError("handler() needs at least one AST class")

    def register(fn: Callable) -> Callable:
        for cls in ast_classes:
            _HANDLERS[cls] = fn
        return fn

    return register


def registered() -> dict[type, Callable]:
    """A copy of the registry (for tests and HELP)."""
    return dict(_HANDLERS)


def _import_group(group: str) -> None:
    if group in _imported:
        return
    _imported.add(group)
    name = f"{__name__}.{group}"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:          # the module exists but one of its imports is missing
            import_errors[group] = exc
    except Exception as exc:          # a broken handler module must not break the others
        import_errors[group] = exc


def _find(cls: type) -> Callable | None:
    for klass in cls.__mro__:
        fn = _HANDLERS.get(klass)
        if fn is not None:
            return fn
    return None


def lookup(cls: type) -> Callable | None:
    """The handler for AST class ``cls``, importing its group module lazily."""
    fn = _find(cls)
    if fn is not None:
        return fn
    # one importer at a time: a thread that finds a group "imported" while another thread
    # is still importing it must wait for its handlers, not report them missing
    with _IMPORT_LOCK:
        group = GROUPS.get(cls)
        if group is not None:
            _import_group(group)
            fn = _find(cls)
            if fn is not None:
                return fn
        for group in ALL_GROUPS:           # registered somewhere unexpected?
            if group not in _imported:
                _import_group(group)
                fn = _find(cls)
                if fn is not None:
                    return fn
        return _find(cls)


def capability(cls: type) -> str:
    return CAPABILITIES.get(cls, "handler")

# compaction (issue 14): handlers in lql/exec/compact.py, imported by the mutate group
GROUPS.update({ast.CompactMinor: "mutate", ast.CompactMajor: "mutate",
               ast.ShowCompactStatus: "mutate"})
CAPABILITIES.update({ast.CompactMinor: "edit overlay", ast.CompactMajor: "edit overlay",
                     ast.ShowCompactStatus: "edit overlay"})
