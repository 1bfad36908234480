"""The composer's images: the attach button, the row of thumbnails waiting to be sent, and the
checks an image passes before it is attached (from a file, a drop or the clipboard).
"""

from __future__ import annotations

import app.qt_compat  # noqa: F401  (must precede heavy PySide6 use; see the module)

from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QToolButton, QWidget

from app.chat.attachments import LIMITS_TEXT, ImageRefused, ImageSource, too_large
from engine.protocol import MAX_IMAGE_BYTES

THUMB_SIZE = 56
# Qt's format names for the three kinds the engine takes.
QT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
PASTED_NAME = "pasted image"
NO_MODEL_REASON = "Load a model first: images go to the model's vision tower."
REMOTE_REASON = "Images go to this PC's model only: a server you connect to is sent text."


def check_image(data: bytes, name: str) -> ImageSource:
    """The image if Qt can decode it as PNG, JPEG or WebP within the size limit; else ImageRefused."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRefused(too_large(name))
    buffer = QBuffer()
    buffer.setData(QByteArray(data))
    buffer.open(QIODevice.OpenModeFlag.ReadOnly)
    reader = QImageReader(buffer)
    kind = bytes(reader.format().data()).decode("ascii", "replace").lower()
    if kind not in QT_FORMATS:
        what = f"a {kind.upper()} image" if kind else "not an image Canvas Chat can read"
        raise ImageRefused(f"{name} is {what}: attach {LIMITS_TEXT}.")
    image = reader.read()
    if image.isNull():
        raise ImageRefused(f"{name} cannot be read as an image ({reader.errorString()}).")
    return ImageSource(data, QT_FORMATS[kind], name, image.width(), image.height())


def read_image_file(path: Path) -> ImageSource:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageRefused(too_large(path.name))
        data = path.read_bytes()
    except OSError as exc:
        raise ImageRefused(f"{path.name} cannot be opened ({exc.strerror or exc}).") from None
    return check_image(data, path.name)


def image_sources_from_mime(mime: QMimeData) -> tuple[list[ImageSource], list[str]]:
    """The images of a drop or a paste (local image files, or a bitmap), and why others were refused."""
    sources: list[ImageSource] = []
    problems: list[str] = []
    files = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []
    for file in files:
        try:
            sources.append(read_image_file(Path(file)))
        except ImageRefused as exc:
            problems.append(str(exc))
    if not files and mime.hasImage():
        image = QImage(mime.imageData())
        if image.isNull():
            problems.append("The pasted image cannot be read.")
        else:
            data = QByteArray()
            buffer = QBuffer(data)
            buffer.open(QIODevice.OpenModeFlag.WriteOnly)
            image.save(buffer, "PNG")
            try:
                sources.append(check_image(bytes(data.data()), PASTED_NAME))
            except ImageRefused as exc:
                problems.append(str(exc))
    return sources, problems


def mime_has_images(mime: QMimeData) -> bool:
    if mime.hasImage():
        return True
    return mime.hasUrls() and any(
        url.isLocalFile() and Path(url.toLocalFile()).suffix.lower().lstrip(".") in QT_FORMATS for url in mime.urls()
    )


def thumbnail(data: bytes | None = None, path: Path | None = None, size: int = THUMB_SIZE) -> QPixmap:
    image = QImage.fromData(data) if data is not None else QImage(str(path))
    if image.isNull():
        return QPixmap()
    return QPixmap.fromImage(image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))


class AttachmentStrip(QWidget):
    """Images waiting to be sent, each a thumbnail that removes itself when clicked, and the last
    refusal in plain words. Hidden while empty."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("attachmentStrip")
        self._sources: list[ImageSource] = []
        self._tiles: list[QToolButton] = []
        self.problem_label = QLabel(self)
        self.problem_label.setObjectName("attachmentProblem")
        self.problem_label.setWordWrap(True)
        self.problem_label.hide()
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(6)
        self._layout.addWidget(self.problem_label, 1)
        self._layout.addStretch(0)
        self._update_visibility()

    def sources(self) -> list[ImageSource]:
        return list(self._sources)

    def add(self, source: ImageSource) -> None:
        self._sources.append(source)
        tile = QToolButton(self)
        tile.setObjectName("attachmentThumb")
        tile.setIcon(QIcon(thumbnail(source.data)))
        tile.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        tile.setToolTip(f"{source.name} ({source.width}\u00d7{source.height}) \u2014 click to remove")
        tile.setAccessibleName(f"Attached image {source.name}")
        tile.setAccessibleDescription("Activate to remove this image from the message")
        tile.clicked.connect(lambda _=False, t=tile: self._remove_tile(t))
        self._layout.insertWidget(len(self._tiles), tile)
        self._tiles.append(tile)
        self.show_problem("")
        self.changed.emit()

    def add_mime(self, mime: QMimeData) -> None:
        sources, problems = image_sources_from_mime(mime)
        for source in sources:
            self.add(source)
        self.show_problem(" ".join(problems))

    def add_files(self, files: list[str]) -> None:
        problems = []
        for file in files:
            try:
                self.add(read_image_file(Path(file)))
            except ImageRefused as exc:
                problems.append(str(exc))
        self.show_problem(" ".join(problems))

    def clear(self) -> None:
        for tile in self._tiles:
            self._drop_tile(tile)
        self._tiles.clear()
        self._sources.clear()
        self.show_problem("")
        self.changed.emit()

    def show_problem(self, text: str) -> None:
        self.problem_label.setText(text)
        self.problem_label.setVisible(bool(text))
        self._update_visibility()

    def _remove_tile(self, tile: QToolButton) -> None:
        index = self._tiles.index(tile)
        self._tiles.pop(index)
        self._sources.pop(index)
        self._drop_tile(tile)
        self._update_visibility()
        self.changed.emit()

    def _drop_tile(self, tile: QToolButton) -> None:
        tile.hide()
        self._layout.removeWidget(tile)
        tile.deleteLater()

    def _update_visibility(self) -> None:
        self.setVisible(bool(self._tiles) or bool(self.problem_label.text()))


class AttachButton(QToolButton):
    """Opens a file dialog for images; disabled, with the reason as tooltip and accessible
    description, while the model cannot read images."""

    files_chosen = Signal(list)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("attachButton")
        self.setText("Image\u2026")
        self.setAccessibleName("Attach an image")
        self.clicked.connect(self._on_clicked)
        self.set_model_accepts_images(False, NO_MODEL_REASON)

    def set_model_accepts_images(self, accepts: bool, reason: str = "") -> None:
        self.setEnabled(accepts)
        text = f"Attach an image ({LIMITS_TEXT}); you can also drop or paste one" if accepts else reason
        self.setToolTip(text)
        self.setAccessibleDescription(text)

    def _on_clicked(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Attach images", "", "Images (*.png *.jpg *.jpeg *.webp);;All files (*)"
        )
        if files:
            self.files_chosen.emit(files)


def images_refusal(info) -> str:
    """Why the loaded model (a `ModelLoaded`) takes no images; "" when it does."""
    if info.accepts_images:
        return ""
    if info.is_demo:
        return (
            "The demo model cannot read images: it was trained on text only. Load DiffusionGemma "
            "(Model \u25b8 Model setup\u2026) to attach images."
        )
    return f"{Path(info.model).name} cannot read images: it has no vision tower."


def attach_state(info, remote: bool = False) -> tuple[bool, str]:
    """(enabled, reason when not) of the attach button, for the local model's `ModelLoaded` (or None)."""
    if remote:
        return False, REMOTE_REASON
    if info is None:
        return False, NO_MODEL_REASON
    return bool(info.accepts_images), images_refusal(info)
