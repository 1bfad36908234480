"""A remote OpenAI-compatible server: its address, the "test connection" probe (`GET /v1/models`)
with a plain verdict, and the API key kept in the OS keyring (never in the settings file)."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from app.remote.chat_stream import error_reason

log = logging.getLogger("canvas_chat.remote")

KEYRING_SERVICE = "Canvas Chat remote server"
PROBE_TIMEOUT_S = 10.0
NO_KEYRING_NOTE = (
    "No system keyring is available, so the API key is used for this session only "
    "(it is never written to the settings file in plain text)."
)


def normalized_base_url(text: str) -> str:
    """"host:8000" → "http://host:8000/v1"; a URL with a path keeps it ("…/v1", "…/openai/v1")."""
    text = text.strip().rstrip("/")
    if not text:
        return ""
    if "://" not in text:
        text = "http://" + text
    if urlsplit(text).path in ("", "/"):
        text += "/v1"
    return text


def is_diffusiongemma(model_id: str, owned_by: str = "") -> bool:
    """Whether replies come canvas by canvas: a DiffusionGemma id, or Canvas Chat's own server."""
    return "diffusiongemma" in model_id.lower().replace("-", "").replace("_", "") or owned_by == "canvas-chat"


@dataclass(frozen=True)
class RemoteModel:
    id: str
    owned_by: str = ""

    @property
    def is_diffusiongemma(self) -> bool:
        return is_diffusiongemma(self.id, self.owned_by)


@dataclass(frozen=True)
class RemoteServer:
    """Where replies come from when the app uses a server instead of its own worker."""

    base_url: str  # normalized, ending in the API root ("http://host:8000/v1")
    model: str
    api_key: str = field(default="", repr=False)
    diffusiongemma: bool = True

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc or self.base_url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def how_replies_arrive(self) -> str:
        if self.diffusiongemma:
            return "Replies come from the server a canvas at a time (committed canvases, no denoising steps)."
        return "Replies come from the server as plain text (not a DiffusionGemma model)."

    def answered_by(self) -> str:
        """Recorded with each reply and shown in the status bar."""
        return f"Remote \u00b7 {self.model} at {self.host}"


@dataclass(frozen=True)
class ProbeVerdict:
    ok: bool
    text: str  # one or two plain sentences for the user
    models: tuple[RemoteModel, ...] = ()


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return "SSL" in text or "CERTIFICATE" in text.upper() or "TLS" in text


def probe(base_url: str, api_key: str = "", timeout_s: float = PROBE_TIMEOUT_S) -> ProbeVerdict:
    """Asks the server for its models (blocking: run it off the GUI thread) and says what it found."""
    url = normalized_base_url(base_url)
    if not url:
        return ProbeVerdict(False, "Enter the server's address, for example http://gpu-box:8000/v1.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=timeout_s) as client:
            response = client.get(url + "/models", headers=headers)
    except httpx.ConnectError as exc:
        if _is_tls_failure(exc):
            return ProbeVerdict(False, f"TLS error: the secure connection to {url} failed ({exc}). "
                                       "Check http:// versus https:// and the server's certificate.")
        return ProbeVerdict(False, f"Unreachable: nothing answers at {url} ({exc}).")
    except httpx.TimeoutException:
        return ProbeVerdict(False, f"Unreachable: {url} did not answer within {timeout_s:.0f} s.")
    except httpx.HTTPError as exc:
        if _is_tls_failure(exc):
            return ProbeVerdict(False, f"TLS error: the secure connection to {url} failed ({exc}).")
        return ProbeVerdict(False, f"The connection to {url} failed: {exc}.")
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code in (401, 403):
        reason = error_reason(body)
        return ProbeVerdict(False, f"The server refused the API key ({response.status_code})"
                                   + (f": \u201c{reason}\u201d." if reason else ".") + " Check the key.")
    if response.status_code != 200:
        reason = error_reason(body) or (body[:200] if isinstance(body, str) else "")
        return ProbeVerdict(False, f"GET {url}/models answered {response.status_code}"
                                   + (f": \u201c{reason}\u201d." if reason else ".")
                                   + " Is this the API root of an OpenAI-compatible server?")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return ProbeVerdict(False, f"{url}/models did not answer with a model list: "
                                   "this does not look like an OpenAI-compatible server.")
    models = tuple(
        RemoteModel(str(entry["id"]), str(entry.get("owned_by") or ""))
        for entry in data
        if isinstance(entry, dict) and entry.get("id")
    )
    if not models:
        return ProbeVerdict(False, "Connected, but the server lists no models (none loaded yet?).")
    count = f"{len(models)} model" + ("s" if len(models) != 1 else "")
    return ProbeVerdict(True, f"Connected: the server offers {count}.", models)


def model_note(model: RemoteModel | None) -> str:
    if model is None:
        return ""
    if model.is_diffusiongemma:
        return ("Replies arrive canvas by canvas: the server sends each committed canvas, "
                "not the denoising steps, so there is no step-by-step animation.")
    return ("Not a DiffusionGemma model: allowed. Its replies show as plain text as they stream, "
            "without canvas animation.")


# ---------------------------------------------------------------------------- the API key


def save_api_key(base_url: str, api_key: str) -> str:
    """Keeps the key in the OS keyring (or forgets it when empty). Returns "" or a note for the user."""
    import keyring

    try:
        if api_key:
            keyring.set_password(KEYRING_SERVICE, base_url, api_key)
        elif keyring.get_password(KEYRING_SERVICE, base_url) is not None:
            keyring.delete_password(KEYRING_SERVICE, base_url)
    except Exception as exc:  # noqa: BLE001  (no backend, a locked or broken keyring: all plain to the user)
        log.info("keyring unavailable: %s", exc)
        return NO_KEYRING_NOTE if api_key else ""
    return ""


def load_api_key(base_url: str) -> str:
    import keyring

    try:
        return keyring.get_password(KEYRING_SERVICE, base_url) or ""
    except Exception as exc:  # noqa: BLE001
        log.info("keyring unavailable: %s", exc)
        return ""
