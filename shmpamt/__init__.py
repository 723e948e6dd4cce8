"""shmpamt: a torture-test rig for the TDX Dynamic PAMT refcount helpers.

The public API (see docs/library.md)::

    import shmpamt

    result = shmpamt.explore("rfc-norecheck", executions=300, seed=1)
    result.check()  # raises shmpamt.ViolationFound carrying "shmpamt replay ..."

    config = shmpamt.ExploreConfig("kai", budget=5.0)  # validated here, once
    shmpamt.run(config)

Every name below is imported on first use, not here: CPU processes, the module
daemon and the pytest plugin all import this package, and none of them should
pay for cffi, posix_ipc and the atomics binding before they need them.

"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

__version__ = "0.1.0"

if TYPE_CHECKING:
    from shmpamt.api import Result as Result
    from shmpamt.api import ViolationFound as ViolationFound
    from shmpamt.api import explore as explore
    from shmpamt.api import replay as replay
    from shmpamt.api import run as run
    from shmpamt.api import stress as stress
    from shmpamt.api import variant_spec as variant_spec
    from shmpamt.config import ExploreConfig as ExploreConfig
    from shmpamt.config import ReplayConfig as ReplayConfig
    from shmpamt.config import Scenario as Scenario
    from shmpamt.config import StressCampaign as StressCampaign
    from shmpamt.config import StressConfig as StressConfig
    from shmpamt.errors import ShmpamtError as ShmpamtError
    from shmpamt.errors import UsageError as UsageError
    from shmpamt.explorer.session import Session as Session
    from shmpamt.machine.kernel import Kernel as Kernel
    from shmpamt.variants.base import PamtVariant as PamtVariant

#: public name -> module that defines it
_LAZY: Final[dict[str, str]] = {
    "stress": "shmpamt.api",
    "explore": "shmpamt.api",
    "replay": "shmpamt.api",
    "run": "shmpamt.api",
    "variant_spec": "shmpamt.api",
    "Result": "shmpamt.api",
    "ViolationFound": "shmpamt.api",
    "StressConfig": "shmpamt.config",
    "StressCampaign": "shmpamt.config",
    "ExploreConfig": "shmpamt.config",
    "ReplayConfig": "shmpamt.config",
    "Scenario": "shmpamt.config",
    "ShmpamtError": "shmpamt.errors",
    "UsageError": "shmpamt.errors",
    "PamtVariant": "shmpamt.variants.base",
    "Kernel": "shmpamt.machine.kernel",
    "Session": "shmpamt.explorer.session",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        # AttributeError lets ``from shmpamt import tdx`` fall through to the submodule.
        raise AttributeError(f"module 'shmpamt' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
