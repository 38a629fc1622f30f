"""Names of the privacy accountants fedlora offers, importable without Opacus.

Why it exists: settings are validated in processes that never train (a deployed node's
per-message ClientApp process, the CLI); they need the names, not the accountants.
"""

from __future__ import annotations

#: ``prv`` enforces budgets (upper end of its error interval); ``rdp`` is the cross-check.
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
