"""``python -m pytest_tokenbudget``: the ``tokenbudget`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
