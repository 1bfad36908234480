"""Thumbnails of a message's attached images, drawn at the top of its bubble."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from collections import OrderedDict
from typing import Any

from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QImageReader, QPainter, QPen, QPixmap

THUMB_HEIGHT = 120
THUMB_GAP = 6
BELOW_GAP = 8  # between the thumbnails and the text
CACHE_SIZE = 64


class MessageImages:
    """Lays out and paints the thumbnails; decoded pixmaps are cached by file."""

    def __init__(self) -> None:
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()

    def pixmap(self, path: Any) -> QPixmap:
        key = str(path)
        cached = self._pixmaps.get(key)
        if cached is not None:
            self._pixmaps.move_to_end(key)
            return cached
        reader = QImageReader(key)
        reader.setAutoTransform(True)
        size = reader.size()
        if size.isValid() and size.height() > THUMB_HEIGHT * 2:
            reader.setScaledSize(size.scaled(QSize(10**6, THUMB_HEIGHT * 2), Qt.AspectRatioMode.KeepAspectRatio))
        image = reader.read()
        pixmap = QPixmap.fromImage(image) if not image.isNull() else QPixmap()
        self._pixmaps[key] = pixmap
        while len(self._pixmaps) > CACHE_SIZE:
            self._pixmaps.popitem(last=False)
        return pixmap

    def _rects(self, message: Any, max_width: int) -> list[QRect]:
        rects = []
        x = y = 0
        for attachment in getattr(message, "attachments", ()):
            width, height = max(1, attachment.width), max(1, attachment.height)
            w = min(max_width, max(24, round(width * THUMB_HEIGHT / height)))
            if x and x + w > max_width:
                x, y = 0, y + THUMB_HEIGHT + THUMB_GAP
            rects.append(QRect(x, y, w, THUMB_HEIGHT))
            x += w + THUMB_GAP
        return rects

    def image_at(self, message: Any, max_width: int, point: QPoint) -> int:
        """The number of the thumbnail under `point` (relative to the thumbnails' top left), or -1."""
        for number, rect in enumerate(self._rects(message, max_width)):
            if rect.contains(point):
                return number
        return -1

    def block_size(self, message: Any, max_width: int) -> QSize:
        """The thumbnails' block, gap below included; empty without images."""
        rects = self._rects(message, max_width)
        if not rects:
            return QSize(0, 0)
        return QSize(max(r.right() + 1 for r in rects), max(r.bottom() + 1 for r in rects) + BELOW_GAP)

    def paint(self, painter: QPainter, message: Any, left: int, top: int, max_width: int, border: str) -> None:
        for attachment, rect in zip(message.attachments, self._rects(message, max_width)):
            target = rect.translated(left, top)
            pixmap = self.pixmap(attachment.path)
            if pixmap.isNull():
                painter.setPen(QPen(QColor(border), 1, Qt.PenStyle.DashLine))
                painter.drawRect(target.adjusted(0, 0, -1, -1))
                painter.drawText(target, int(Qt.AlignmentFlag.AlignCenter), "image\nmissing")
                continue
            painter.drawPixmap(target, pixmap)
