"""Privacy accounting, budget ledger, audit report and key helpers."""
