"""The device's demo page in a real browser: headless Chromium from the OS packages (``chromium`` and
``chromium-driver``; never a browser download) driven by Selenium against live device + cloud services
serving a real small adapter + bank. Skipped when Chromium is missing, unless ``PERSONA_BROWSER_TESTS=required``
(``.ci/run`` installs Chromium and sets it)."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

from serving.artifacts import load_artifacts
from serving.cloud_app import CloudService, create_cloud_app
from serving.demo import demo_page, headline_results
from serving.device_app import DeviceService, create_device_app
from tests.serving.conftest import API_KEY, AUTH, LiveServer, real_editor_checkpoint, serve_config, wait_for
from tests.serving.test_services import metric

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def chromium(width: int = 1280, height: int = 860):
    """Headless Chromium through the packaged chromedriver (Selenium's own driver download never runs)."""
    if not (CHROMIUM and DRIVER):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("PERSONA_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _text(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).innerText;", element_id)


def _count(driver, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length;", selector)


def _click_first_item(driver) -> None:
    """Click the first ranked item's button, in one script call (no stale element if the list re-renders)."""
    assert driver.execute_script(
        "const b = document.querySelector('#ranking li button'); if (b) b.click(); return b !== null;")


def _ranking(driver) -> list[str]:
    """The shown ranking, read in one script call (the page may re-render the list between two webdriver calls)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#ranking li'), li => li.getAttribute('data-item'));")


def edits_served(client: httpx.Client, cloud_url: str) -> float:
    text = client.get(f"{cloud_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return metric(text, "persona_requests_total", route="/v1/edits", status="200")


def _reports(tmp_path, dataset: str):
    reports = tmp_path / "reports"
    (reports / dataset).mkdir(parents=True)
    summary = {name: {"ndcg@10": {"mean": value, "std": 0.001}} for name, value in
               (("popularity", 0.021), ("sasrec", 0.056), ("gru4rec", 0.063))}  # fmt: skip
    (reports / dataset / "base.json").write_text(json.dumps({"summary": summary}))
    return reports


def test_headline_results_come_from_the_reports(tmp_path):
    reports = _reports(tmp_path, "ml-100k")
    bars = headline_results(reports, "ml-100k")["bars"]
    assert [(b["label"], b["value"]) for b in bars] == [
        ("popularity (static)", 0.021), ("sasrec (static)", 0.056), ("gru4rec (static)", 0.063)]
    assert headline_results(reports, "ml-latest-small") is None
    assert '"bars": [{"label": "popularity (static)"' in demo_page(reports, "ml-100k")
    assert "const RESULTS = null;" in demo_page(reports, "ml-latest-small")


def test_demo_page_clicks_adapt_the_ranking_and_cutting_the_cloud_shows_the_fallback(checkpoint, runtime, tmp_path):
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    reports = _reports(tmp_path, load_artifacts(serve_config(checkpoint, tmp_path)).meta.dataset)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path, f"reports_dir={reports}", "serve.device.budget_ms=2000")
    driver = chromium()
    try:
        cloud_app = create_cloud_app(CloudService(cfg, ckpt), API_KEY)
        with LiveServer(cloud_app) as cloud, httpx.Client(timeout=30, headers=AUTH) as c:
            device = DeviceService(cfg, load_artifacts(cfg), cloud.url, API_KEY)
            with LiveServer(create_device_app(device, API_KEY)) as dev:
                wait_for(lambda: device.engine.code_version, timeout=30)
                driver.get(f"{dev.url}/?user=nobody")  # no key: the page asks for one and shows no one's data
                wait_for(lambda: driver.find_element("id", "signin").is_displayed(), timeout=30)
                wait_for(lambda: "operator key" in _text(driver, "status"), timeout=30)
                assert len(_ranking(driver)) == 0
                # the key `make serve` prints, in the fragment (never sent to the server), then off the address bar;
                # the page runs under its CSP (script and style by hash), so a ranking shows its script ran
                driver.get(f"{dev.url}/?user=web-1#key={API_KEY}")
                wait_for(lambda: len(_ranking(driver)) == 10, timeout=30)
                assert "key=" not in driver.current_url
                assert len(driver.find_elements("css selector", "#chart svg rect")) == 3  # the headline chart
                wait_for(lambda: "cloud reachable" in _text(driver, "status"), timeout=30)
                before = _ranking(driver)

                # 1. click an item: one event stored, the ranking changes, a cloud edit served it
                _click_first_item(driver)
                wait_for(lambda: _count(driver, "#history li") == 1, timeout=30)
                wait_for(lambda: _ranking(driver) != before and len(_ranking(driver)) == 10, timeout=30)
                assert before[0] not in _ranking(driver)  # the clicked item (seen) left the ranking
                assert _text(driver, "adaptation") == "cloud-edit"
                assert "1 events" in _text(driver, "n-events")
                stored = c.post(f"{dev.url}/v1/rank", json={"user_id": "web-1", "k": 10}).json()
                assert stored["history_length"] == 1

                # 2. cut the cloud: the device serves alone, from its cached bank (or the base model)
                driver.find_element("id", "cloud-toggle").click()
                wait_for(lambda: "cloud cut" in _text(driver, "status"), timeout=30)
                assert c.get(f"{dev.url}/healthz").json()["cloud_enabled"] is False
                calls = edits_served(c, cloud.url)
                assert calls > 0
                _click_first_item(driver)
                wait_for(lambda: _count(driver, "#history li") == 2, timeout=30)
                wait_for(lambda: _text(driver, "adaptation") in ("prototype-cache", "base"), timeout=30)
                assert edits_served(c, cloud.url) == calls  # no cloud call while it is cut
                if os.environ.get("PERSONA_DEMO_SCREENSHOT"):
                    driver.save_screenshot(os.environ["PERSONA_DEMO_SCREENSHOT"])

                # 3. bring it back: the next event is served by a cloud edit again
                driver.find_element("id", "cloud-toggle").click()
                wait_for(lambda: "cloud reachable" in _text(driver, "status"), timeout=30)
                _click_first_item(driver)
                wait_for(lambda: _count(driver, "#history li") == 3, timeout=30)
                wait_for(lambda: _text(driver, "adaptation") == "cloud-edit", timeout=30)
    finally:
        driver.quit()


def test_cloud_switch_rejects_a_bad_body(checkpoint, tmp_path):
    cfg = serve_config(checkpoint, tmp_path)
    app = create_device_app(DeviceService(cfg, load_artifacts(cfg)), API_KEY)
    with LiveServer(app) as dev, httpx.Client(headers=AUTH) as c:
        resp = c.put(f"{dev.url}/v1/cloud", json={"enabled": "maybe"})
        assert resp.status_code == 422 and "enabled" in resp.json()["message"]
        assert c.put(f"{dev.url}/v1/cloud", json={"enabled": False}).json()["cloud_enabled"] is None  # no cloud
        page = c.get(f"{dev.url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script src" not in page.text and "://" not in page.text  # no external assets: works offline
