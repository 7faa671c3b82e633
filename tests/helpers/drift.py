"""The drift endpoint of a running server: send traffic, wait for windows."""

import json

import numpy as np
import requests

from tests.helpers.serving import wait_for
from tests.requests import v2_json_body


def drift_status(server, model="m"):
    """The drift document, parsed strictly: a NaN or Infinity token (not JSON) fails the test."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    text = requests.get(f"{server.http_url}/v2/models/{model}/drift", timeout=30).text
    return json.loads(text, parse_constant=refuse)


def send(server, images: np.ndarray, model="m"):
    for start in range(0, len(images), 32):
        response = requests.post(
            f"{server.http_url}/v2/models/{model}/infer",
            json=v2_json_body(images[start : start + 32]),
            timeout=30,
        )
        assert response.status_code == 200, response.text


def window_after(server, windows: int) -> dict:
    wait_for(lambda: drift_status(server)["windows"] >= windows, what=f"drift window {windows}")
    return drift_status(server)
