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
from collections.abc import Callable

__all__ = ["handler", "lookup", "registered", "GROUPS", "CAPABILITIES", "import_errors"]

#: handler group module (under ``lql.exec``) for each AST class name
#: (a hint: a handler registered in another group module is still found, at the
#: cost of importing the group modules in order until it turns up)
GROUPS: dict[str, str] = {
    "Extract": "lifecycle", "Use": "browse", "UseModel": "browse",
    "UseRemote": "remote", "Compile": "compile", "Diff": "compile",
    "Walk": "browse", "Describe": "browse", "Select": "browse", "ExplainWalk": "browse",
    "Infer": "infer", "ExplainInfer": "infer", "Trace": "infer",
    "Insert": "mutate", "Delete": "mutate", "Update": "mutate", "Merge": "mutate",
    "Rebalance": "mutate",
    "BeginPatch": "patches", "SavePatch": "patches", "ApplyPatch": "patches",
    "RemovePatch": "patches", "ShowPatches": "patches",
    "ShowRelations": "browse", "ShowLayers": "browse", "ShowFeatures": "browse",
    "ShowEntities": "browse", "ShowModels": "introspect", "Stats": "browse",
    "SetChat": "introspect", "Help": "introspect",
}

#: what is missing when a statement has no handler, as a user reads it
CAPABILITIES: dict[str, str] = {
    "Extract": "vindex extraction", "Use": "vindex reader", "UseModel": "live model loading",
    "UseRemote": "remote vindex client", "Compile": "compiler", "Diff": "vindex diff",
    "Walk": "browse engine", "Describe": "browse engine", "Select": "browse engine",
    "ExplainWalk": "browse engine",
    "Infer": "inference engine", "ExplainInfer": "inference engine", "Trace": "inference engine",
    "Insert": "edit overlay", "Delete": "edit overlay", "Update": "edit overlay",
    "Merge": "edit overlay", "Rebalance": "edit overlay",
    "BeginPatch": "patch engine", "SavePatch": "patch engine", "ApplyPatch": "patch engine",
    "RemovePatch": "patch engine", "ShowPatches": "patch engine",
    "ShowRelations": "introspection", "ShowLayers": "introspection",
    "ShowFeatures": "introspection", "ShowEntities": "introspection",
    "ShowModels": "introspection", "Stats": "introspection",
    "SetChat": "session settings", "Help": "help",
}

ALL_GROUPS = ("lifecycle", "browse", "introspect", "infer", "mutate", "patches", "compile",
              "remote")

_HANDLERS: dict[type, Callable] = {}
_imported: set[str] = set()
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
    group = GROUPS.get(cls.__name__)
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
    return CAPABILITIES.get(cls.__name__, "handler")
