"""The `secrets` namespace templates see, and masking of secret values in every output.

Rule files never hold secret values: `{{ secrets.NAME }}` reads the environment
variable `SECRET_NAME` (config.secret_variables), and nothing else — the webhook
signing secret and database credentials are out of reach. Everything shown to a
person (delivery log, CLI output, logs) goes through `Masker.mask`, which finds
each secret as it is and in the forms the engine itself may write it in: percent-
encoded (in a URL or form) and JSON-escaped (in a JSON body). Templates cannot
transform a secret (engine.language.templates.secret_use), so these are all the forms there are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter values would mask ordinary text ("1", "id"); such a value is no secret.
MIN_MASKED_LENGTH = 4


class Secrets(Mapping[str, str]):
    """`secrets.NAME` in templates.

    In a dry run (`placeholders=True`) a secret that is not set reads as `***`,
    so rule tests pass on a laptop or in CI that holds no secrets; a live run
    has the variable or fails the action with a message naming it.
    """

    def __init__(self, values: Mapping[str, str], *, placeholders: bool = False) -> None:
        self._values = dict(values)
        self._placeholders = placeholders

    def __getitem__(self, name: str) -> str:
        if name in self._values:
            return self._values[name]
        if self._placeholders:
            return MASK
        raise KeyError(name)

    @property
    def placeholders(self) -> bool:
        """True in dry runs, where unset secrets read as `***`."""
        return self._placeholders

    def __contains__(self, name: object) -> bool:
        return self._placeholders or name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:  # never the values
        return f"Secrets({sorted(self._values)})"


class Masker:
    """Replaces every known secret value with `***` in strings and nested data."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms = {form for value in values if len(value) >= MIN_MASKED_LENGTH for form in written_forms(value)}
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted(forms, key=len, reverse=True)

    def mask(self, value: Any) -> Any:
        if not self._values:
            return value
        if isinstance(value, str):
            for secret in self._values:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {key: self.mask(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask(item) for item in value]
        return value


def written_forms(value: str) -> set[str]:
    """`value` as it is, percent-encoded (path, query and form styles) and JSON-escaped."""
    return {
        value,
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
        quote_plus(value, safe="/"),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
