"""The live view in a real headless browser (Debian's chromium driven by Playwright): the real
stack — Envoy, the EPP with llm-d's P/D config, prefill and decode simulators — the page lists the
endpoints, and a request sent through Envoy appears with its scores and its P/D decision.

`EPP_SCREENSHOT=docs/img/live-view.png pytest tests/integration/test_live_view_e2e.py` also saves
the screenshot the README shows."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
import pytest_asyncio

from epp.stack.stack import Stack

if TYPE_CHECKING:
    from playwright.async_api import Page
from tests.integration.conftest import stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAVE_CHROMIUM = Path(CHROMIUM).exists()
PD_CONFIG = Path(__file__).parents[2] / "epp" / "config" / "samples" / "sim-pd-epp-config.yaml"
TIMEOUT_MS = 20_000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("view"), prefill_sims=1, decode_sims=2)
    config.epp_args.append(f"--config-file={PD_CONFIG}")
    async with Stack(config) as started:
        yield started


async def test_the_view_lists_endpoints_and_shows_a_routed_request_with_its_scores(stack: Stack) -> None:
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium package")
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{stack.view_url}/ui/")
            await expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
            rows = page.locator("#endpoints tbody tr")
            await expect(rows).to_have_count(len(stack.sims), timeout=TIMEOUT_MS)
            for sim in stack.sims:
                row = page.locator(f'#endpoints tr[data-endpoint="{sim.name}"]')
                await expect(row).to_contain_text(sim.hostport)
                await expect(row).to_contain_text("ready", timeout=TIMEOUT_MS)

            request_id = f"browser-{uuid.uuid4().hex[:8]}"
            prompt = f"{request_id} " + "a prompt long enough to be worth a remote prefill " * 12
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
                http.post(
                    f"{stack.gateway_url}/v1/completions",
                    json={"model": "sim-model", "prompt": prompt, "max_tokens": 4},
                    headers={"x-request-id": request_id},
                ) as response,
            ):
                assert response.status == 200
                served_by = response.headers["x-inference-pod"]

            decision = page.locator(f'.decision[data-request-id="{request_id}"]')
            await expect(decision).to_be_visible(timeout=TIMEOUT_MS)
            await expect(decision.locator(".dest")).to_contain_text(served_by)
            await expect(decision.locator(".pd")).to_contain_text("P/D: prefill on prefill-0")
            decode = decision.locator(".profile").filter(has_text="profile decode")
            await expect(decode.locator("th")).to_contain_text(
                ["endpoint", "prefix-cache-scorer \u00d72", "queue-scorer \u00d71", "total"]
            )
            picked = decode.locator("tr.picked")
            await expect(picked).to_have_attribute("data-endpoint", served_by)
            await expect(picked.locator("td.total")).to_have_text(_number())
            await expect(decision).to_contain_text("decode-filter removed prefill-0")
            screenshot = os.environ.get("EPP_SCREENSHOT")
            if screenshot:
                await _more_traffic(stack, page)
                await page.screenshot(path=screenshot, full_page=True)
        finally:
            await browser.close()


async def _more_traffic(stack: Stack, page: Page) -> None:
    """For the README's screenshot: a few more requests, some repeating a prompt (prefix hits)."""
    from playwright.async_api import expect

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for i in range(6):
            prompt = f"conversation {i % 2}: " + "the same long system prompt for every turn " * 12
            body = {"model": "sim-model", "prompt": prompt, "max_tokens": 4}
            async with http.post(f"{stack.gateway_url}/v1/completions", json=body) as response:
                assert response.status == 200
    await expect(page.locator("#decision-stats")).to_contain_text("last 7 kept", timeout=TIMEOUT_MS)


def _number() -> object:
    import re

    return re.compile(r"^\d+\.\d{3}$")
