"""The trading coach: voxgate with ten micro-tools, a trader's notes and an alert feed.

Run it from the repository root with ``python -m examples.trading_coach`` (the offline local
engine) or ``python -m examples.trading_coach --backend openai`` (``OPENAI_API_KEY`` set). See
``examples/trading_coach/README.md``.
"""
