"""The built-in strategy files (LONG, SHORT, SCALP): one file per strategy, loaded by strategy_loader.py.

Every ``*.py`` here not starting with ``_`` is a strategy; ``_``-files are helpers they share.
"""
