"""What an .npz declares before anything is decompressed: each member's shape and dtype, read from the .npy
header at the start of the member (numpy.lib.format), so that a small file declaring gigabytes is refused
before memory is spent on it."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bnserve.core.errors import UserError

MAX_HEADER_BYTES = 1 << 16
"""An .npy header is a few hundred bytes; numpy's own reader caps it at 10,000 unless told otherwise."""


def declared_arrays(
    source: Path | BinaryIO, label: str
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} as the archive's .npy headers declare them; UserError naming ``label``
    when it is not a zip of .npy members or a header does not parse."""
    try:
        with zipfile.ZipFile(source) as archive:
            declared = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise UserError(f"{label}: member {info.filename!r} is not an .npy array")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = reader(member, max_header_size=MAX_HEADER_BYTES)
                declared[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
            return declared
    except UserError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise UserError(f"{label}: not a readable .npz ({type(exc).__name__}: {exc})") from None


def declared_bytes(declared: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """The bytes the arrays would take once decompressed: sum of prod(shape) x itemsize."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in declared.values())


def check_declared_size(
    declared: dict[str, tuple[tuple[int, ...], np.dtype]], limit: int, label: str
) -> None:
    size = declared_bytes(declared)
    if size > limit:
        shapes = ", ".join(f"{name} {list(shape)}" for name, (shape, _) in sorted(declared.items()))
        raise UserError(
            f"{label}: declares {size} bytes of arrays ({shapes}), more than the {limit} allowed; "
            "refused before decompressing"
        )
