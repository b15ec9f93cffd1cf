"""Screenshot of the demo page on the main job's artifacts → docs/demo.png.

Starts ``persona serve --role all`` on free 127.0.0.1 ports (the ml-100k seed-0 SASRec of ``make run``,
a fresh event database), opens the page in headless Debian Chromium, clicks a few recommended items,
and saves the screenshot; with ``--cut`` the cloud is cut before the last click (the fallback shows).

    python scripts/demo_screenshot.py [--out docs/demo.png] [--clicks 3] [--cut]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from serving.local_services import free_ports, serve_command, start_service, stop

ROOT = Path(__file__).resolve().parents[1]


def wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo page did not get there in time")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "demo.png"))
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--cut", action="store_true", help="cut the cloud before the last click")
    args = parser.parse_args()
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        print("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="persona-demo-") as tmp:
        port, cloud_port = free_ports(2)
        cmd = serve_command("all", port, [f"serve.device.db_path={tmp}/events.db",
                                          f"serve.device.prototype_cache={tmp}/prototypes.json",
                                          "serve.api_key=demo-key"],
                            cloud_port=cloud_port)  # fmt: skip
        proc = start_service(cmd, port, Path(tmp) / "serve.log", "persona serve")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,720"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
        try:
            driver.get(f"http://127.0.0.1:{port}/?user=demo#key=demo-key")  # role all: operator key = API key
            wait(lambda: len(driver.find_elements("css selector", "#ranking li")) == 10)
            wait(lambda: "cloud reachable" in driver.find_element("id", "status").text)
            for n in range(args.clicks):
                if args.cut and n == args.clicks - 1:
                    driver.find_element("id", "cloud-toggle").click()
                    wait(lambda: "cloud cut" in driver.find_element("id", "status").text)
                driver.find_elements("css selector", "#ranking li button")[n % 3].click()
                wait(lambda n=n: len(driver.find_elements("css selector", "#history li")) == n + 1)
                time.sleep(0.5)
            driver.save_screenshot(args.out)
            print(f"wrote {args.out}: served by {driver.find_element('id', 'adaptation').text}")
        finally:
            driver.quit()
            stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
