"""Static discovery: the instances a config lists, never changing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._protocols import Instance

__all__ = ["StaticDiscovery"]


class StaticDiscovery:
    """Instances per service name, fixed at construction."""

    __slots__ = ("_instances",)

    def __init__(self, instances: Mapping[str, Sequence[Instance]]) -> None:
        self._instances = {name: tuple(items) for name, items in instances.items()}

    def instances(self, service: str) -> Sequence[Instance]:
        return self._instances.get(service, ())
