"""Registries: one per implementation choice, owning its names and implementations.

A choice with several implementations (router score function, expert backend, FP8 recipe, attention kind, EP
exchange, EP payload, remat policy) is ONE `Registry`, defined next to its implementations:

    SCORE_FUNCS = Registry("score_func", "router score function")     # layers/moe/router.py
    SCORE_FUNCS.register("sigmoid", jax.nn.sigmoid)

The registry names the `ModelConfig` field it serves; `ModelConfig` validates that field against the registry's
keys (config.py asks `CHOICES`, which every Registry joins when it is created). The registries are created by
the modules that hold the implementations, and `import dsv3_jax` imports all of them (through the model), so
a ModelConfig is never validated against a half-filled table. Adding an implementation is one `register` call
in the registry's file next to (or importing) the new code; nothing else lists the names.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

# ModelConfig field -> the Registry whose keys are its allowed values.
CHOICES: dict[str, "Registry"] = {}
_DECORATOR = object()  # register(name) without an implementation returns a decorator


class Registry:
    """Name -> implementation for one ModelConfig field. Also accepts names that are not implementations but
    are resolved at set-up (`aliases`, e.g. moe_impl="auto"); `get` refuses those."""

    def __init__(self, field: str, what: str, aliases: tuple[str, ...] = ()):
        if field in CHOICES:
            raise RuntimeError(f"a registry for ModelConfig.{field} exists already ({CHOICES[field].what})")
        self.field, self.what, self.aliases = field, what, tuple(aliases)
        self._impls: dict[str, Any] = {}
        self._rules: list[Callable] = []
        CHOICES[field] = self

    def register(self, name: str, impl: Any = _DECORATOR) -> Any:
        """register(name, impl), or @register(name) as a decorator. A name is registered once."""
        def add(obj):
            if name in self._impls or name in self.aliases:
                raise ValueError(f"{self.what}: {name!r} is registered already")
            self._impls[name] = obj
            return obj
        return add if impl is _DECORATOR else add(impl)

    def rule(self, fn: Callable) -> Callable:
        """Add a cross-field check fn(cfg) (raises ValueError naming the fields) that ModelConfig runs after
        the field itself is known to be valid; usable as a decorator."""
        self._rules.append(fn)
        return fn

    def validate(self, cfg) -> None:
        """Check cfg.<field> against the keys, then this registry's cross-field rules."""
        self.check(getattr(cfg, self.field))
        for fn in self._rules:
            fn(cfg)

    def names(self) -> tuple[str, ...]:
        """Every value the config field accepts: the implementations, then the set-up aliases."""
        return tuple(self._impls) + self.aliases

    def __contains__(self, name: str) -> bool:
        return name in self._impls or name in self.aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._impls)

    def get(self, name: str) -> Any:
        """The implementation of `name`; a ValueError names the field and the known values otherwise."""
        if name in self._impls:
            return self._impls[name]
        if name in self.aliases:
            raise ValueError(f"ModelConfig.{self.field}={name!r} must be resolved before use "
                             f"(dsv3_jax.layers.resolve.resolve_config; DeepSeekV3 does it in setup); implementations: {tuple(self._impls)}")
        raise ValueError(f"ModelConfig.{self.field}: unknown {self.what} {name!r}; expected one of {self.names()}")

    def check(self, name: str) -> None:
        """ValueError naming the field unless `name` is a registered implementation or alias."""
        if name not in self:
            raise ValueError(f"ModelConfig.{self.field}: must be one of {self.names()}, got {name!r}")


def choice_fields() -> dict[str, tuple[str, ...]]:
    """{field: allowed values} of every registry (for --help texts and docs)."""
    return {f: r.names() for f, r in CHOICES.items()}


def implementations(field: str) -> Callable[[str], Any]:
    """The `get` of the registry serving ModelConfig.`field`."""
    return CHOICES[field].get
