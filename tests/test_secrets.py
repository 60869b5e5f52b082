"""Masking secret values in everything shown to people."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

from engine.secrets import MASK, Masker, Secrets


def test_masker_replaces_secret_values_in_nested_data() -> None:
    masker = Masker(["tok-123456", "hunter22"])
    shown = masker.mask({"a": "Bearer tok-123456", "b": ["x hunter22 y", 5], "c": None})
    assert shown == {"a": f"Bearer {MASK}", "b": [f"x {MASK} y", 5], "c": None}


def test_longer_secret_is_masked_whole_when_it_contains_a_shorter_one() -> None:
    masker = Masker(["abcd", "abcdefgh"])
    assert masker.mask("key=abcdefgh") == f"key={MASK}"


def test_very_short_values_are_not_masked_so_text_stays_readable() -> None:
    assert Masker(["1", "ab"]).mask("order 1 of ab") == "order 1 of ab"


def test_secrets_mapping_never_shows_values_in_its_repr() -> None:
    secrets = Secrets({"CRM_TOKEN": "tok-123456"})
    assert "tok-123456" not in repr(secrets)
    assert secrets["CRM_TOKEN"] == "tok-123456"


def test_percent_encoded_and_json_escaped_forms_of_a_secret_are_masked() -> None:
    secret = 'p@ss w/rd"ü\\x'
    masker = Masker([secret])
    forms = [
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    ]
    for form in forms:
        assert masker.mask(f"error at ?token={form}&x=1") == f"error at ?token={MASK}&x=1", form
    assert masker.mask({"body": json.dumps({"token": secret})}) == {"body": f'{{"token": "{MASK}"}}'}
