"""`ChatStore`: conversations and messages in SQLite (stdlib sqlite3) under the user data folder.

WAL journal with synchronous=FULL, one short transaction per write, `PRAGMA user_version` as
the schema version with forward migrations. Used from the GUI thread only (sqlite3's own
same-thread check enforces it). A write the disk refuses raises `StoreWriteError`, whose text
can be shown to the user; nothing in memory is touched by a failed write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from engine import paths
from app.chat.attachments import (
    IMAGES_FOLDER,
    Attachment,
    remove_conversation_images,
    remove_image_files,
    write_image_files,
)
from app.chat.messages import DEFAULT_TITLE, Conversation, Message
from app.chat.versions import ReplyVersions

log = logging.getLogger("canvas_chat.store")


class StoreError(Exception):
    """The chat database cannot be used."""


class StoreWriteError(StoreError):
    """A write failed (full disk, read-only file, locked database). Its text is for the user."""


@dataclass(frozen=True)
class SearchHit:
    conversation: Conversation
    snippet: str  # matching message text around the hit, or "" when the title matched


_MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, status, stats, error, replay, created, updated, answered_by, token_ids, versions"
)
_UPDATABLE_MESSAGE_FIELDS = {"content", "status", "stats", "error", "replay", "token_ids", "versions"}


def _migration_1(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            deleted REAL
        )"""
    )
    # seq orders messages within a conversation (insertion order) and is the FTS rowid.
    db.execute(
        """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
            content TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('sending', 'streaming', 'finished', 'stopped', 'interrupted', 'error')),
            stats TEXT,
            error TEXT NOT NULL DEFAULT '',
            replay BLOB,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX messages_by_conversation ON messages(conversation_id, seq)")
    db.execute("CREATE INDEX conversations_by_updated ON conversations(updated DESC)")


def _migration_2(db: sqlite3.Connection) -> None:
    """Full-text search over message text, when this SQLite has FTS5 (else search uses LIKE)."""
    try:
        db.execute(
            "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='seq')"
        )
    except sqlite3.OperationalError as exc:
        log.info("SQLite has no FTS5 (%s); search falls back to LIKE", exc)
        return
    # One statement per execute(): executescript() would commit the migration's transaction.
    db.execute(
        """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts(rowid, content) VALUES (new.seq, new.content);
        END"""
    )
    db.execute(
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
        END"""
    )
    db.execute(
        """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
            INSERT INTO messages_fts(rowid, content) VALUES (new.seq, new.content);
        END"""
    )
    db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")


def _migration_add_reply_backend(db: sqlite3.Connection) -> None:
    """Which backend and model wrote each reply ("Local · …", "Remote · model at host")."""
    db.execute("ALTER TABLE messages ADD COLUMN answered_by TEXT NOT NULL DEFAULT ''")


def _migration_add_attachments(db: sqlite3.Connection) -> None:
    """Images of user messages: the files live in `images/<conversation id>/` beside the database."""
    db.execute(
        """CREATE TABLE attachments (
            id TEXT PRIMARY KEY,
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            file_name TEXT NOT NULL,
            media_type TEXT NOT NULL,
            name TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            size_bytes INTEGER NOT NULL
        )"""
    )
    db.execute("CREATE INDEX attachments_by_message ON attachments(message_id, position)")


def _migration_add_conversation_settings(db: sqlite3.Connection) -> None:
    """Per-chat settings (app.chat.chat_settings) as JSON; NULL: the chat follows the defaults."""
    db.execute("ALTER TABLE conversations ADD COLUMN settings TEXT")


def _migration_add_reply_tokens_and_versions(db: sqlite3.Connection) -> None:
    """A reply's token ids (what a span rewrite starts from) and, once rewritten, its versions."""
    db.execute("ALTER TABLE messages ADD COLUMN token_ids TEXT")  # JSON list of ints
    db.execute("ALTER TABLE messages ADD COLUMN versions TEXT")  # JSON: app.chat.versions.ReplyVersions


# MIGRATIONS[n - 1] takes the database from user_version n - 1 to n.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_add_reply_backend,
    _migration_add_attachments,
    _migration_add_conversation_settings,
    _migration_add_reply_tokens_and_versions,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _describe(exc: sqlite3.Error, path: Path) -> str:
    text = str(exc).lower()
    if "full" in text:
        reason = "the disk is full"
    elif "readonly" in text or "read-only" in text:
        reason = "the file is read-only"
    elif "locked" in text or "busy" in text:
        reason = "another program is using it"
    elif "closed" in text:
        reason = "the database is already closed"
    else:
        reason = str(exc)
    return f"Could not save the chat to {path}: {reason}. Your messages stay in this window."


class ChatStore:
    """All conversations and their messages."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else paths.database_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: transactions are explicit (see _write).
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreError(f"Could not open the chat database {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self.journal_mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
            self.has_fts = self._table_exists("messages_fts")
            self.interrupted_on_open = self._mark_unfinished_interrupted()
            self.purge_deleted()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"Could not open the chat database {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _table_exists(self, name: str) -> bool:
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return row is not None

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The chat database {self.path} was written by a newer Canvas Chat "
                f"(schema {version}, this version knows {SCHEMA_VERSION})."
            )
        while version < SCHEMA_VERSION:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[version](self._db)
                version += 1
                self._db.execute(f"PRAGMA user_version = {version}")
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            log.info("chat database migrated to schema %d", version)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a refused write becomes StoreWriteError and leaves the DB unchanged."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            log.error("chat database write failed: %s", exc)
            raise StoreWriteError(_describe(exc, self.path)) from exc

    def _mark_unfinished_interrupted(self) -> int:
        """A message left sending/streaming means the app was killed mid-reply."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE messages SET status = 'interrupted', updated = ? WHERE status IN ('sending', 'streaming')",
                (time.time(),),
            )
        if cursor.rowcount:
            log.info("%d message(s) left unfinished by the last session marked interrupted", cursor.rowcount)
        return cursor.rowcount

    # ------------------------------------------------------------------ conversations

    @staticmethod
    def _conversation(row: sqlite3.Row) -> Conversation:
        return Conversation(id=row["id"], title=row["title"], created=row["created"], updated=row["updated"])

    def create_conversation(self, title: str = DEFAULT_TITLE) -> Conversation:
        conversation = Conversation(title=title)
        with self._write() as db:
            db.execute(
                "INSERT INTO conversations (id, title, created, updated) VALUES (?, ?, ?, ?)",
                (conversation.id, conversation.title, conversation.created, conversation.updated),
            )
        return conversation

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE id = ? AND deleted IS NULL", (conversation_id,)
        ).fetchone()
        return self._conversation(row) if row else None

    def list_conversations(self, limit: int | None = None) -> list[Conversation]:
        """Conversations, most recently updated first (soft-deleted ones left out)."""
        rows = self._db.execute(
            "SELECT * FROM conversations WHERE deleted IS NULL ORDER BY updated DESC, rowid DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [self._conversation(row) for row in rows]

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        with self._write() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def conversation_settings(self, conversation_id: str) -> dict[str, Any] | None:
        """The chat's saved settings, or None when it has none (or they are not readable JSON)."""
        row = self._db.execute("SELECT settings FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None or row["settings"] is None:
            return None
        try:
            return json.loads(row["settings"])
        except ValueError:
            log.warning("conversation %s has unreadable settings; using the defaults", conversation_id)
            return None

    def save_conversation_settings(self, conversation_id: str, settings: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE conversations SET settings = ? WHERE id = ?",
                (json.dumps(settings, ensure_ascii=False), conversation_id),
            )

    def touch_conversation(self, conversation_id: str, when: float | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?", (when or time.time(), conversation_id)
            )

    def delete_conversation(self, conversation_id: str) -> None:
        """Hides the conversation; `restore_conversation` undoes it until the next purge."""
        with self._write() as db:
            db.execute("UPDATE conversations SET deleted = ? WHERE id = ?", (time.time(), conversation_id))

    def restore_conversation(self, conversation_id: str) -> Conversation | None:
        with self._write() as db:
            db.execute("UPDATE conversations SET deleted = NULL WHERE id = ?", (conversation_id,))
        return self.get_conversation(conversation_id)

    @property
    def images_root(self) -> Path:
        """Where attached images are kept: beside the database, one folder per conversation."""
        return self.path.parent / IMAGES_FOLDER

    def purge_deleted(self) -> int:
        """Removes soft-deleted conversations for good (called on open: undo lasts one session),
        with their images."""
        with self._write() as db:
            doomed = [row["id"] for row in db.execute("SELECT id FROM conversations WHERE deleted IS NOT NULL")]
            cursor = db.execute("DELETE FROM conversations WHERE deleted IS NOT NULL")
        for conversation_id in doomed:
            remove_conversation_images(self.images_root, conversation_id)
        return cursor.rowcount

    def import_chats(self, chats: list[Any]) -> list[Conversation]:
        """Inserts whole conversations (`app.chat.export.ExportedChat`) in ONE transaction: all of
        them or, when any write fails, none. Their images are written beside the database inside
        that transaction and removed again if it fails. A chat's settings go to a `settings`
        column if the schema has one (per-chat settings)."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(conversations)")}
        try:
            with self._write() as db:
                for chat in chats:
                    c = chat.conversation
                    db.execute(
                        "INSERT INTO conversations (id, title, created, updated) VALUES (?, ?, ?, ?)",
                        (c.id, c.title, c.created, c.updated),
                    )
                    if chat.settings is not None and "settings" in columns:
                        db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (json.dumps(chat.settings), c.id))
                    for m in chat.messages:
                        db.execute(
                            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (m.id, c.id, m.role, m.content, m.status,
                             json.dumps(m.stats) if m.stats is not None else None, m.error, m.replay, m.created,
                             m.updated, m.answered_by, _encode_token_ids(m.token_ids),
                             m.versions.to_json() if m.versions is not None else None),
                        )
                        images = getattr(chat, "images", {}).get(m.id)
                        if images:
                            _insert_attachments(db, m.id, write_image_files(self.images_root, c.id, m.id, images))
        except BaseException as exc:
            for chat in chats:  # new ids: these folders hold only what this import wrote
                remove_conversation_images(self.images_root, chat.conversation.id)
            if isinstance(exc, OSError):
                raise StoreWriteError(f"Could not save the imported images in {self.images_root}: {exc.strerror or exc}.") from exc
            raise
        return [chat.conversation for chat in chats]

    # ------------------------------------------------------------------ messages

    @staticmethod
    def _message(row: sqlite3.Row, attachments: tuple[Attachment, ...] = ()) -> Message:
        stats = json.loads(row["stats"]) if row["stats"] else None
        token_ids = tuple(json.loads(row["token_ids"])) if row["token_ids"] else ()
        versions = ReplyVersions.from_json(row["versions"]) if row["versions"] else None
        return Message(
            attachments=attachments,
            id=row["id"],
            conversation_id=row["conversation_id"],
            role=row["role"],
            content=row["content"],
            status=row["status"],
            stats=stats,
            error=row["error"],
            replay=row["replay"],
            created=row["created"],
            updated=row["updated"],
            answered_by=row["answered_by"],
            token_ids=token_ids,
            versions=versions,
        )

    def messages(self, conversation_id: str) -> list[Message]:
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,),
        ).fetchall()
        images = self._attachments(
            "SELECT a.* FROM attachments a JOIN messages m ON m.id = a.message_id WHERE m.conversation_id = ? "
            "ORDER BY a.position",
            conversation_id,
        )
        return [self._message(row, images.get(row["id"], ())) for row in rows]

    def get_message(self, message_id: str) -> Message | None:
        row = self._db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        images = self._attachments("SELECT * FROM attachments WHERE message_id = ? ORDER BY position", message_id)
        return self._message(row, images.get(message_id, ()))

    def _attachments(self, query: str, key: str) -> dict[str, tuple[Attachment, ...]]:
        found: dict[str, list[Attachment]] = {}
        for row in self._db.execute(query, (key,)).fetchall():
            conversation_id = self._db.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (row["message_id"],)
            ).fetchone()[0]
            found.setdefault(row["message_id"], []).append(
                Attachment(
                    message_id=row["message_id"],
                    path=self.images_root / conversation_id / row["file_name"],
                    media_type=row["media_type"],
                    name=row["name"],
                    width=row["width"],
                    height=row["height"],
                    size_bytes=row["size_bytes"],
                    id=row["id"],
                )
            )
        return {message_id: tuple(items) for message_id, items in found.items()}

    def add_message(self, message: Message) -> None:
        """Inserts a message (at the end of its conversation) and bumps the conversation."""
        if not message.conversation_id:
            raise ValueError("the message has no conversation_id")
        with self._write() as db:
            db.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.conversation_id,
                    message.role,
                    message.content,
                    message.status,
                    json.dumps(message.stats) if message.stats is not None else None,
                    message.error,
                    message.replay,
                    message.created,
                    message.updated,
                    message.answered_by,
                    _encode_token_ids(message.token_ids),
                    message.versions.to_json() if message.versions is not None else None,
                ),
            )
            _insert_attachments(db, message.id, message.attachments)
            db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?", (message.updated, message.conversation_id)
            )

    def update_message(self, message_id: str, **values: Any) -> None:
        """Updates content, status, stats, error and/or replay of one message."""
        unknown = set(values) - _UPDATABLE_MESSAGE_FIELDS
        if unknown:
            raise ValueError(f"cannot update message field(s) {sorted(unknown)}")
        if "stats" in values and values["stats"] is not None:
            values["stats"] = json.dumps(values["stats"])
        if "token_ids" in values:
            values["token_ids"] = _encode_token_ids(values["token_ids"])
        if "versions" in values and values["versions"] is not None:
            values["versions"] = values["versions"].to_json()
        now = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._write() as db:
            db.execute(
                f"UPDATE messages SET {assignments}, updated = ? WHERE id = ?",
                (*values.values(), now, message_id),
            )
            db.execute(
                "UPDATE conversations SET updated = ? WHERE id = (SELECT conversation_id FROM messages WHERE id = ?)",
                (now, message_id),
            )

    def delete_messages_from(self, message_id: str) -> list[Message]:
        """Deletes a message and every later one of its conversation; returns what was deleted."""
        row = self._db.execute("SELECT seq, conversation_id FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return []
        images = self._attachments(
            "SELECT a.* FROM attachments a JOIN messages m ON m.id = a.message_id WHERE m.conversation_id = ? "
            "ORDER BY a.position",
            row["conversation_id"],
        )
        with self._write() as db:
            doomed = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq >= ? ORDER BY seq",
                (row["conversation_id"], row["seq"]),
            ).fetchall()
            db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND seq >= ?", (row["conversation_id"], row["seq"])
            )
        deleted = [self._message(r, images.get(r["id"], ())) for r in doomed]
        for message in deleted:
            remove_image_files(list(message.attachments))
        return deleted

    # ------------------------------------------------------------------ search

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Conversations whose title or message text contains `text` (FTS5 prefix match if available)."""
        text = text.strip()
        if not text:
            return [SearchHit(c, "") for c in self.list_conversations(limit)]
        hits: dict[str, SearchHit] = {}
        for row in self._db.execute(
            "SELECT * FROM conversations WHERE deleted IS NULL AND title LIKE ? ESCAPE '\\' "
            "ORDER BY updated DESC LIMIT ?",
            (f"%{_like_escape(text)}%", limit),
        ):
            hits[row["id"]] = SearchHit(self._conversation(row), "")
        for row in self._message_matches(text, limit):
            if row["id"] not in hits:
                hits[row["id"]] = SearchHit(self._conversation(row), row["snippet"])
        ordered = sorted(hits.values(), key=lambda hit: hit.conversation.updated, reverse=True)
        return ordered[:limit]

    def _message_matches(self, text: str, limit: int) -> list[sqlite3.Row]:
        if self.has_fts:
            query = " ".join('"' + word.replace('"', '""') + '"*' for word in text.split())
            try:
                return self._db.execute(
                    "SELECT c.*, snippet(messages_fts, 0, '', '', '…', 12) AS snippet "
                    "FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
                    "JOIN conversations c ON c.id = m.conversation_id "
                    "WHERE messages_fts MATCH ? AND c.deleted IS NULL "
                    "ORDER BY c.updated DESC LIMIT ?",
                    (query, limit * 4),
                ).fetchall()
            except sqlite3.OperationalError as exc:
                log.info("full-text query %r failed (%s); using LIKE", query, exc)
        return self._db.execute(
            "SELECT c.*, substr(m.content, max(1, instr(lower(m.content), lower(?)) - 30), 80) AS snippet "
            "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.content LIKE ? ESCAPE '\\' AND c.deleted IS NULL ORDER BY c.updated DESC LIMIT ?",
            (text, f"%{_like_escape(text)}%", limit * 4),
        ).fetchall()


def _encode_token_ids(token_ids) -> str | None:
    return json.dumps(list(token_ids)) if token_ids else None


def _insert_attachments(db: sqlite3.Connection, message_id: str, attachments) -> None:
    for position, attachment in enumerate(attachments):
        db.execute(
            "INSERT INTO attachments (id, message_id, position, file_name, media_type, name, width, height, "
            "size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                attachment.id, message_id, position, attachment.path.name, attachment.media_type,
                attachment.name, attachment.width, attachment.height, attachment.size_bytes,
            ),
        )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
