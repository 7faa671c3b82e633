"""A seeded fuzz of hostile .npz files for every reader of them: golden samples (server load, verify) and
--stats adapt files and capture shards. Each is either read or refused with a UserError; nothing else is
raised, and no declared size is allocated."""

import io
import resource
import zipfile

import numpy as np
import pytest

from bnserve.core.errors import UserError
from bnserve.core.golden import read_golden
from bnserve.exporter.options import read_adapt_shard

DTYPES = ["<f4", "<f8", ">f4", "<i8", "|u1", "|b1", "|O", "<U3", "<c8", "|V4"]


def member(shape, descr, payload=b"") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return header.getvalue() + payload


def good_golden() -> bytes:
    buffer = io.BytesIO()
    images = np.zeros((2, 8, 8, 1), np.float32)
    np.savez(buffer, **{"input/random": images, "logits/random": np.zeros((2, 10), np.float32),
                        "probabilities/random": np.zeros((2, 10), np.float32), "tolerance": np.float32(1e-4),
                        "x": images})  # fmt: skip
    return buffer.getvalue()


def hostile(rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(0, 5))
    if kind == 0:  # a valid file with bytes flipped
        data = bytearray(good_golden())
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        return bytes(data)
    if kind == 1:  # truncated
        data = good_golden()
        return data[: int(rng.integers(0, len(data)))]
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if rng.random() < 0.5 else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for _ in range(int(rng.integers(1, 5))):
            name = str(
                rng.choice(["x", "input/random", "logits/random", "tolerance", "y", "../evil", "a"])
            )
            shape = tuple(
                int(d) for d in rng.choice([0, 1, 8, 10, 2**20, 2**31, 2**62], rng.integers(0, 5))
            )
            payload = bytes(rng.integers(0, 256, int(rng.integers(0, 256)), dtype=np.uint8))
            suffix = ".npy" if rng.random() < 0.9 else ".txt"
            if kind == 4:  # a header that is not one
                archive.writestr(name + suffix, b"\x93NUMPY\x01\x00" + payload)
            else:
                archive.writestr(name + suffix, member(shape, str(rng.choice(DTYPES)), payload))
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")  # duplicate members are part of the fuzz
@pytest.mark.parametrize("reader", ["golden", "adapt"])
def test_hostile_npz_files_are_read_or_refused_and_never_allocated(tmp_path, reader):
    rng = np.random.default_rng(7)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"read": 0, "refused": 0}
    for case in range(300):
        path = tmp_path / f"{case}.npz"
        path.write_bytes(hostile(rng))
        try:
            if reader == "golden":
                read_golden(path)
            else:
                read_adapt_shard(path, "--stats 'adapt:fuzz'", (8, 8, 1))
            outcomes["read"] += 1
        except UserError as exc:
            assert "\n" not in str(exc), str(exc)
            outcomes["refused"] += 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert outcomes["refused"] > 200, outcomes
    assert grown_mb < 200, f"peak RSS grew by {grown_mb:.0f} MiB"
