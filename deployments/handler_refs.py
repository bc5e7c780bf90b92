"""Handler references as TorchServe and MMS write them, resolved against an archive's own files.

A ``.mar`` manifest and the ``handler=`` parameter of a registration name a handler the way
TorchServe's model loader reads it: ``module``, ``module.py``, ``some/dir/module.py`` (only the base
name counts) or any of these followed by ``:function``. Without a function TorchServe takes the
module's ``handle`` if it has one, else the one class the module defines. modelpool's manifest
always holds the resolved ``module:attr`` (or ``sklearn``), so resolution happens here, once, by
reading the handler's source with :mod:`ast`: nothing from an archive is imported or run while its
manifest is read (that happens in the replica, or the throwaway task of a registration's load check).

Names TorchServe resolves to its own built-in handlers (``image_classifier``, ...) are refused with
a message that says why: they are ``ts.torch_handler`` modules that need torch and TorchServe.
"""
from __future__ import annotations

import ast
from typing import Iterable, Optional, Protocol

from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import SKLEARN_HANDLER, is_identifier

#: ``ts.torch_handler`` modules a handler name falls back to in TorchServe when the archive has no such file.
TORCHSERVE_BUILTIN_HANDLERS = frozenset({
    "base_handler", "image_classifier", "image_segmenter", "object_detector", "text_classifier",
    "text_classifier_kf", "text_handler", "vision_handler", "densenet_handler", "dali_handler",
    "dali_image_classifier", "dali_image_segmenter", "language_translator", "micro_batching_handler",
    "composable_handler", "vllm_handler", "trt_llm_handler",
})
#: TorchServe looks for this function when a handler names only its module.
DEFAULT_FUNCTION = "handle"
MAX_HANDLER_SOURCE_BYTES = 4 * 1024**2


class ArchiveFiles(Protocol):
    """Read access to the files of an archive (a zip or a directory), by archive-relative path."""

    def exists(self, name: str) -> bool: ...

    def read(self, name: str, limit: int) -> bytes:
        """The file's bytes; a RequestError when it is larger than ``limit``."""
        ...

    def names(self) -> list[str]:
        """Every regular file, as ``/``-separated relative paths."""
        ...


def resolve_handler(spec: str, files: ArchiveFiles, field: str) -> str:
    """``spec`` (TorchServe/MMS form) as modelpool's ``sklearn`` or ``module:attr``; errors name ``field``."""
    if spec == SKLEARN_HANDLER:
        return spec
    module, attr = _parse(spec, field)
    source_name = f"{module}.py"
    if not files.exists(source_name):
        raise _missing_module(spec, module, files, field)
    if attr:
        return f"{module}:{attr}"
    source = files.read(source_name, MAX_HANDLER_SOURCE_BYTES)
    return f"{module}:{_entry_point(module, source, field)}"


def _parse(spec: str, field: str) -> tuple[str, str]:
    """("module", "attr" or "") from any of TorchServe's spellings; a RequestError when it is none."""
    path, _, attr = spec.strip().partition(":")
    module = path.replace("\\", "/").rsplit("/", 1)[-1]
    if module.endswith(".py"):
        module = module[:-3]
    if not is_identifier(module) or (attr and not is_identifier(attr)):
        raise RequestError(
            f"handler {spec!r} must name a Python file of the archive as 'module', 'module.py' or "
            "'module:function' (MMS and TorchServe's forms), or be 'sklearn'; module and function are "
            "letters, digits and '_'",
            field=field,
        )
    return module, attr


def _missing_module(spec: str, module: str, files: ArchiveFiles, field: str) -> RequestError:
    if module in TORCHSERVE_BUILTIN_HANDLERS:
        return RequestError(
            f"handler {spec!r} is TorchServe's built-in handler ts.torch_handler.{module}, which needs torch and "
            "TorchServe and does not run here; put a Python handler in the archive (torch-model-archiver "
            "--handler my_handler.py) with predict(data), see deployments/handlers.py, and name it",
            field=field,
        )
    handlers = [n[:-3] for n in files.names() if n.endswith(".py") and "/" not in n]
    present = ", ".join(sorted(handlers)[:20]) or "none"
    return RequestError(
        f"handler {spec!r} names {module}.py, which is not in the archive (Python files at its root: {present}); "
        "name one of them or rebuild the archive with the handler included",
        field=field,
    )


def _entry_point(module: str, source: bytes, field: str) -> str:
    """TorchServe's rule, read statically: the module's ``handle``, else its one class."""
    try:
        tree = ast.parse(source, filename=f"{module}.py")
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, SyntaxError) else ""
        raise RequestError(f"handler module {module}.py is not valid Python{where}; fix it and rebuild the archive",
                           field=field) from None
    bound, classes = _top_level_names(tree.body)
    if DEFAULT_FUNCTION in bound:
        return DEFAULT_FUNCTION
    if len(classes) == 1:
        return classes[0]
    found = f"{len(classes)} classes ({', '.join(classes)})" if classes else "no class"
    raise RequestError(
        f"handler {module!r} does not say which entry point to run: {module}.py has no '{DEFAULT_FUNCTION}' function "
        f"and {found}; name it as '{module}:Name'",
        field=field,
    )


def _top_level_names(body: Iterable[ast.stmt]) -> tuple[set[str], list[str]]:
    """Names a module binds when it runs (through if/try/with blocks too), and the classes it defines."""
    bound: set[str] = set()
    classes: list[str] = []
    for node in body:
        if isinstance(node, ast.ClassDef):
            bound.add(node.name)
            if node.name not in classes:
                classes.append(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(t.id for t in targets if isinstance(t, ast.Name))
        for block in _blocks(node):
            inner_bound, inner_classes = _top_level_names(block)
            bound |= inner_bound
            classes += [c for c in inner_classes if c not in classes]
    return bound, classes


def _blocks(node: ast.stmt) -> list[list[ast.stmt]]:
    """Statement blocks that still run at module level (not function or class bodies)."""
    if isinstance(node, (ast.If, ast.For, ast.While)):
        return [node.body, node.orelse]
    if isinstance(node, ast.With):
        return [node.body]
    if isinstance(node, ast.Try):
        return [node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody]
    return []


def missing_import_message(module_file: str, missing: Optional[str], requirements: Optional[str] = None) -> str:
    """Why a handler module failed to import for lack of a package, and what to do about it."""
    top = (missing or "").split(".")[0]
    if top == "ts":
        return (f"handler module {module_file} imports 'ts', TorchServe's own package (its BaseHandler and built-in "
                "handlers), which does not run here; write the handler on modelpool's contract instead: a class with "
                "initialize(context) and predict(data), see deployments/handlers.py")
    hint = (f" (modelpool does not install the archive's requirements file {requirements!r})"
            if requirements else "")
    if top in ("torch", "torchvision", "torchaudio", "torchtext"):
        return (f"handler module {module_file} needs '{top}', which is not installed on this server{hint}; install it "
                f"on every node of the cluster (pip install {top}) or use a handler that does not need it")
    return (f"handler module {module_file} imports '{missing}', which is not installed on this server nor in the "
            f"archive{hint}; install it on every node (pip install ...) or ship it in the archive beside the handler")
