"""DALLMi Studio's engine: adapt a multi-label text classifier to a new domain from a few tagged
positives (DALLMi and our default, dallmi-anchored), score, calibrate and measure it.

The names below are the public Python API (README, "From Python"); each is imported from its
subpackage on first use, so `import dallmi_core` stays cheap (the worker and the CLI start fast).
The folders are the architecture (docs/ARCHITECTURE.md); nothing here imports streamlit.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptConfig": "dallmi_core.config",
    "SourceConfig": "dallmi_core.config",
    "DallmiError": "dallmi_core.errors",
    "ConfigError": "dallmi_core.errors",
    "DataError": "dallmi_core.errors",
    "RunStateError": "dallmi_core.errors",
    "StoreError": "dallmi_core.errors",
    "Corpus": "dallmi_core.data.corpus",
    "read_corpus": "dallmi_core.data.corpus",
    "Classifier": "dallmi_core.modeling.model",
    "new_classifier": "dallmi_core.modeling.model",
    "load_classifier": "dallmi_core.modeling.model",
    "save_classifier": "dallmi_core.modeling.model",
    "score_texts": "dallmi_core.modeling.scoring",
    "finetune_source": "dallmi_core.training.source",
    "adapt": "dallmi_core.training.adapt",
    "ap_report": "dallmi_core.evaluation.metrics",
    "open_services": "dallmi_core.app.services",
    "Services": "dallmi_core.app.services",
    "Project": "dallmi_core.store",
    "Document": "dallmi_core.store",
    "Run": "dallmi_core.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """PEP 562: import a public name's module when the name is first used."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dallmi_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
