"""The completion email in every locale that has a catalog.

The catalogs under ``locales/`` are ``.po`` files compiled in memory by ``importq.i18n``;
these tests read them the same way, render the email for each locale and check that
nothing is left in English, that numbers and dates follow the locale, that Arabic and
Hebrew are laid out right to left, and that user-supplied text is escaped in HTML.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from babel.dates import format_date
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from markupsafe import escape

from importq import i18n
from importq.delivery.mailer import REPORT_LABELS, CompletionFacts, render_completion_email
from importq.resources import resource_dir

ROOT = Path(__file__).resolve().parents[2]

LOCALES = ["ar", "bg", "ca", "de", "el", "en", "es", "fr", "he", "id", "it", "ja", "nl", "pt", "ro"]
NON_ENGLISH = [locale for locale in LOCALES if locale != "en"]
RTL = {"ar", "he"}

TOTAL = 1234567
FILE_NAME = "<b>x</b>.csv"
DATASET_LABEL = "CRM & <Kontakte>"
BATCH_URL = "https://importq.example/jobs/7f3c2a9e"  # the batch's page
# Two reports, signed like blob-storage URLs (the "&" must be escaped in HTML attributes).
# The URLs name the report kinds ("success", "failures"), which is why the "no English
# left" check removes URLs before looking for msgids.
REPORT_URLS = {
    "success": "https://blobs.example/reports/7f3c2a9e/success.csv?sv=2024-11-04&sig=Zm9v",
    "duplicates": None,
    "failures": "https://blobs.example/reports/7f3c2a9e/failures.csv?sv=2024-11-04&sig=YmFy",
}
EXPIRES_AT = datetime(2026, 12, 7, 17, 5, tzinfo=UTC)
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
URL = re.compile(r"https?://[^\s\"<>]+")


def facts(status: str = "completed") -> CompletionFacts:
    """The facts of a batch that ended ``status``; "dry-run": a dry run that completed."""
    return CompletionFacts(
        batch_id="7f3c2a9e",
        status="completed" if status == "dry-run" else status,
        dataset_label=DATASET_LABEL,
        file_name=FILE_NAME,
        total=TOTAL,
        successes=1234000,
        duplicates=500,
        failures=67,
        completed_at=datetime(2026, 11, 23, 17, 5, tzinfo=UTC),
        report_urls=REPORT_URLS,
        reports_expire_at=EXPIRES_AT,
        batch_url=BATCH_URL,
        dry_run=status == "dry-run",
    )


def render(locale: str, status: str = "completed") -> tuple[str, str, str]:
    """Subject, plain-text body and HTML body of the email in ``locale``."""
    message = render_completion_email(
        facts(status), locale=locale, to="ana@example.com", sender="importq@example.com"
    )
    assert isinstance(message, EmailMessage)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return str(message["Subject"]), text.get_content(), html.get_content()


def read_catalog(locale: str) -> Catalog:
    path = resource_dir("locales") / locale / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"
    with path.open("rb") as handle:
        return read_po(handle, locale=locale, domain=i18n.DOMAIN)


def singular(message_id: str | tuple[str, ...] | list[str]) -> str:
    """The msgid, or the singular msgid of a plural entry."""
    return message_id if isinstance(message_id, str) else message_id[0]


def template_msgids() -> set[str]:
    with (resource_dir("locales") / f"{i18n.DOMAIN}.pot").open("rb") as handle:
        return {singular(message.id) for message in read_po(handle) if message.id}


def headline(body: str) -> str:
    return next(line for line in body.splitlines() if line.strip())


# --- catalogs ------------------------------------------------------------------------


def test_every_locale_has_a_catalog() -> None:
    assert i18n.available_locales() == sorted(LOCALES)


def test_template_is_up_to_date_with_the_sources() -> None:
    """``locales/importq.pot`` holds exactly what ``pybabel extract -F babel.cfg`` finds."""
    with (ROOT / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)  # type: ignore[no-untyped-call]
    extracted = {
        singular(message_id)
        for _file, _line, message_id, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map
        )
    }
    assert extracted == template_msgids()


@pytest.mark.parametrize("locale", LOCALES)
def test_catalog_has_every_message_and_correct_headers(locale: str) -> None:
    catalog = read_catalog(locale)
    assert {singular(message.id) for message in catalog if message.id} == template_msgids()
    headers = dict(catalog.mime_headers)
    assert headers["Language"] == locale
    assert headers["Plural-Forms"] == Catalog(locale=locale).plural_forms
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("locale", NON_ENGLISH)
def test_catalog_is_fully_translated(locale: str) -> None:
    catalog = read_catalog(locale)
    assert not catalog.fuzzy
    for message in catalog:
        if not message.id:
            continue
        assert isinstance(message.id, str) and isinstance(message.string, str)
        assert message.string, f"{locale}: {message.id!r} is untranslated"
        if re.search(r"[A-Za-z]", PLACEHOLDER.sub("", message.id)):  # words, not a format
            assert message.string != message.id, f"{locale}: {message.id!r} is left in English"
        assert not message.fuzzy, f"{locale}: {message.id!r} is fuzzy"
        assert set(PLACEHOLDER.findall(message.string)) == set(PLACEHOLDER.findall(message.id))
        # The template's {% trans %} output is %-formatted and, in HTML, trusted as
        # markup: a stray "%" or "<"/"&" in a translation would break or inject, and a
        # '"' would end the page's attribute it stands in (data-…, placeholder).
        assert "%" not in PLACEHOLDER.sub("", message.string)
        assert not set('<>&"') & set(message.string)
    assert [errors for _message, errors in catalog.check()] == []


# --- subject and wording -------------------------------------------------------------


def test_english_subject_and_headline() -> None:
    subject, text, _html = render("en")
    assert subject == f"Import complete: {FILE_NAME}"
    assert headline(text) == f"Your import into {DATASET_LABEL} is complete."
    failed_subject, failed_text, _html = render("en", "failed")
    assert failed_subject == f"Import failed: {FILE_NAME}"
    assert headline(failed_text) == f"Your import into {DATASET_LABEL} failed."
    dry_subject, dry_text, _html = render("en", "dry-run")
    assert dry_subject == f"Dry run: {FILE_NAME}"
    assert headline(dry_text).startswith(f"Dry run of your import into {DATASET_LABEL}")
    assert "Would be imported: 1,234,000" in dry_text
    cancelled_subject, cancelled_text, _html = render("en", "cancelled")
    assert cancelled_subject == f"Import cancelled: {FILE_NAME}"
    assert headline(cancelled_text).startswith(f"Your import into {DATASET_LABEL} was cancelled")


@pytest.mark.parametrize("locale", NON_ENGLISH)
def test_subject_is_translated(locale: str) -> None:
    english, _text, _html = render("en")
    english_failed, _text, _html = render("en", "failed")
    subject, _text, _html = render(locale)
    failed, _text, _html = render(locale, "failed")
    assert subject != english
    assert failed != english_failed
    assert "Import complete" not in subject
    assert "Import failed" not in failed
    assert FILE_NAME in subject
    assert FILE_NAME in failed


@pytest.mark.parametrize("locale", LOCALES)
def test_each_ending_has_its_own_subject_and_wording(locale: str) -> None:
    """Completed, failed and cancelled batches and a dry run: four subjects, four
    headlines, each headline only in its own email."""
    endings = {
        status: render(locale, status) for status in ("completed", "failed", "cancelled", "dry-run")
    }
    assert len({subject for subject, _, _ in endings.values()}) == 4
    for status, (_subject, text, html) in endings.items():
        assert str(escape(headline(text))) in html
        for other, (_s, other_text, other_html) in endings.items():
            if other != status:
                assert headline(text) not in other_text
                assert str(escape(headline(text))) not in other_html


def email_msgids() -> set[str]:
    """The catalog's messages that an email uses (the pages' own words, such as "Import"
    or "no", are ordinary words in some languages' email text)."""
    with (resource_dir("locales") / f"{i18n.DOMAIN}.pot").open("rb") as handle:
        return {
            singular(message.id)
            for message in read_po(handle)
            if message.id
            and any(
                path.startswith("templates/email/") or path.endswith("delivery/mailer.py")
                for path, _line in message.locations
            )
        }


def _english_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """One pattern per English phrase the email's messages hold.

    Each msgid is split at its placeholders and every piece that has letters becomes a
    whole-word, case-insensitive pattern: "Your import into %(dataset)s failed." gives
    "Your import into" and "failed". Whole words, because some translations legitimately
    contain a msgid as part of a longer word (Catalan "Files" = rows, next to "File").
    """
    patterns = []
    for msgid in sorted(email_msgids()):
        for piece in PLACEHOLDER.split(msgid)[::2]:
            phrase = piece.strip(" .:()")
            if re.search(r"[A-Za-z]", phrase):
                pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.IGNORECASE)
                patterns.append((msgid, pattern))
    return patterns


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "dry-run"])
@pytest.mark.parametrize("locale", NON_ENGLISH)
def test_body_has_no_untranslated_message(locale: str, status: str) -> None:
    _subject, text, html = render(locale, status)
    # URLs are data, not wording: the report links end in "success.csv" and
    # "failures.csv" whatever the language. The user-supplied file name and dataset
    # label were chosen to contain none of the msgids.
    for part, body in (("text", text), ("html", html)):
        prose = URL.sub(" ", body)
        for msgid, pattern in _english_patterns():
            found = pattern.search(prose)
            assert found is None, f"{locale} {part}: {found[0]!r} of {msgid!r} is in English"


@pytest.mark.parametrize("locale", LOCALES)
def test_body_uses_the_catalog(locale: str) -> None:
    gettext = i18n.translations(locale).gettext

    def line(label: str, value: str) -> str:  # "File: …", as each language writes it
        return gettext("%(label)s: %(value)s") % {"label": label, "value": value}

    _subject, text, html = render(locale)
    for label in ("File", "Batch", "Finished", "Rows", "Imported", "Duplicates", "Failures"):
        assert line(gettext(label), "") in text
        assert f">{escape(gettext(label))}</th>" in html
    assert line(gettext("Batch details"), BATCH_URL) in text
    expires = format_date(EXPIRES_AT, "long", locale=i18n.babel_locale(locale))
    reports = gettext("Reports (links valid until %(expires)s):") % {"expires": expires}
    assert reports in text
    assert str(escape(reports)) in html
    for kind in ("success", "failures"):
        label, url = gettext(REPORT_LABELS[kind]), REPORT_URLS[kind]
        assert url is not None
        assert f"- {line(label, url)}" in text
        assert f">{escape(label)}</a>" in html
    headline_text = gettext("Your import into %(dataset)s is complete.") % {
        "dataset": DATASET_LABEL
    }
    assert headline(text) == headline_text


def test_french_puts_a_space_before_its_colons() -> None:
    _subject, text, _html = render("fr")
    assert "Fichier\u00a0: " in text and "Fichier:" not in text


@pytest.mark.parametrize("locale", LOCALES)
def test_content_language_header(locale: str) -> None:
    message = render_completion_email(
        facts(), locale=locale, to="ana@example.com", sender="importq@example.com"
    )
    # On the message itself: set_content() would drop a Content-* header set earlier.
    assert message["Content-Language"] == locale


# --- layout, numbers, links, escaping --------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
def test_direction(locale: str) -> None:
    _subject, _text, html = render(locale)
    assert f'<html lang="{locale}" ' in html
    if locale in RTL:
        assert 'dir="rtl"' in html
        assert "text-align: right" in html
        assert 'dir="ltr"' not in html
        assert "text-align: left" not in html
    else:
        assert 'dir="ltr"' in html
        assert "text-align: left" in html
        assert 'dir="rtl"' not in html
        assert "text-align: right" not in html


EXPLICIT_NUMBERS = {"de": "1.234.567", "fr": "1\u202f234\u202f567", "en": "1,234,567"}


@pytest.mark.parametrize("locale", LOCALES)
def test_numbers_are_formatted_for_the_locale(locale: str) -> None:
    _subject, text, html = render(locale)
    expected = format_decimal(TOTAL, locale=locale)
    if locale in EXPLICIT_NUMBERS:
        assert expected == EXPLICIT_NUMBERS[locale]
    assert expected in text
    assert expected in html
    successes = format_decimal(1234000, locale=locale)
    assert successes in text
    assert successes in html
    if expected != "1,234,567":
        assert "1,234,567" not in text


@pytest.mark.parametrize("locale", LOCALES)
def test_links_are_present(locale: str) -> None:
    _subject, text, html = render(locale)
    report_urls = [url for url in REPORT_URLS.values() if url]
    assert len(report_urls) == 2
    for url in [*report_urls, BATCH_URL]:
        assert url in text
        assert f'href="{escape(url)}"' in html
    # One list item per report that has a URL (there is no duplicates report here).
    assert html.count("<li><a href=") == 2


@pytest.mark.parametrize("locale", LOCALES)
def test_user_text_is_escaped_in_html(locale: str) -> None:
    _subject, text, html = render(locale)
    assert "&lt;b&gt;x&lt;/b&gt;.csv" in html
    assert "<b>" not in html
    assert "CRM &amp; &lt;Kontakte&gt;" in html
    assert "<Kontakte>" not in html
    assert FILE_NAME in text
    assert DATASET_LABEL in text


# --- locale negotiation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        (("fr-CA",), "fr"),
        (("fr_CA",), "fr"),
        (("pt-BR",), "pt"),
        (("he",), "he"),
        (("xx",), "en"),
        (("tlh-Latn",), "en"),
        ((None, ""), "en"),
        ((), "en"),
        (("xx", None, "de-AT"), "de"),
        (("ja", "de"), "ja"),
    ],
)
def test_resolve_locale(candidates: tuple[str | None, ...], expected: str) -> None:
    assert i18n.resolve_locale(*candidates) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fr-CA;q=0.5, de, en;q=0.8", ["de", "en", "fr-CA"]),
        ("it, nl;q=0.9, es", ["it", "es", "nl"]),  # equal weights keep the header's order
        ("ja;q=0, ar;q=0.3, *;q=0.1", ["ar"]),  # q=0 means "not this one"; "*" is no tag
        ("el;q=oops, bg;q=0.2", ["bg"]),
        ("", []),
        (None, []),
    ],
)
def test_parse_accept_language(header: str | None, expected: list[str]) -> None:
    assert i18n.parse_accept_language(header) == expected


def test_accept_language_picks_the_best_catalog() -> None:
    header = "xx-YY, fr-CA;q=0.9, de;q=0.95, en;q=0.1"
    assert i18n.resolve_locale(*i18n.parse_accept_language(header)) == "de"
