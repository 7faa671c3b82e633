"""GET / on the HTTP port, rendered by headless Chromium (Debian's chromium, installed by `make test`)."""

import re
import shutil
import subprocess

import numpy as np

from tests.helpers.drift import send, window_after
from tests.servers import start_server


def rendered(url: str, screenshot=None) -> str:
    chromium = shutil.which("chromium")
    assert chromium, (
        "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    )
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,1000",
    ]
    if screenshot:
        subprocess.run(
            [*command, f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
    result = subprocess.run(
        [*command, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def visible_text(dom: str) -> str:
    return " ".join(re.sub(r"<style>.*?</style>|<[^>]+>", " ", dom, flags=re.S).split())


def test_the_status_page_shows_models_versions_parity_provenance_and_drift(
    repository, reference, tmp_path
):
    _, heldout = reference
    (repository / "broken" / "1").mkdir(parents=True)
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--monitor-sample-rate",
        "1",
        "--monitor-max-share",
        "0",
        http=True,
    )
    try:
        clean = heldout.images[:256].astype(np.float32)
        send(server, clean)
        window_after(server, 1)
        send(server, clean * 0.5 + 4)
        window_after(server, 2)
        dom = rendered(server.http_url + "/", screenshot=tmp_path / "status.png")
    finally:
        assert server.stop() == 0
    text = visible_text(dom)
    assert "bnserve 0.1.0: not ready" in text  # "broken" has no loadable version
    assert "m version state reason 1 READY" in text
    assert "broken" in text and "UNAVAILABLE" in text
    assert "BN statistics ema (decay 0.99" in text and "EMA updates" in text
    assert "export parity passed at tolerance 0.0001" in text
    assert re.search(r"load-time golden check max \|error\| \S+ within 0.0001 on 97 samples", text)
    assert "drift: ALARM · 2 windows of 256 samples" in text
    layers = re.findall(r'<tr class="layer">', dom)
    assert len(layers) >= 2 and text.count("conv0+bn0") >= 2
    assert dom.count('class="shift"') == len(layers) and dom.count('class="threshold"') == len(
        layers
    )
    assert (tmp_path / "status.png").stat().st_size > 10_000  # Chromium drew something
