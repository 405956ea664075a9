"""loraroute: many LoRA adapters on one shared base model.

Subpackages:
- :mod:`loraroute.registry`: versioned, content-addressed adapter store.
- :mod:`loraroute.router`: embedding router that picks an adapter per request.
- :mod:`loraroute.agents`: runtime and LangChain chat model.

Cross-cutting pieces live here: :mod:`loraroute.settings` (one place for every setting),
:mod:`loraroute.models` (resolving and fingerprinting base models and embedders) and
:mod:`loraroute.cli` (the ``adapters`` command group).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
