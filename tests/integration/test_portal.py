"""The portal end to end: Debian's chromium (driven by Playwright, never its own browser download) against the real
daemon, broker and receivers. A screenshot of each page is kept under the test's tmp dir (its path printed)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, async_playwright
from standardwebhooks.webhooks import Webhook

from daemon.admin.portal.links import Claims, LinkKeys
from tests.helpers import ADMIN_TOKEN, Receiver, eventually, produce, serve
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_delivery_index import made_old
from tests.integration.test_endpoints_api import _environment, api, api_config, new  # noqa: F401 - the fixture

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
CATALOGUE: list[dict[str, Any]] = [
    {"name": "lead.created", "group": "Leads", "description": "A lead was added",
     "schema": {"type": "object", "required": ["lead_id"], "properties": {"lead_id": {"type": "integer"}}},
     "example": {"event": "lead.created", "tenant": "acme", "lead_id": 7}, "validate": True},
    {"name": "lead.noted", "group": "Leads", "description": "A note was added to a lead"},
    {"name": "call.ended", "group": "Calls", "description": "A call ended"},
]  # fmt: skip


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Debian's chromium with a fresh profile (make test installs it: .ci/tools)."""
    if not CHROMIUM.exists():
        pytest.fail(f"these tests drive Debian's chromium at {CHROMIUM}: apt-get install chromium (make test does)")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            yield context
        finally:
            await context.close()


async def shot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def portal_config(setup: Setup, **portal: Any) -> dict[str, Any]:
    doc = api_config(setup)
    doc["event_types"] = CATALOGUE
    doc["portal"] = {"enabled": True, "title": "Acme Webhooks", **portal}
    return doc


async def link(c: Any, tenant: str, **body: Any) -> str:
    status, answer = await c.call("POST", f"/v1/tenants/{tenant}/portal-links", body)
    assert status == 201, answer
    assert answer["tenant"] == tenant and answer["expires_at"].endswith("Z")
    return str(answer["url"])


def ev(event_type: str = "lead.created", tenant: str = "acme", **fields: Any) -> bytes:
    return json.dumps({"event": event_type, "tenant": tenant, **fields}).encode()


async def reload_until(page: Page, text: str, within_s: float = 20.0) -> None:
    async def shown() -> bool:
        await page.reload()
        return bool(await page.get_by_text(text, exact=True).count())

    await eventually(shown, within_s)


async def reload_until_rows(page: Page, within_s: float = 20.0) -> None:
    """Reload until the page's table has a row (the filters' "delivered" option is no sign of one)."""

    async def shown() -> bool:
        await page.reload()
        return bool(await page.locator("tbody tr").count())

    await eventually(shown, within_s)


async def test_a_customer_adds_an_endpoint_gets_an_event_sees_its_attempt_and_redelivers_it_from_the_page(
    setup: Setup, receivers: list[Receiver], browser: BrowserContext, tmp_path: Path
) -> None:
    r = await receiver(receivers)
    platform = web.Application()  # the platform's own page, embedding the portal in an iframe
    frame_url: list[str] = []

    async def embedding(request: web.Request) -> web.Response:
        frame = f'<iframe src="{frame_url[0]}" title="Webhooks" width="900" height="600"></iframe>'
        return web.Response(text=f"<!doctype html><title>Platform</title>{frame}", content_type="text/html")

    platform.router.add_get("/", embedding)
    runner, platform_base = await serve(platform)
    doc = portal_config(setup, frame_ancestors=[platform_base])
    doc["organizations"] = [{
        "id": "acme-org", "tenant": "acme", "url": "https://leads.acme.example/hook", "events": ["lead.delivered"],
        "headers": {"Authorization": "Bearer org-secret"}, "retry_attempts": 3, "timeout_s": 10,
        "campaigns": [{"id": "spring", "url": "https://spring.acme.example/hook", "timeout_s": 20}],
    }]  # fmt: skip
    try:
        async with running(setup.write(doc)), api(setup.admin_port) as c:
            assert (await c.call("POST", "/v1/tenants", {"id": "acme"}))[0] == 201
            url = await link(c, "acme", return_url="https://platform.example/settings")
            frame_url.append(url)
            page = await browser.new_page()

            # The list, empty; reached by keyboard: the skip link first, then the way to add an endpoint.
            answer = await page.goto(url)
            assert answer is not None and answer.status == 200
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert f"frame-ancestors {platform_base}" in answer.headers["content-security-policy"]
            await shot(page, tmp_path, "1-endpoints-empty")
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
            for _ in range(12):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.textContent") == "Add endpoint":
                    break
            await page.keyboard.press("Enter")
            await page.wait_for_url("**/endpoints/new")
            assert await _unlabelled(page) == []
            await shot(page, tmp_path, "2-add-endpoint")

            # Create: URL, an event picked from the catalogue, a custom header.
            await page.get_by_label("Endpoint URL").fill(r.url)
            await page.get_by_label("Description").fill("Acme's CRM")
            await page.get_by_role("checkbox", name="lead.created").check()
            await page.get_by_label("Custom headers").fill("X-Customer: acme-42")
            await page.get_by_role("button", name="Add endpoint").click()
            await page.wait_for_url("**/endpoints/ep_*?done=created")
            endpoint_url = page.url.split("?")[0]
            assert await page.get_by_text("Endpoint created.").count() == 1

            # An event produced to Kafka arrives, and its attempt shows in the page.
            await produce(setup.broker.bootstrap, setup.topic, [ev(lead_id=1, n=1), ev("call.ended", n=2)])
            (first,) = await r.wait_for(1)
            assert first.headers["X-Customer"] == "acme-42" and json.loads(first.body)["n"] == 1
            await reload_until_rows(page)  # its index entry follows its results record
            row = page.locator("tbody tr").first
            assert "lead.created" in await row.inner_text() and "200" in await row.inner_text()
            await shot(page, tmp_path, "3-endpoint-with-attempt")

            # The secret, revealed on demand, verifies the delivery.
            await page.get_by_role("button", name="Reveal signing secret").click()
            secret = (await page.locator("#secret-0").inner_text()).strip()
            assert secret.startswith("whsec_")
            Webhook(secret).verify(first.body, first.headers)
            await shot(page, tmp_path, "4-secret")
            await page.goto(endpoint_url)

            # One delivery's attempts, then a redelivery from the page: one attempt more, under the same id.
            await page.locator("tbody tr").first.get_by_role("link").click()
            await page.wait_for_url("**/deliveries/msg_*")
            await shot(page, tmp_path, "5-delivery")
            await page.get_by_role("button", name="Redeliver").click()
            await page.wait_for_url("**/redeliver")
            assert await page.locator(".badge", has_text="delivered").count() == 1
            await shot(page, tmp_path, "6-redelivered")
            await r.wait_for(2)
            assert len(r.requests) == 2
            assert r.requests[1].headers["webhook-id"] == first.headers["webhook-id"]
            await page.get_by_role("link", name="Back to the endpoint").click()
            await reload_until(page, "Attempt 2")
            await shot(page, tmp_path, "7-delivery-side-by-side")

            # A test ping with its answer shown; pause and resume; filters; edit.
            await page.goto(endpoint_url)
            await page.get_by_role("button", name="Send test event").click()
            assert await page.locator("dd", has_text="200").count() >= 1
            await shot(page, tmp_path, "8-ping")
            await page.goto(endpoint_url)
            await page.get_by_role("button", name="Pause").click()
            await page.wait_for_url("**?done=paused")
            assert await page.locator("dd .badge", has_text="paused").count() == 1
            await page.get_by_role("button", name="Resume").click()
            await page.wait_for_url("**?done=resumed")
            await page.get_by_label("Outcome").select_option("failed")
            await page.get_by_role("button", name="Filter").click()
            assert await page.get_by_text("No attempts match.").count() == 1
            await page.goto(endpoint_url + "/edit")
            await page.get_by_role("checkbox", name="lead.noted").check()
            await page.get_by_role("button", name="Save").click()
            await page.wait_for_url("**?done=updated")
            assert await page.locator("dd code", has_text="lead.noted").count() == 1
            await page.get_by_role("button", name="Rotate signing secret").click()
            assert await page.locator("code[id^=secret-]").count() == 2  # the new one, and the old one in its grace
            await shot(page, tmp_path, "9-rotated")

            # The catalogue, the campaign beside its organisation, the page on a phone, and in the platform's iframe.
            await page.goto(url + "events")
            assert await page.get_by_role("heading", name="lead.created").count() == 1
            await shot(page, tmp_path, "10-event-types")
            await page.goto(url + "campaigns")
            assert await page.get_by_text("inherited").count() >= 1 and await page.get_by_text("override").count() >= 1
            assert "org-secret" not in await page.content()  # header values are never shown
            await shot(page, tmp_path, "11-campaigns")
            phone = await browser.new_page()
            await phone.set_viewport_size({"width": 390, "height": 844})
            await phone.goto(endpoint_url)
            assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            assert await phone.evaluate("['header','nav','main','footer'].every(t => document.querySelector(t))")
            await shot(phone, tmp_path, "12-phone")
            host = await browser.new_page()
            await host.goto(platform_base + "/")
            await host.frame_locator("iframe").get_by_role("heading", name="Endpoints").wait_for()
            await shot(host, tmp_path, "13-in-the-platforms-iframe")

            # Delete, through its confirmation page.
            await page.goto(endpoint_url + "/delete")
            await page.get_by_role("button", name="Delete endpoint").click()
            await page.wait_for_url("**?done=deleted")
            assert await page.get_by_text("No endpoints yet.").count() == 1
            assert await browser.cookies() == []  # nothing kept in the browser: the link is the session
    finally:
        await runner.cleanup()


async def test_the_delivery_page_finds_a_delivery_made_before_100000_others_and_redelivers_it(
    setup: Setup, receivers: list[Receiver], browser: BrowserContext, tmp_path: Path
) -> None:
    r = await receiver(receivers)
    doc = portal_config(setup)
    doc["api"]["max_scan_records"] = 1_000  # the scan's least bound: the delivery index must answer
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        assert (await c.call("POST", "/v1/tenants", {"id": "acme"}))[0] == 201
        status, created = await c.call("POST", "/v1/endpoints", new("acme", r.url, ["lead.*"]))
        assert status == 201, created
        endpoint_id = created["id"]
        old = await made_old(app, setup, c, r, endpoint_id, ev(lead_id=1))
        url = await link(c, "acme")
        page = await browser.new_page()

        answer = await page.goto(f"{url}endpoints/{endpoint_id}/deliveries/{old}")
        assert answer is not None and answer.status == 200
        assert await page.get_by_role("columnheader", name="Attempt 1").count() == 1
        assert await page.locator(".badge", has_text="delivered").count() == 1
        await shot(page, tmp_path, "old-delivery")

        await page.goto(f"{url}endpoints/{endpoint_id}")  # the newest first: the 100,000 others
        assert await page.locator("tbody tr").count() == 100  # portal.attempts_shown
        await page.get_by_label("Event type").select_option("lead.created")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url("**event_type=lead.created**")
        assert await page.locator("tbody tr").count() == 1
        assert "found in the delivery index" in await page.locator("caption").inner_text()
        await shot(page, tmp_path, "old-delivery-filtered")
        await page.locator("tbody tr").first.get_by_role("link").click()
        await page.wait_for_url(f"**/deliveries/{old}")
        await page.get_by_role("button", name="Redeliver").click()
        await page.wait_for_url("**/redeliver")
        assert await page.locator(".badge", has_text="delivered").count() == 1
        assert (await r.wait_for(2))[1].headers["webhook-id"] == old


async def test_an_expired_or_forged_link_is_refused_and_one_tenants_link_never_shows_anothers_data(
    setup: Setup, receivers: list[Receiver], browser: BrowserContext, tmp_path: Path
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(portal_config(setup))), api(setup.admin_port) as c:
        for tenant in ("acme", "globex"):
            assert (await c.call("POST", "/v1/tenants", {"id": tenant}))[0] == 201
        status, theirs = await c.call("POST", "/v1/endpoints", new("globex", r.url + "/globex-secret-path", ["*"]))
        assert status == 201, theirs
        await produce(setup.broker.bootstrap, setup.topic, [ev(tenant="globex", lead_id=1)])
        await r.wait_for(1)
        status, attempts = await c.call("GET", f"/v1/endpoints/{theirs['id']}/attempts")
        delivery = attempts["data"][0]["delivery_id"]
        url = await link(c, "acme", return_url="https://platform.example/back")
        base = url.rstrip("/")
        page = await browser.new_page()

        # acme's link: none of globex's endpoints, attempts or deliveries, by any path.
        await page.goto(url)
        assert "globex" not in (await page.content()).lower()
        for path in (f"/endpoints/{theirs['id']}", f"/endpoints/{theirs['id']}/deliveries/{delivery}",
                     f"/endpoints/{theirs['id']}/edit"):  # fmt: skip
            answer = await page.goto(base + path)
            assert answer is not None and answer.status == 404, path
            assert "globex-secret-path" not in await page.content()
        await shot(page, tmp_path, "not-found")
        async with aiohttp.ClientSession() as session:
            csrf = await _csrf(session, url)
            for action in ("pause", "delete", "ping", "secret", f"deliveries/{delivery}/redeliver"):
                async with session.post(f"{base}/endpoints/{theirs['id']}/{action}", data={"csrf": csrf}) as resp:
                    assert resp.status == 404, action
        assert len(r.requests) == 1  # nothing of acme's reached globex's endpoint

        # Expired: 401, a plain page, the way back; forged three ways: 403.
        keys = LinkKeys(ADMIN_TOKEN)
        now = int(time.time())
        expired = keys.token(Claims(tenant="acme", iat=now - 7200, exp=now - 3600, sid="0" * 32,
                                    return_url="https://platform.example/back"))  # fmt: skip
        answer = await page.goto(f"{setup_base(setup)}/portal/{expired}/")
        assert answer is not None and answer.status == 401
        assert await page.get_by_role("heading", name="Link expired").count() == 1
        assert await page.get_by_role("link", name="Back").get_attribute("href") == "https://platform.example/back"
        await shot(page, tmp_path, "expired")
        version, claims, mac = url.rstrip("/").rsplit("/", 1)[1].split(".")
        as_globex = base64.urlsafe_b64encode(
            base64.urlsafe_b64decode(claims + "==").replace(b'"acme"', b'"globex"')).rstrip(b"=").decode()  # fmt: skip
        other_key = LinkKeys("another-admin-token-" + "x1y2z3" * 5).token(Claims(
            tenant="acme", iat=now, exp=now + 3600, sid="1" * 32))  # fmt: skip
        for forged in (f"{version}.{as_globex}.{mac}", other_key, f"{version}.{claims}.{mac[:-2]}AA", "nonsense"):
            answer = await page.goto(f"{setup_base(setup)}/portal/{forged}/")
            assert answer is not None and answer.status == 403, forged
            assert await page.get_by_role("heading", name="Not allowed").count() == 1
            assert "acme" not in await page.content()
            assert answer.headers["referrer-policy"] == "no-referrer"
        await shot(page, tmp_path, "forged")

        # A form without the session's CSRF token, or sent from another site, changes nothing.
        async with aiohttp.ClientSession() as session:
            form = {"url": r.url, "events": "lead.created"}
            other = await _csrf(session, await link(c, "acme"))
            cases = [
                ({}, {}),
                ({"csrf": other}, {}),
                ({"csrf": await _csrf(session, url)}, {"Sec-Fetch-Site": "cross-site"}),
            ]
            for extra, headers in cases:
                async with session.post(f"{base}/endpoints", data={**form, **extra}, headers=headers) as resp:
                    assert resp.status == 403, (extra, headers)
                    assert resp.headers["Content-Security-Policy"].endswith("frame-ancestors 'none'")
        assert (await c.call("GET", "/v1/endpoints?tenant=acme"))[1]["data"] == []


async def test_portal_links_are_the_admin_tokens_to_mint_bounded_and_off_unless_enabled(setup: Setup) -> None:
    doc = portal_config(setup, max_link_ttl_s=600, link_ttl_s=300, public_url="https://hooks.example.com")
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        assert (await c.call("POST", "/v1/tenants", {"id": "acme"}))[0] == 201
        token = (await c.call("POST", "/v1/tenants/acme/tokens"))[1]["token"]
        status, answer = await c.call("POST", "/v1/tenants/acme/portal-links", {"expires_in_s": 600})
        assert status == 201 and answer["url"].startswith("https://hooks.example.com/portal/v1.")
        assert answer["features"] == ["manage", "secrets", "ping", "deliveries", "redeliver", "replay"]
        cases: list[tuple[str, Any, int, str]] = [
            ("/v1/tenants/acme/portal-links", {"expires_in_s": 601}, 400, "expires_in_s: at most 600"),
            ("/v1/tenants/acme/portal-links", {"return_url": "javascript:alert(1)"}, 400, "return_url:"),
            ("/v1/tenants/acme/portal-links", {"features": ["everything"]}, 400, "features"),
            ("/v1/tenants/nobody/portal-links", {}, 404, "no tenant 'nobody'"),
        ]
        for path, body, code, message in cases:
            status, answer = await c.call("POST", path, body)
            assert (status, message in answer["error"]) == (code, True), answer
        assert (await c.as_(token).call("POST", "/v1/tenants/acme/portal-links", {}))[0] == 404  # a tenant cannot

        # A link of the deliveries only: no forms that change anything, and none honoured.
        status, answer = await c.call("POST", "/v1/tenants/acme/portal-links", {"features": ["deliveries"]})
        local = answer["url"].replace("https://hooks.example.com", setup_base(setup))
        async with aiohttp.ClientSession() as session:
            async with session.get(local) as resp:
                text = await resp.text()
                assert resp.status == 200 and "Add endpoint" not in text
            async with session.get(local + "endpoints/new") as resp:
                assert resp.status == 403
    doc["portal"]["enabled"] = False
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme2"})
        status, answer = await c.call("POST", "/v1/tenants/acme2/portal-links", {})
        assert status == 409 and "portal.enabled" in answer["error"]


def setup_base(setup: Setup) -> str:
    return f"http://127.0.0.1:{setup.admin_port}"


async def _csrf(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "endpoints/new") as resp:
        text = await resp.text()
    start = text.index('name="csrf" value="') + len('name="csrf" value="')
    return text[start : text.index('"', start)]


async def _unlabelled(page: Page) -> list[str]:
    """The form fields of the page that no label names."""
    found: list[str] = await page.evaluate(
        "[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
        ".filter(el => !(el.labels && el.labels.length)).map(el => el.name)"
    )
    return found
