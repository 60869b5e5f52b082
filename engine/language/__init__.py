"""The rule language: rule files -> loaded rules -> verdicts and rendered actions.

No network, no database, no server: `check`, `test`, `replay` and the worker share it."""
