"""DALLMi Studio's engine: data, model, the DALLMi method, metrics and the `dallmi` command.

Nothing in this package imports streamlit (tests/test_architecture.py checks it).
"""

__version__ = "0.1.0"
