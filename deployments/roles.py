"""Handlers with a role in an inference graph other than MODEL: Seldon's TRANSFORMER, ROUTER, COMBINER and
OUTLIER_DETECTOR.

A role handler is a class in the archive (``handler: "module:Class"``, ``service_type`` in the manifest), made
with the manifest's typed parameters as keyword arguments and then ``load()`` (Seldon's hook) or
``initialize(context)`` (modelpool's), whichever it has. Each role has its hooks, named and called as Seldon's
Python server calls them, so a Seldon component class runs unchanged:

- TRANSFORMER: ``transform_input(X, features_names)`` and/or ``transform_output(X, features_names)``;
- ROUTER: ``route(X, features_names)`` -> a child's index (or its node name); optionally
  ``send_feedback(features, feature_names, reward, truth, routing)``;
- COMBINER: ``aggregate(Xs, features_names_list)`` over the outputs of its children;
- OUTLIER_DETECTOR: ``score(X, features_names)`` -> one score per row (attached to the answer, never changing it).

``X`` is the message's one tensor as an array, or a dict of named arrays when it has several; a hook that
takes one argument is called without the names. A hook's array answer keeps the message's tensor name, so
a transformer in front of a model keeps the input name the model was called with.

Called alone at its own model route (no graph), a role handler answers what it would add to a graph:
a transformer transforms, an outlier detector's answer is ``outlier_score``, a router's is ``route``;
a combiner needs children and says so.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Union

import numpy as np

from modelpool.deployments.errors import RequestError
from modelpool.deployments.handlers import Handler, ModelContext, count_rows
from modelpool.deployments.manifest import Manifest, split_handler

Message = dict[str, np.ndarray]
#: the hooks each role must have (one of them, for a TRANSFORMER)
ROLE_HOOKS: dict[str, tuple[str, ...]] = {
    "TRANSFORMER": ("transform_input", "transform_output"),
    "ROUTER": ("route",),
    "COMBINER": ("aggregate",),
    "OUTLIER_DETECTOR": ("score",),
}
OUTLIER_SCORE = "outlier_score"


def seldon_input(message: Message) -> Any:
    """Seldon's ``X``: the one tensor's array, or the named arrays when there are several."""
    if len(message) == 1:
        return next(iter(message.values()))
    return dict(message)


def as_message(value: Any, like: Message, hook: str, who: str) -> Message:
    """A hook's answer as named tensors: a dict as it is, an array under the name of ``like``'s one tensor."""
    if isinstance(value, dict):
        return {str(name): np.asarray(array) for name, array in value.items()}
    if value is None:
        raise RuntimeError(f"{who}: {hook} returned None; return an array or a dict of arrays")
    name = next(iter(like)) if len(like) == 1 else "output-0"
    return {name: np.asarray(value)}


def _takes_names(hook: Callable[..., Any]) -> bool:
    """True when a hook can be called as ``hook(X, features_names)`` (Seldon's signature)."""
    try:
        inspect.signature(hook).bind(None, None)
        return True
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): Seldon's two-argument form
        return True


class RoleHandler(Handler):
    """A role class from an archive, with its hooks called the way a graph (and Seldon) calls them."""

    def __init__(self, target: Any, role: str, spec: str) -> None:
        self.target = target
        self.role = role
        self.spec = spec
        self._hooks = {name: getattr(target, name) for name in ("transform_input", "transform_output", "route",
                                                                "aggregate", "score", "send_feedback")
                       if callable(getattr(target, name, None))}
        self._with_names = {name: _takes_names(hook) for name, hook in self._hooks.items()}

    def initialize(self, context: ModelContext) -> None:
        super().initialize(context)
        if callable(getattr(self.target, "initialize", None)):
            self.target.initialize(context)
        elif callable(getattr(self.target, "load", None)):
            self.target.load()  # Seldon's hook, called once before the first request

    def has(self, hook: str) -> bool:
        return hook in self._hooks

    def _call(self, hook: str, message: Message) -> Any:
        fn = self._hooks[hook]
        X = seldon_input(message)
        return fn(X, list(message)) if self._with_names[hook] else fn(X)

    # --- the hooks as the graph calls them ----------------------------------------------------

    def transform_input(self, message: Message) -> Message:
        if "transform_input" not in self._hooks:
            return message
        return as_message(self._call("transform_input", message), message, "transform_input", self.describe())

    def transform_output(self, message: Message) -> Message:
        if "transform_output" not in self._hooks:
            return message
        return as_message(self._call("transform_output", message), message, "transform_output", self.describe())

    def route(self, message: Message) -> Union[int, str]:
        choice = self._call("route", message)
        if isinstance(choice, np.ndarray) and choice.size == 1:
            choice = choice.reshape(-1)[0]
        if isinstance(choice, (np.integer,)):
            choice = int(choice)
        if isinstance(choice, bool) or not isinstance(choice, (int, str)):
            raise RuntimeError(f"{self.describe()}: route returned {choice!r}; return a child's index or node name")
        return choice

    def aggregate(self, messages: list[Message]) -> Message:
        fn = self._hooks["aggregate"]
        inputs = [seldon_input(m) for m in messages]
        value = fn(inputs, [list(m) for m in messages]) if self._with_names["aggregate"] else fn(inputs)
        names = {tuple(m) for m in messages}
        like = messages[0] if len(names) == 1 else {"output-0": None}
        return as_message(value, like, "aggregate", self.describe())

    def score(self, message: Message) -> list[float]:
        scores = np.asarray(self._call("score", message), dtype=float).reshape(-1)
        return [float(s) for s in scores]

    def send_feedback(self, message: Optional[Message], reward: float, truth: Optional[Message],
                      routing: Optional[int]) -> None:
        """Seldon's ``send_feedback(features, feature_names, reward, truth, routing)``."""
        fn = self._hooks.get("send_feedback")
        if fn is None:
            raise RequestError(f"{self.describe()} has no send_feedback; feedback reaches routers that define it",
                               status=400, field="routing")
        features = seldon_input(message) if message else None
        names = list(message) if message else []
        fn(features, names, reward, seldon_input(truth) if truth else None, routing)

    # --- called alone, at its own model route ----------------------------------------------------

    def predict(self, data: Any) -> Any:  # pragma: no cover - handle() below answers instead
        raise NotImplementedError

    def handle(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = count_rows(inputs)
        if self.role == "TRANSFORMER":
            return self.transform_output(self.transform_input(inputs))
        if self.role == "OUTLIER_DETECTOR":
            return {OUTLIER_SCORE: np.asarray(self.score(inputs))}
        if self.role == "ROUTER":
            choice = self.route(inputs)
            return {"route": np.asarray([choice] * rows)}
        raise RequestError(f"{self.describe()} is a COMBINER: it merges the answers of its children; "
                           "call it through a graph (PUT /graphs/{name})", status=400, field="model_name")


def make_role_handler(target: Any, manifest: Manifest, parameters: dict[str, Any]) -> RoleHandler:
    """Instantiate the role class named by the manifest and check it has its role's hooks; 400s name the field."""
    role, spec = manifest.service_type, manifest.handler
    if not isinstance(target, type):
        raise RequestError(f"a {role} handler is a class with {' or '.join(ROLE_HOOKS[role])}; {spec!r} is a "
                           f"{type(target).__name__}", field="handler")
    hooks = ROLE_HOOKS[role]
    if not any(callable(getattr(target, hook, None)) for hook in hooks):
        raise RequestError(f"class {spec!r} is declared a {role} but has no {' or '.join(hooks)}; add it, or set "
                           "service_type to the role it has", field="handler")
    try:
        instance = target(**parameters)
    except Exception as exc:
        given = f"the parameters {', '.join(parameters)}" if parameters else "no arguments"
        raise RequestError(f"could not create {spec!r} with {given}: {type(exc).__name__}: {exc}; "
                           "make the constructor take them as keyword arguments (with defaults)",
                           field="parameters" if parameters else "handler") from exc
    return RoleHandler(instance, role, spec)


def is_role(manifest: Manifest) -> bool:
    return manifest.service_type in ROLE_HOOKS


def role_module_attr(manifest: Manifest) -> tuple[str, str]:
    if manifest.handler == "sklearn":
        raise RequestError(f"the 'sklearn' handler is a MODEL, not a {manifest.service_type}; write a class with "
                           f"{' or '.join(ROLE_HOOKS[manifest.service_type])}", field="service_type")
    return split_handler(manifest.handler)
