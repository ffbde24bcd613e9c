"""Developer tools run from a checkout (benchmarks, profiling, evaluation); not installed.

Each tool is a script (``python3 tools/bench.py ...``); :mod:`tools.common` holds what they
share.
"""
