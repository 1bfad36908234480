"""A message's images at full size: one at a time, scaled down to fit the window (never up),
Left/Right for the others, Esc closes."""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtGui import QGuiApplication, QImageReader, QKeyEvent, QPixmap
from PySide6.QtWidgets import QDialog, QLabel, QVBoxLayout, QWidget

MARGIN = 12


def describe(attachment) -> str:
    return f"{attachment.name}, {attachment.width}\u00d7{attachment.height}"


class ImageViewer(QDialog):
    """Shows `attachments[number]` of one message."""

    def __init__(self, attachments, number: int = 0, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("imageViewer")
        self.setModal(False)
        self.attachments = list(attachments)
        self.number = -1
        self._pixmap = QPixmap()
        self.image_label = QLabel(self)
        self.image_label.setObjectName("imageViewerImage")
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(1, 1)  # so the window can shrink below the image
        self.caption = QLabel(self)
        self.caption.setObjectName("imageViewerCaption")
        self.caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(MARGIN, MARGIN, MARGIN, MARGIN)
        layout.addWidget(self.image_label, 1)
        layout.addWidget(self.caption)
        self.show_image(number)
        self.resize(self._first_size())

    def show_image(self, number: int) -> None:
        if not self.attachments:
            return
        self.number = number % len(self.attachments)
        attachment = self.attachments[self.number]
        reader = QImageReader(str(attachment.path))
        reader.setAutoTransform(True)
        image = reader.read()
        self._pixmap = QPixmap.fromImage(image) if not image.isNull() else QPixmap()
        of = f" ({self.number + 1} of {len(self.attachments)})" if len(self.attachments) > 1 else ""
        self.setWindowTitle(f"{attachment.name}{of}")
        text = describe(attachment) + of
        if self._pixmap.isNull():
            self.image_label.setText(f"{attachment.name} cannot be shown: the file is missing or unreadable.")
            text += ", missing"
        self.image_label.setAccessibleName(text)
        more = "; Left and Right show the others" if len(self.attachments) > 1 else ""
        self.image_label.setAccessibleDescription(f"The image at full size{more}; Esc closes")
        keys = " \u00b7 \u2190 \u2192 the others" if len(self.attachments) > 1 else ""
        self.caption.setText(f"{describe(attachment)}{of}{keys} \u00b7 Esc closes")
        self._fit()

    def shown_size(self) -> QSize:
        """The size the image is drawn at now (empty while none is shown)."""
        pixmap = self.image_label.pixmap()
        return pixmap.deviceIndependentSize().toSize() if pixmap is not None and not pixmap.isNull() else QSize()

    def _first_size(self) -> QSize:
        screen = (self.parentWidget().screen() if self.parentWidget() else None) or QGuiApplication.primaryScreen()
        room = screen.availableGeometry().size() * 0.85 if screen is not None else QSize(1024, 768)
        wanted = self._pixmap.size() if not self._pixmap.isNull() else QSize(360, 120)
        wanted.setHeight(wanted.height() + self.caption.sizeHint().height() + self.layout().spacing())
        return wanted.grownBy(self.layout().contentsMargins()).boundedTo(room).expandedTo(QSize(200, 120))

    def _fit(self) -> None:
        if self._pixmap.isNull():
            return
        room = self.image_label.size()
        size = self._pixmap.size()
        if size.width() > room.width() or size.height() > room.height():
            size = size.scaled(room, Qt.AspectRatioMode.KeepAspectRatio)
        self.image_label.setPixmap(
            self._pixmap.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        )

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def event(self, event: QEvent) -> bool:
        # Esc is also the main window's Stop shortcut: while the viewer has the keys, it closes the viewer.
        if event.type() == QEvent.Type.ShortcutOverride and event.key() == Qt.Key.Key_Escape:
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Right, Qt.Key.Key_Down, Qt.Key.Key_Space) and len(self.attachments) > 1:
            self.show_image(self.number + 1)
        elif event.key() in (Qt.Key.Key_Left, Qt.Key.Key_Up) and len(self.attachments) > 1:
            self.show_image(self.number - 1)
        else:
            super().keyPressEvent(event)  # Esc closes
