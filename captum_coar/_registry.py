"""Names to objects: one rule for every ``resolve_*`` function of the package.

Contract
--------
A :class:`Registry` maps lower-case names (and aliases) to factories for one kind of object
(ablation strategies, output functions, samplers, solvers). :meth:`Registry.resolve` returns an
instance of the kind unchanged, builds the object for a registered name (matched without
regard to case, ``-`` or ``_``), and otherwise raises with the one message format of
:mod:`captum_coar._checks`: ``TypeError`` for a value of another type, ``ValueError`` for an
unknown name, listing the names allowed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, Tuple, Type, TypeVar, Union

from ._checks import fail, fail_type

__all__ = ["Registry"]

T = TypeVar("T")


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Registry(Generic[T]):
    """Names -> factories for instances of ``kind``.

    Args:
        argument: the argument name used in messages (``"ablation"``, ``"solver"``, ...).
        kind: the base class; instances of it pass through :meth:`resolve`.
        instance_hint: how to build an instance by hand, for the message.
    """

    def __init__(self, argument: str, kind: Union[Type[T], Tuple[Type[Any], ...]],
                 instance_hint: str = "") -> None:
        self.argument = argument
        self.kind = kind
        self.instance_hint = instance_hint
        self._factories: Dict[str, Callable[..., T]] = {}
        self._names: List[str] = []

    def register(self, name: str, factory: Callable[..., T], *aliases: str) -> None:
        """Register ``factory`` under ``name`` (listed in messages) and ``aliases`` (not listed)."""
        self._names.append(name)
        for key in (name,) + aliases:
            self._factories[_key(key)] = factory

    @property
    def names(self) -> List[str]:
        """The registered names, in registration order."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._factories

    def allowed(self) -> str:
        kind_names = (self.kind.__name__ if isinstance(self.kind, type)
                      else " or ".join(k.__name__ for k in self.kind))
        text = f"one of {self._names} or a {kind_names} instance"
        return text + (f" (e.g. {self.instance_hint})" if self.instance_hint else "")

    def resolve(self, value: Any, **kwargs: Any) -> T:
        """``value`` if it is an instance of the kind, else the object registered as ``value``."""
        if isinstance(value, self.kind):
            return value
        if not isinstance(value, str):
            raise fail_type(self.argument, self.allowed(), value)
        factory = self._factories.get(_key(value))
        if factory is None:
            raise fail(self.argument, self.allowed(), value)
        return factory(**kwargs)
