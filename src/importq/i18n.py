"""Translations: babel catalogs read from ``locales/<lang>/LC_MESSAGES/importq.po``.

Catalogs are compiled in memory from the ``.po`` files when first used, so no compiled
binary is ever kept in the repository. An unknown locale falls back to English.
"""

from __future__ import annotations

import io
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

from importq.resources import resource_dir

DOMAIN = "importq"
DEFAULT_LOCALE = "en"
RTL_LOCALES = frozenset({"ar", "he"})


def available_locales() -> list[str]:
    """The locales that have a catalog."""
    root = resource_dir("locales")
    return sorted(p.parent.parent.name for p in root.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def resolve_locale(*candidates: str | None) -> str:
    """The first candidate with a catalog (``fr-CA`` matches ``fr``), else English."""
    known = set(available_locales())
    for candidate in candidates:
        if not candidate:
            continue
        for tag in (candidate, candidate.replace("-", "_").split("_")[0].lower()):
            if tag in known:
                return tag
    return DEFAULT_LOCALE


def parse_accept_language(header: str | None) -> list[str]:
    """Language tags of an Accept-Language header, most preferred first."""
    if not header:
        return []
    weighted = []
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            weighted.append((quality, tag))
    return [tag for _, tag in sorted(weighted, key=lambda item: -item[0])]


@lru_cache(maxsize=32)
def translations(locale: str) -> NullTranslations:
    """The compiled catalog of ``locale``; English needs none."""
    path = resource_dir("locales") / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.exists():
        return NullTranslations()
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def babel_locale(locale: str) -> Locale:
    try:
        return Locale.parse(locale)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LOCALE)
