"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed by ``./dev``)
driven through Selenium, and waits on the sandbox inbox page."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")

INBOX_TITLE = "Sandbox inbox · delivery-worker"


@contextmanager
def headless_chromium(width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.fail("chromium/chromedriver missing: ./dev setup installs them (Debian packages)")
    options = Options()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI; the page's own sandboxing is what we test
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], T | None], timeout_s: float = 20.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except StaleElementReferenceException:  # the page re-rendered under us
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def list_item_with(driver: webdriver.Chrome, text: str) -> WebElement | None:
    for item in driver.find_elements(By.CSS_SELECTOR, "#list li"):
        if text in item.text:
            return item
    return None
