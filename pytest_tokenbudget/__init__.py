"""pytest-tokenbudget: LLM token spend as a tested, reviewable property of an agent codebase."""

from __future__ import annotations

from .plugin import BudgetExceeded
from .records import LLMCall, ToolCall, Usage

__all__ = ["BudgetExceeded", "LLMCall", "ToolCall", "Usage"]
__version__ = "0.1.0"
