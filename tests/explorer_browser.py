"""Driving the feature explorer in headless Chromium (Selenium): the browser test's code, and the README screenshot.

:class:`ExplorerPage` opens a running explorer, uploads an image, waits for the panels, clicks a patch and
takes screenshots. ``python tests/explorer_browser.py MODEL --base BASE --image IMG --output docs/explorer.png``
serves the explorer on a free local port and writes a screenshot of the whole page after one click.

Chromium and its driver come from the system packages (``apt-get install chromium chromium-driver``);
:func:`chromium_missing` says why a browser test cannot run here.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
)
PANELS = ("pca-base", "pca-adapted", "clusters-base", "clusters-adapted", "query", "heat-base", "heat-adapted")


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_missing() -> str | None:
    """Why a browser test cannot run here (``None`` when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'paka_hf[app]' and selenium, see requirements-ci.txt)"
    if _binary("chromium", "chromium-browser", "google-chrome") is None:
        return "no Chromium on PATH (apt-get install chromium chromium-driver)"
    if _binary("chromedriver") is None:
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixel_difference(a: bytes | Image.Image, b: bytes | Image.Image) -> float:
    """Mean absolute difference of two screenshots (RGB, 0-255), after bringing ``b`` to ``a``'s size."""
    a = Image.open(io.BytesIO(a)) if isinstance(a, bytes) else a
    b = Image.open(io.BytesIO(b)) if isinstance(b, bytes) else b
    a, b = a.convert("RGB"), b.convert("RGB").resize(a.size)
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


class ExplorerPage:
    """One headless Chromium on one explorer page (``url``); a fresh profile in a temporary folder."""

    def __init__(self, url: str, width: int = 1400, height: int = 2400, timeout_s: float = 60.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="paka-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = _binary("chromium", "chromium-browser", "google-chrome")
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.add_argument(f"--window-size={width},{height}")
        self.driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
        self.timeout_s = timeout_s
        self.driver.get(url)
        self.wait_for(
            lambda d: d.find_elements("css selector", "#explorer-image input[type=file]"), "the upload field"
        )

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> ExplorerPage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_for(self, condition, what: str):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, self.timeout_s, poll_frequency=0.1).until(condition)
        except TimeoutException as err:
            raise AssertionError(f"timed out after {self.timeout_s:.0f} s waiting for {what}") from err

    def image_source(self, panel: str) -> str | None:
        """``src`` of the picture shown in panel ``explorer-<panel>`` once it has loaded, else ``None``."""
        return self.driver.execute_script(
            "const img = document.querySelector(arguments[0]);"
            "return img && img.complete && img.naturalWidth > 0 ? img.src : null;",
            f"#explorer-{panel} img",
        )

    def upload(self, path: str | Path, field: str = "image") -> None:
        self.driver.find_element("css selector", f"#explorer-{field} input[type=file]").send_keys(
            str(Path(path).resolve())
        )

    def wait_for_panels(self, panels=PANELS, previous: dict[str, str | None] | None = None) -> dict[str, str]:
        """Wait until every panel shows a loaded picture (a new one, when ``previous`` sources are given)."""
        previous = previous or {}

        def ready(_):
            sources = {p: self.image_source(p) for p in panels}
            if all(sources[p] and sources[p] != previous.get(p) for p in panels):
                return sources
            return False

        return self.wait_for(ready, f"pictures in {', '.join(panels)}")

    def screenshot(self, panel: str) -> bytes:
        return self.driver.find_element("css selector", f"#explorer-{panel} img").screenshot_as_png

    def click_patch(self, fx: float, fy: float, panel: str = "query") -> None:
        """Click the picture of ``panel`` at fractions ``(fx, fy)`` of its width and height.

        Gradio draws the picture with an ``object-fit`` (``scale-down``) inside a larger ``<img>`` box, so the
        fractions are taken of the drawn picture, centred in the box.
        """
        from selenium.webdriver.common.action_chains import ActionChains

        image = self.driver.find_element("css selector", f"#explorer-{panel} img")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
        box_w, box_h, natural_w, natural_h, fit = self.driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return [r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight,"
            " getComputedStyle(arguments[0]).objectFit];",
            image,
        )
        if fit == "fill":
            drawn_w, drawn_h = box_w, box_h
        else:
            scale = min(box_w / natural_w, box_h / natural_h)  # contain
            scale = {"none": 1.0, "scale-down": min(1.0, scale)}.get(fit, scale)
            drawn_w, drawn_h = natural_w * scale, natural_h * scale
        # offsets are from the centre of the <img> box, which is also the centre of the drawn picture
        ActionChains(self.driver).move_to_element_with_offset(
            image, int((fx - 0.5) * drawn_w), int((fy - 0.5) * drawn_h)
        ).click().perform()

    def page_screenshot(self, path: str | Path) -> Path:
        """The whole page as a PNG (the window is resized to the page's height first)."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        width = self.driver.execute_script("return document.documentElement.scrollWidth")
        self.driver.set_window_size(max(width, 1200), height + 40)
        time.sleep(0.5)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Screenshot of the feature explorer after one click (README picture)."
    )
    parser.add_argument("model")
    parser.add_argument("--base", required=True)
    parser.add_argument("--image", required=True, help="first image")
    parser.add_argument("--second_image", help="second image (correspondence)")
    parser.add_argument(
        "--click",
        type=float,
        nargs=2,
        default=(0.5, 0.6),
        metavar=("FX", "FY"),
        help="click position as fractions of the image's width and height",
    )
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--output", default="docs/explorer.png")
    args = parser.parse_args(argv)
    reason = chromium_missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from paka_hf.apps.explorer import build_app

    demo = build_app(args.model, args.base, resolution=args.resolution)
    if demo.explorer_state["error"]:
        print(f"error: {demo.explorer_state['error']}", file=sys.stderr)
        return 2
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with ExplorerPage(f"http://127.0.0.1:{port}/", timeout_s=600) as page:
            page.upload(args.image)
            before = page.wait_for_panels()
            panels = ("query", "heat-base", "heat-adapted")
            if args.second_image:
                page.upload(args.second_image, "second-image")
                page.wait_for_panels(("match-base", "match-adapted"))
                panels += ("match-base", "match-adapted")
                before = {p: page.image_source(p) for p in panels}
            page.click_patch(*args.click)
            page.wait_for_panels(panels, {p: before[p] for p in panels})
            time.sleep(1.0)
            print(page.page_screenshot(args.output))
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
