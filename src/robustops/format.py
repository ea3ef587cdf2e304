"""How RobustOps writes a share for people: one formatter for percentages and one for
percentage points, so the CLI, the reports, the gate and the audit all write ``12.5%`` the
same way.

A bottom-level module: it imports nothing from RobustOps, so every layer may use it.
"""

from __future__ import annotations

__all__ = ["percent", "points"]


def percent(share: float, digits: int = 1, *, significant: bool = False) -> str:
    """A share (1.0 is 100%) as a percentage.

    ``digits`` decimals (0.125 → ``12.5%``); with ``significant``, ``digits`` significant
    digits and no trailing zeros instead (``percent(0.2, 4, significant=True)`` → ``20%``,
    for budgets such as a share of the words).
    """
    if significant:
        return f"{100 * share:.{digits}g}%"
    return f"{share:.{digits}%}"


def points(share: float, digits: int = 1, *, sign: bool = False, unit: bool = True) -> str:
    """A difference of shares in percentage points: 0.031 → ``3.1 points``; ``sign`` writes
    ``+3.1 points``; ``unit=False`` leaves out `` points`` (for a bracketed interval)."""
    text = f"{100 * share:{'+' if sign else ''}.{digits}f}"
    return f"{text} points" if unit else text
