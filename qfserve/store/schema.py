"""The tables of the store. Every change goes through an alembic revision in migrations/."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AppRow(Base):
    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    api_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # A salted slow hash (scrypt) of the Secret Key; the key itself is shown once and never kept.
    secret_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Deleted apps are kept (soft delete): their usage stays attributable, their tokens get 15.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Per-app quota overrides; NULL means the settings' default.
    qps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Comma-separated endpoint names the app may call; NULL means all.
    endpoints: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class TokenRow(Base):
    __tablename__ = "access_tokens"

    # SHA-256 of the token: tokens carry 128 random bits, so a fast hash is enough here.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("apps.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[int] = mapped_column(BigInteger)  # unix seconds
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class IamKeyRow(Base):
    """An IAM Access Key. Its Secret Key is derived from the server's master key and `nonce`
    (HMAC), never stored: a copy of the database alone cannot sign requests."""

    __tablename__ = "iam_keys"

    access_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("apps.id", ondelete="CASCADE"), index=True
    )
    nonce: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRow(Base):
    """The usage ledger: one row per chat request that reached an app (never its text)."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(String(16))
    app_id: Mapped[int] = mapped_column(Integer, index=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[int] = mapped_column(Integer)
    safety_category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AppKeyRow(Base):
    """A long-lived app key for `Authorization: Bearer` on the OpenAI-compatible routes. Only its
    SHA-256 is kept (it carries 192 random bits); `prefix` lets an operator tell keys apart."""

    __tablename__ = "app_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    app_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("apps.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class V2KeyRow(Base):
    """A V2 credential, `bce-v3/<key_id>/<secret>`: a long-lived API key (`expires_at` NULL)
    or a bearer token minted for an IAM key (`expires_at` set). Both are presented the same way,
    so one indexed read checks either. Only the SHA-256 of the whole credential is kept (its
    secret carries 160 random bits); `key_id` is public, for listing and revocation."""

    __tablename__ = "v2_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    app_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("apps.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class RequestLogRow(Base):
    """The request log: the usage ledger's row of each chat request again, in a table of its own
    that the retention job prunes (the ledger is billing data and is never pruned), with the
    question and answer text when the operator turned that on."""

    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_app_id_id", "app_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(String(16))
    app_id: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[int] = mapped_column(Integer)
    safety_category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    question: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)


class AdminRow(Base):
    """An operator of the admin API. Only a salted scrypt hash of the password is kept."""

    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdminTokenRow(Base):
    """An admin's bearer token for scripts: only its SHA-256 (it carries 256 random bits)."""

    __tablename__ = "admin_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    admin_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("admins.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AdminSessionRow(Base):
    """A browser session: the SHA-256 of the cookie's secret, and when it was last used."""

    __tablename__ = "admin_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    admin_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("admins.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AdminAuditRow(Base):
    """One admin action that changed something (or a login): who, what, on what, when."""

    __tablename__ = "admin_audit"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    admin: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    # JSON: the action's parameters, never a secret.
    detail: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(String(64))
