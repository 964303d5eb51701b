"""The admin page in a real browser (Debian's Chromium, driven by
Playwright) against a running `meshbridge serve` with fake providers: it
loads, it refreshes by itself, its filters narrow the recent calls, it shows
what callers sent as text, and it needs the token. Each state is written as
a screenshot to tests/artifacts/."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, expect

from .conftest import (
    ADMIN_TOKEN,
    BATCH_TOKEN,
    REFRESH,
    AdminServer,
    http,
    screenshot,
    sign_in,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("admin-browser")]

# A refresh, and the time its request may take on a busy machine.
WITHIN_A_REFRESH = (REFRESH + 2.0) * 1000
SCRIPT = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def circuit(page: Page, provider: str) -> Locator:
    return page.locator(f'#live-providers tr[data-provider="{provider}"] td.circuit')


def test_without_the_token_the_page_and_its_json_answer_401(
    admin_server: AdminServer, context: BrowserContext
) -> None:
    page = context.new_page()
    answer = page.goto(admin_server.page)
    assert answer is not None
    assert answer.status == 401
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#live-providers")).to_have_count(0)
    screenshot(page, "sign-in")
    for path in ("api/config", "api/live", "api/calls", "api/usage", "live"):
        assert http(f"{admin_server.admin}/admin/{path}")[0] == 401, path
        assert http(f"{admin_server.admin}/admin/{path}", token=BATCH_TOKEN)[0] == 401, path
    page.fill("input[name=token]", "not-the-admin-token")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_have_text("That is not an admin token.")
    screenshot(page, "sign-in-refused")
    sign_in(page, admin_server)
    # the browser's session opens the page, never the JSON: scripts send the token
    assert context.request.get(f"{admin_server.admin}/admin/live").status == 200
    assert context.request.get(f"{admin_server.admin}/admin/api/live").status == 401
    cookie = next(c for c in context.cookies() if c["name"] == "meshbridge_admin")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/admin/")
    assert ADMIN_TOKEN not in cookie["value"]
    # the page is not served on the public listener (no admin_api_public)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{admin_server.url}/admin/", timeout=10)
    assert refused.value.code == 404
    refused.value.close()
    page.click("form.sign-out button")
    expect(page.locator("#sign-in")).to_be_visible()


def test_the_page_shows_the_providers_routes_limits_and_live_state(
    admin_server: AdminServer, context: BrowserContext
) -> None:
    for provider in ("local", "flaky"):
        assert admin_server.chat(provider) == 200
    for _ in range(3):
        assert admin_server.chat("local", token=BATCH_TOKEN) == 200
    page = context.new_page()
    sign_in(page, admin_server)
    providers = page.locator("#providers tbody tr")
    expect(providers).to_have_count(2)
    expect(page.locator('#providers tr[data-provider="local"]')).to_contain_text(
        "fake-small, fake-large"
    )
    expect(page.locator('#providers tr[data-provider="flaky"]')).to_contain_text(
        "max in flight 8 · breaker 2 in 30s, open 3s, 1 probe"
    )
    expect(page.locator("#routes")).to_contain_text("flaky 1 · local 3")
    expect(circuit(page, "flaky")).to_have_attribute("data-circuit", "closed")
    expect(circuit(page, "local")).to_have_attribute("data-circuit", "none")
    # the gateway forwards to providers, not routes: in-process callers use those
    expect(page.locator("#live-routes")).to_contain_text(
        "flaky: 0 (weight 1) · local: 0 (weight 3)"
    )
    expect(page.locator('#live-providers tr[data-provider="flaky"]')).to_contain_text("0 / 8")
    limits = page.locator("#live-limits tbody tr")
    expect(limits.first).to_contain_text("batch")
    expect(page.locator("header")).to_contain_text("at start")
    # the live part refreshes by itself: its time moves on without a reload
    first = page.locator("#live-at").get_attribute("datetime")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    expect(page.locator("#live-at")).not_to_have_attribute("datetime", first or "", timeout=3000)
    screenshot(page, "loaded")


def test_a_breaker_opening_shows_as_open_within_a_refresh_and_closes_again(
    admin_server: AdminServer, context: BrowserContext
) -> None:
    page = context.new_page()
    sign_in(page, admin_server)
    expect(circuit(page, "flaky")).to_have_attribute("data-circuit", "closed")
    config = admin_server.reload(flaky_outage=True)  # flaky answers 503 from now on
    assert config["generation"] >= 1
    assert config["last_failed_reload"] is None
    assert [admin_server.chat("flaky") for _ in range(2)] == [503, 503]
    opened = time.monotonic()
    expect(circuit(page, "flaky")).to_have_attribute(
        "data-circuit", "open", timeout=WITHIN_A_REFRESH
    )
    expect(circuit(page, "flaky")).to_contain_text(re.compile(r"next probe in \d\.\d s"))
    assert time.monotonic() - opened < 3.0  # open_for: seen open before it turned half-open
    screenshot(page, "breaker-open")
    admin_server.reload()  # the outage is over; the breaker keeps its state
    expect(circuit(page, "flaky")).to_have_attribute("data-circuit", "half_open", timeout=5000)
    assert admin_server.chat("flaky") == 200  # the probe succeeds: it closes
    expect(circuit(page, "flaky")).to_have_attribute(
        "data-circuit", "closed", timeout=WITHIN_A_REFRESH
    )
    expect(circuit(page, "flaky")).to_contain_text("opened 1x")
    screenshot(page, "breaker-closed")


def test_a_failed_reload_shows_with_its_error_and_the_config_still_running(
    admin_server: AdminServer, context: BrowserContext
) -> None:
    page = context.new_page()
    sign_in(page, admin_server)
    expect(page.locator("#failed-reload")).to_have_count(0)
    config = admin_server.reload(broken=True)
    assert config["last_failed_reload"]["current"] is True
    notice = page.locator("#config-changed")  # said by the live part, within a refresh
    expect(notice).to_contain_text(re.compile(r"\d+ succeeded, 1 failed"), timeout=WITHIN_A_REFRESH)
    screenshot(page, "reload-noticed")
    notice.locator("a").click()
    failed = page.locator("#failed-reload")
    expect(failed).to_contain_text("The last reload failed")
    expect(failed.locator("pre")).to_contain_text("providers.oops")
    expect(page.locator("#providers tbody tr")).to_have_count(2)  # the running table
    screenshot(page, "reload-failed")
    admin_server.reload()
    page.reload()
    expect(failed).to_contain_text("A reload failed")
    expect(failed).to_contain_text("a later one succeeded")


def test_filters_on_the_recent_calls_table_narrow_the_rows_without_javascript(
    admin_server: AdminServer, browser: Browser
) -> None:
    before = len(admin_server.calls())
    for model in ("fake-small", "fake-large"):
        assert admin_server.chat("local", model, token=BATCH_TOKEN) == 200
    assert admin_server.chat("local", "fake-large") == 200
    everything = admin_server.recorded(before + 3)
    assert len(everything) == before + 3
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, admin_server)
        rows = page.locator("#calls details.call")
        expect(rows).to_have_count(len(everything))
        page.fill("#filters input[name=key]", "team-b")
        page.click("#filters button[type=submit]")
        team_b = [c for c in everything if c["api_key_id"] == "team-b"]
        expect(rows).to_have_count(len(team_b))
        expect(page.locator("#calls .key")).to_have_text(["team-b"] * len(team_b))
        page.fill("#filters input[name=model]", "fake-large")
        page.click("#filters button[type=submit]")
        large = [c for c in team_b if c["request_model"] == "fake-large"]
        expect(rows).to_have_count(len(large))
        assert "key=team-b" in page.url
        assert "model=fake-large" in page.url
        expect(page.locator("#by-key tbody tr")).to_have_count(1)
        expect(page.locator("#by-key tbody tr")).to_contain_text("team-b")
        rows.first.locator("summary").click()  # a row opens to its record
        record = rows.first.locator("dl.record")
        expect(record).to_be_visible()
        expect(record).to_contain_text(large[0]["id"])
        expect(record).to_contain_text("attempts")
        screenshot(page, "calls-filtered")
        page.select_option("#filters select[name=outcome]", "error")
        page.fill("#filters input[name=model]", "")
        page.click("#filters button[type=submit]")
        expect(rows).to_have_count(0)
        expect(page.locator("#no-calls")).to_be_visible()
        page.fill("#filters input[name=since]", "yesterday-ish")
        page.click("#filters button[type=submit]")
        expect(page.locator("#calls-error")).to_contain_text("since")
    finally:
        context.close()


def test_a_model_name_like_a_script_shows_as_text(
    admin_server: AdminServer, context: BrowserContext
) -> None:
    before = len(admin_server.calls())
    assert admin_server.chat("local", SCRIPT) == 200
    admin_server.recorded(before + 1)
    page = context.new_page()
    dialogs: list[str] = []

    def opened(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", opened)
    sign_in(page, admin_server)
    page.fill("#filters input[name=model]", SCRIPT)
    page.click("#filters button[type=submit]")
    row = page.locator("#calls details.call")
    expect(row).to_have_count(1)
    expect(row.locator(".model")).to_have_text(SCRIPT)
    expect(page.locator("#filters input[name=model]")).to_have_value(SCRIPT)
    page.wait_for_timeout(REFRESH * 2000)  # a refresh or two of the live part
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    assert page.locator("#calls img").count() == 0
    screenshot(page, "script-as-text")
