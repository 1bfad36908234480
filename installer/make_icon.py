"""Draws Canvas Chat's Windows icon (.ico, 16 to 256 px) with the standard library only.

A rounded square with a blue-violet gradient and a white speech bubble whose three dots go from
noise-grey to solid, the way a block denoises. Small sizes are stored as 32-bit BMP entries and
256 px as PNG, the layout every Windows version and makensis read.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

SIZES = (16, 24, 32, 48, 64, 128, 256)


def _inside_rounded_rect(x: float, y: float, x0: float, y0: float, x1: float, y1: float, r: float) -> bool:
    if not (x0 <= x <= x1 and y0 <= y <= y1):
        return False
    cx = min(max(x, x0 + r), x1 - r)
    cy = min(max(y, y0 + r), y1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _pixel(u: float, v: float) -> tuple[int, int, int, int]:
    """Colour at (u, v) in the unit square, RGBA."""
    if not _inside_rounded_rect(u, v, 0.02, 0.02, 0.98, 0.98, 0.2):
        return (0, 0, 0, 0)
    t = (u + v) / 2
    base = (int(40 + 70 * t), int(70 - 30 * t), int(200 + 30 * t))
    in_bubble = _inside_rounded_rect(u, v, 0.16, 0.2, 0.84, 0.68, 0.14)
    # The bubble's tail: a triangle below its left half.
    in_tail = 0.26 <= u <= 0.46 and 0.66 <= v <= 0.84 and (v - 0.66) <= (0.46 - u) * 0.9
    if not (in_bubble or in_tail):
        return (*base, 255)
    for cx, shade in ((0.33, 170), (0.5, 110), (0.67, 40)):
        if (u - cx) ** 2 + (v - 0.44) ** 2 <= 0.065**2:
            return (shade, shade, min(255, shade + 40), 255)
    return (255, 255, 255, 255)


def render(size: int) -> list[list[tuple[int, int, int, int]]]:
    """size x size RGBA rows, top to bottom, 4x4 supersampled."""
    rows = []
    for y in range(size):
        row = []
        for x in range(size):
            acc = [0, 0, 0, 0]
            for sy in range(4):
                for sx in range(4):
                    r, g, b, a = _pixel((x + (sx + 0.5) / 4) / size, (y + (sy + 0.5) / 4) / size)
                    acc[0] += r * a
                    acc[1] += g * a
                    acc[2] += b * a
                    acc[3] += a
            alpha = acc[3] // 16
            row.append(tuple(c // max(acc[3], 1) for c in acc[:3]) + (alpha,) if acc[3] else (0, 0, 0, 0))
        rows.append(row)
    return rows


def _png(rows: list[list[tuple[int, int, int, int]]]) -> bytes:
    size = len(rows)
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _bmp(rows: list[list[tuple[int, int, int, int]]]) -> bytes:
    size = len(rows)
    header = struct.pack("<IiiHHIIiiII", 40, size, size * 2, 1, 32, 0, 0, 0, 0, 0, 0)
    pixels = b"".join(bytes((b, g, r, a)) for row in reversed(rows) for (r, g, b, a) in row)
    mask_row = ((size + 31) // 32) * 4
    return header + pixels + b"\x00" * (mask_row * size)  # alpha carries transparency; mask all 0


def build_ico(sizes: tuple[int, ...] = SIZES) -> bytes:
    images = [(_png(render(s)) if s >= 256 else _bmp(render(s)), s) for s in sizes]
    out = struct.pack("<HHH", 0, 1, len(images))
    offset = 6 + 16 * len(images)
    for data, s in images:
        dim = 0 if s >= 256 else s
        out += struct.pack("<BBBBHHII", dim, dim, 0, 0, 1, 32, len(data), offset)
        offset += len(data)
    return out + b"".join(data for data, _ in images)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: make_icon.py OUT.ico", file=sys.stderr)
        return 2
    Path(sys.argv[1]).write_bytes(build_ico())
    return 0


if __name__ == "__main__":
    sys.exit(main())
