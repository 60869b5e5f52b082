"""How many examples the property tests try: the everyday suite's, or HYPOTHESIS_PROFILE=thorough.

The everyday profile (`default`: `scripts/test`, CI) tries enough examples to find what each
property test was written for, a few hundred where a test guards input from outside (the
receiver, templates, settings); `thorough` tries several times more, for a release or after
changing what a property test covers. tests/conftest.py loads the profile; a test that sets
its own count asks `examples(everyday, thorough)`.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
PROFILES = ("default", "thorough")
# Tests that keep Hypothesis's own count (100) get this many in the thorough profile.
settings.register_profile("thorough", max_examples=1000)


def examples(everyday: int, thorough: int) -> int:
    """The number of examples for this run's profile."""
    if PROFILE not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: use one of {', '.join(PROFILES)}")
    return thorough if PROFILE == "thorough" else everyday
