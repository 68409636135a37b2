"""The web pages in a real browser: Debian's Chromium driven by Playwright, against a real
``importq serve``.

Controls are found by their accessible names, as a screen reader finds them: these
names are part of the pages' contract.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, FilePayload, Page, async_playwright, expect

from accounting import count, slow_down_inserts
from conftest import new_user
from helpers import api_client, csv_text, entrance, read_csv_report
from importq.services import Services
from processes import serving

CHROMIUM = shutil.which("chromium")
# Waits for the service's work (an import, its reports), not for the page's own speed.
WORK_MS = 60_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.fail(
            "Debian's Chromium is not installed: scripts/test installs it when run as root "
            "(apt-get install chromium)"
        )
    async with async_playwright() as playwright:
        # As root (CI), Chromium's sandbox cannot start; the pages are the service's own.
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
def site(database_url: str, tmp_path: Path) -> Iterator[str]:
    """``importq serve`` on the test's database, its worker in process."""
    env = {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_CHUNK_SIZE": "5",
    }
    with serving(env, tmp_path / "serve.log") as (url, _):
        yield url


async def _sign_in(page: Page, site: str, token: str) -> None:
    await page.goto(f"{site}/import")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fimport$"))
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{site}/import")


def _upload(name: str, rows: list[dict[str, str]]) -> FilePayload:
    return {"name": name, "mimeType": "text/csv", "buffer": csv_text(rows).encode()}


async def _wait_final(page: Page) -> None:
    """The bar reaches 100 only once the batch is final and its report links are shown."""
    await expect(page.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100", timeout=WORK_MS
    )


async def test_preview_dry_run_import_reports_and_notifications(
    browser: Browser, site: str, services: Services, tmp_path: Path
) -> None:
    _, token = await new_user(services, "walker")
    page = await browser.new_page()
    await _sign_in(page, site, token)

    # The preview names a missing mandatory column before anything is staged.
    lacking = [
        {k: v for k, v in entrance(f"l{i}").items() if k != "w3geo:longitude"} for i in range(3)
    ]
    await page.get_by_label("Dataset").select_option("entrances")
    await page.get_by_label("File").set_input_files(_upload("lacking.csv", lacking))
    await expect(page.locator("#preview")).to_contain_text(
        "Mandatory columns missing: w3geo:longitude"
    )
    assert await count(services, "SELECT count(*) FROM batches") == 0

    rows = [entrance(f"b{i}") for i in range(12)]
    rows[3]["w3geo:latitude"] = "north"
    rows.append(entrance("b1"))  # a duplicate of line 3
    await page.get_by_label("File").set_input_files(_upload("caves.csv", rows))
    refused = page.locator("#preview td.refused", has_text='"north" is not a number')
    await expect(refused).to_have_count(1)
    await expect(page.locator("#preview")).to_contain_text("Every mandatory column is there.")

    # A dry run lands on its page and ends, with nothing written.
    await page.get_by_role("button", name="Dry run").click()
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    await _wait_final(page)
    await expect(page.locator("#status-words")).to_have_text("Dry run: Completed")
    assert await count(services, "SELECT count(*) FROM entrances") == 0

    # The import itself: the bar reaches 100 with the three reports to download.
    await page.goto(f"{site}/import")
    await page.get_by_label("File").set_input_files(_upload("caves.csv", rows))
    await page.get_by_role("button", name="Import", exact=True).dblclick()  # one import
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    await _wait_final(page)
    await expect(page.locator("#status-words")).to_have_text("Completed")
    assert await count(services, "SELECT count(*) FROM batches WHERE NOT dry_run") == 1
    await expect(page.locator("#count-successes")).to_have_text("11")
    reports = {}
    for name in ("Successes report", "Duplicates report", "Failures report"):
        async with page.expect_download() as downloading:
            await page.get_by_role("link", name=name).click()
        download = await downloading.value
        saved = tmp_path / f"{name}.csv"
        await download.save_as(saved)
        reports[name] = read_csv_report(saved.read_bytes())
    assert len(reports["Successes report"]) == 12  # the header and 11 rows
    assert [row[0] for row in reports["Duplicates report"][1:]] == ["14"]
    assert reports["Failures report"][1][1] == 'w3geo:latitude: "north" is not a number'
    assert await count(services, "SELECT count(*) FROM entrances") == 11

    # Both batches told their end: two unread notifications, then none.
    bell = page.get_by_role("button", name=re.compile("Notifications"))
    await expect(bell).to_have_accessible_name("Notifications (2)", timeout=WORK_MS)
    await bell.click()
    await expect(page.locator("#notifications-list li")).to_have_count(2)
    await page.get_by_role("button", name="Mark all as read").click()
    await expect(bell).to_have_accessible_name("Notifications")

    # The jobs page lists both, each row naming its file.
    await page.get_by_role("link", name="Jobs").click()
    table = page.get_by_role("table")
    await expect(table.get_by_role("row", name=re.compile("caves.csv"))).to_have_count(2)


async def test_a_running_import_is_cancelled_from_its_page(
    browser: Browser, site: str, services: Services
) -> None:
    _, token = await new_user(services, "stopper")
    await slow_down_inserts(services, 1.0)  # each chunk takes a second
    page = await browser.new_page()
    await _sign_in(page, site, token)
    rows = [entrance(f"s{i}") for i in range(60)]  # 12 chunks: several seconds of work
    await page.get_by_label("File").set_input_files(_upload("slow.csv", rows))
    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Cancel").click()
    await _wait_final(page)
    await expect(page.locator("#status-words")).to_have_text("Cancelled")
    await expect(page.get_by_role("link", name="Failures report")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    assert await count(services, "SELECT count(*) FROM entrances") < 60


async def test_an_arabic_reader_gets_right_to_left_pages(
    browser: Browser, site: str, services: Services
) -> None:
    context = await browser.new_context(locale="ar")
    page = await context.new_page()
    await page.goto(f"{site}/login")
    html = page.locator("html")
    await expect(html).to_have_attribute("dir", "rtl")
    await expect(html).to_have_attribute("lang", "ar")
    _, token = await new_user(services, "rawi", locale="ar")
    await page.locator("#token").fill(token)
    await page.locator("form.sign-in button[type=submit]").click()
    await expect(page).to_have_url(f"{site}/import")
    await expect(html).to_have_attribute("dir", "rtl")
    await context.close()


async def test_an_upsert_chosen_on_the_page_is_undone_from_its_job_page(
    browser: Browser, site: str, services: Services
) -> None:
    _, token = await new_user(services, "mender")
    page = await browser.new_page()
    await _sign_in(page, site, token)
    await page.get_by_label("File").set_input_files(
        _upload("first.csv", [entrance("u1", latitude="1"), entrance("u2", latitude="1")])
    )
    await page.get_by_role("button", name="Import", exact=True).click()
    await _wait_final(page)

    # Stored keys updated, a new one inserted; failed rows would stop it all.
    await page.goto(f"{site}/import")
    await page.get_by_label("Rows whose key is stored").select_option("upsert")
    await page.get_by_label("When rows fail").select_option("abort")
    await page.get_by_label("Share of rows, in percent").fill("10")
    rows = [entrance("u1", latitude="2"), entrance("u2", latitude="1"), entrance("u3")]
    await page.get_by_label("File").set_input_files(_upload("second.csv", rows))
    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    upsert_page = page.url
    await _wait_final(page)
    await expect(page.locator("#count-updated")).to_have_text("1")
    await expect(page.locator("#count-unchanged")).to_have_text("1")
    await expect(page.locator("#count-inserted")).to_have_text("1")
    assert await count(services, "SELECT count(*) FROM batches WHERE on_error = 'abort'") == 1

    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Undo").click()
    await expect(page).not_to_have_url(upsert_page, timeout=WORK_MS)
    await _wait_final(page)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Undo: second.csv")
    await expect(page.locator("#count-deleted")).to_have_text("1")
    await expect(page.locator("#count-restored")).to_have_text("1")
    await expect(page.get_by_role("button", name="Undo")).to_be_hidden()
    assert await count(services, "SELECT count(*) FROM entrances WHERE latitude = 1") == 2
    await page.goto(upsert_page)
    await expect(page.locator("#status-words")).to_have_text("Undone")
    await expect(page.get_by_role("link", name=re.compile("[0-9a-f-]{36}"))).to_be_visible()


async def test_a_saved_mapping_reads_an_export_with_decimal_commas(
    browser: Browser, site: str, services: Services
) -> None:
    """The preview finds the reader's saved mapping for the file's header and says so; the
    import then reads the file with it and with the decimal comma chosen."""
    _, token = await new_user(services, "mapper")
    names = {"id": "Ident", "w3geo:latitude": "Lat", "w3geo:longitude": "Lon"}
    async with api_client(services, token) as client:
        saved = await client.put(
            "/api/v1/mappings/my-export",
            json={"dataset": "entrances", "mapping": {v: k for k, v in names.items()}},
        )
        assert saved.status_code == 200, saved.text
    rows = [
        {names.get(k, k): v for k, v in entrance(f"e{i}", latitude="45,5").items()}
        for i in range(3)
    ]
    text = csv_text(rows)  # the latitudes quoted, for their commas
    page = await browser.new_page()
    await _sign_in(page, site, token)
    await page.get_by_text("Options").click()
    await page.get_by_label("Decimal mark").select_option("comma")
    await page.get_by_label("File").set_input_files(
        {"name": "export.csv", "mimeType": "text/csv", "buffer": text.encode()}
    )
    preview = page.locator("#preview")
    await expect(preview).to_contain_text("Your saved mapping applies to this header: my-export")
    await expect(preview).to_contain_text("Every mandatory column is there.")
    await expect(page.locator("#preview td.refused")).to_have_count(0)
    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    await _wait_final(page)
    await expect(page.locator("#count-successes")).to_have_text("3")
    assert await count(services, "SELECT count(*) FROM entrances WHERE latitude = 45.5") == 3
