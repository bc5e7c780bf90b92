"""Building the handler a manifest names from an archive's own files, once per replica (or batch worker).

``sklearn`` is the built-in :class:`~modelpool.deployments.handlers.SklearnHandler`; ``module:attr`` imports
``module.py`` from the archive under a name of its own (so two models' ``utils.py`` never collide)
and wraps what it finds: a Handler subclass as it is, a class with ``predict`` adapted, a plain
function called once per batch. Every failure is a :class:`RequestError` naming the field at fault,
so registering a broken archive is a 400, not a crashed replica.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import threading
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

import numpy as np

from modelpool.deployments.errors import RequestError
from modelpool.deployments.handler_refs import missing_import_message
from modelpool.deployments.handlers import CallableHandler, Handler, ModelContext, SklearnHandler, default_postprocess
from modelpool.deployments.manifest import SKLEARN_HANDLER, Manifest, split_handler
from modelpool.deployments.mar import EXTRA_KEY as MAR_EXTRA_KEY
from modelpool.deployments.roles import is_role, make_role_handler, role_module_attr

_IMPORT_LOCK = threading.Lock()


def load_handler(model_dir: Path, manifest: Manifest, context: Optional[ModelContext] = None) -> Handler:
    """Build the manifest's handler and initialize it (once) on ``model_dir``.

    The returned handler is ready to ``handle``; ``handler.context`` is ``context`` when given
    (so a caller can later set ``artifact_root`` on its own object). Every failure (import,
    missing attribute, initialize raising) is a RequestError on field "handler" (or the manifest
    field at fault) so registering a broken archive is a 400.
    """
    model_dir = Path(model_dir).resolve()
    handler = _make_handler(model_dir, manifest)
    if context is None:
        context = ModelContext(model_dir=model_dir, manifest=manifest)
    try:
        handler.initialize(context)
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError(
            f"handler {manifest.handler!r} of model {manifest.name}:{manifest.version} failed to "
            f"initialize: {type(exc).__name__}: {exc}", field="handler",
        ) from exc
    return handler


def _make_handler(model_dir: Path, manifest: Manifest) -> Handler:
    if is_role(manifest):  # a graph role (TRANSFORMER, ROUTER, ...): its own hooks, no predict
        target = _handler_target(model_dir, manifest, *role_module_attr(manifest))
        return make_role_handler(target, manifest, manifest.typed_parameters)
    if manifest.handler == SKLEARN_HANDLER:
        if manifest.parameters:
            raise RequestError("the 'sklearn' handler takes no parameters; drop them or write a class handler",
                               field="parameters")
        return SklearnHandler()
    target = _handler_target(model_dir, manifest, *split_handler(manifest.handler))
    return _wrap(target, manifest.handler, manifest.typed_parameters)


def _handler_target(model_dir: Path, manifest: Manifest, module_name: str, attr: str) -> Any:
    """``attr`` of the archive's ``module_name.py``; a 400 on ``handler`` when the module lacks it."""
    module = import_handler_module(model_dir, module_name, manifest)
    target = getattr(module, attr, None)
    if target is None:
        raise RequestError(f"{module_name}.py in the archive has no {attr!r}; fix the manifest's "
                           "handler or the module", field="handler")
    return target


def _wrap(target: Any, spec: str, parameters: Optional[dict[str, Any]] = None) -> Handler:
    """A Handler subclass is instantiated (with the manifest's typed parameters as keyword arguments, as
    Seldon hands them), a class with predict is adapted, a function wrapped (it has no constructor to take
    parameters: a manifest giving some is refused rather than ignored)."""
    parameters = parameters or {}
    if parameters and not isinstance(target, type):
        raise RequestError(f"the manifest gives parameters ({', '.join(parameters)}) but handler {spec!r} is not a "
                           "class; make it a class whose constructor takes them, or drop them", field="parameters")
    if isinstance(target, type):
        if not issubclass(target, Handler) and not callable(getattr(target, "predict", None)):
            torchserve = (" It has handle(data, context), TorchServe's and MMS's entry point: modelpool calls "
                          "predict(data) once per batch with the rows instead (and initialize(context) once)."
                          if callable(getattr(target, "handle", None)) else "")
            raise RequestError(f"class {spec!r} must subclass modelpool.deployments.handlers.Handler or "
                               f"define predict(data).{torchserve}", field="handler")
        try:
            instance = target(**parameters)  # Seldon's --parameters reach the model class's constructor
        except Exception as exc:
            given = f"the parameters {', '.join(parameters)}" if parameters else "no arguments"
            raise RequestError(f"could not create {spec!r} with {given}: {type(exc).__name__}: {exc}; "
                               "make the constructor take them as keyword arguments (with defaults)",
                               field="parameters" if parameters else "handler") from exc
        return instance if isinstance(instance, Handler) else _DuckHandler(instance)
    if callable(target):
        _check_one_argument(target, spec)
        return CallableHandler(target)
    raise RequestError(f"{spec!r} is a {type(target).__name__}; name a function or a class",
                       field="handler")


def _check_one_argument(fn: Callable[..., Any], spec: str) -> None:
    """A function handler is called as ``fn(data)``; one that cannot be (TorchServe's ``handle(data,
    context)``) is refused when it loads rather than on every request."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check ahead of the call
    try:
        signature.bind(None)
    except TypeError as exc:
        raise RequestError(
            f"function {spec!r} cannot be called as {getattr(fn, '__name__', 'fn')}(data) ({exc}): modelpool calls a "
            "function handler with one argument, the batch's rows, and takes its return value as the predictions. "
            "A TorchServe or MMS handle(data, context) does not fit: give context a default, or write a class "
            "with initialize(context) and predict(data)",
            field="handler",
        ) from None


def import_handler_module(model_dir: Path, module_name: str, manifest: Manifest) -> ModuleType:
    """Import ``model_dir/<module_name>.py`` under a unique name so models never collide.

    ``model_dir`` is on sys.path only while the module runs, so it can import sibling files at
    import time; those siblings are dropped from sys.modules afterwards so another model's
    ``utils.py`` is not mistaken for this one's.
    """
    root = Path(model_dir).resolve()
    path = (root / f"{module_name}.py").resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise RequestError(f"handler module {module_name}.py is not in the archive of "
                           f"{manifest.name}:{manifest.version}", field="handler")
    unique = f"modelpool_handler_{_slug(manifest.name)}_{_slug(manifest.version)}_{module_name}_" \
             f"{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(unique, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _IMPORT_LOCK:
        before = set(sys.modules)
        sys.path.insert(0, str(root))
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except ModuleNotFoundError as exc:
            sys.modules.pop(unique, None)
            raise RequestError(missing_import_message(f"{module_name}.py", exc.name, _requirements_file(manifest)),
                               field="handler") from exc
        except (Exception, SystemExit) as exc:
            sys.modules.pop(unique, None)
            raise RequestError(f"could not import {module_name}.py of model {manifest.name}:"
                               f"{manifest.version}: {type(exc).__name__}: {exc}",
                               field="handler") from exc
        finally:
            _restore_path(str(root))
            _forget_archive_modules(before, root, keep=unique)
    return module


def _requirements_file(manifest: Manifest) -> Optional[str]:
    """The requirements file a TorchServe archive names (TorchServe may pip-install it; modelpool does not)."""
    mar = manifest.extra.get(MAR_EXTRA_KEY)
    model = mar.get("model") if isinstance(mar, dict) else None
    value = model.get("requirementsFile") if isinstance(model, dict) else None
    return value if isinstance(value, str) and value else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _restore_path(entry: str) -> None:
    try:
        sys.path.remove(entry)
    except ValueError:
        pass  # the module removed it itself


def _forget_archive_modules(before: set[str], root: Path, keep: str) -> None:
    for name in set(sys.modules) - before - {keep}:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).resolve().is_relative_to(root):
            del sys.modules[name]


class _DuckHandler(Handler):
    """Adapts an object that has ``predict`` (and maybe the other hooks) but is no Handler."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def initialize(self, context: ModelContext) -> None:
        super().initialize(context)
        if callable(getattr(self.target, "initialize", None)):
            self.target.initialize(context)

    def preprocess(self, inputs: dict[str, np.ndarray]) -> Any:
        hook = getattr(self.target, "preprocess", None)
        return hook(inputs) if callable(hook) else super().preprocess(inputs)

    def predict(self, data: Any) -> Any:
        return self.target.predict(data)

    def postprocess(self, predictions: Any) -> dict[str, np.ndarray]:
        hook = getattr(self.target, "postprocess", None)
        return default_postprocess(hook(predictions)) if callable(hook) else super().postprocess(predictions)
