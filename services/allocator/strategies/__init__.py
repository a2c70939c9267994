"""Allocation strategies. Every module in this package is imported on start-up, and each
`Strategy` subclass registers itself by name: a new strategy is one new module here."""

from __future__ import annotations

import importlib
import pkgutil

from services.allocator.core import STRATEGIES, Strategy, StrategyConfig


def load_all() -> dict[str, type[Strategy]]:
    """Import every strategy module and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return STRATEGIES


def config_models() -> list[type[StrategyConfig]]:
    return [strategy.config_model for strategy in load_all().values()]
