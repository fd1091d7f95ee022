"""What the admin API answers with, as JSON-ready dicts: never a secret but where the contract
shows it once."""

from __future__ import annotations

from typing import Any

from qfserve.access.apps import App
from qfserve.access.usage import UsageSummary
from qfserve.admin.audit import AuditEntry
from qfserve.admin.endpoints import ServingState
from qfserve.admin.operations import KeyInfo
from qfserve.admin.request_log import LogEntry
from qfserve.admin.stats import TimeSeries
from qfserve.admin.times import aware


def app(found: App) -> dict[str, Any]:
    return {
        "app_id": found.app_id,
        "name": found.name,
        "api_key": found.api_key,
        "created_at": aware(found.created_at).isoformat(),
        "disabled": found.disabled,
        "deleted": found.deleted,
        "endpoints": sorted(found.endpoints) if found.endpoints is not None else None,
        "quota": dict(found.quota),
    }


def key(info: KeyInfo) -> dict[str, Any]:
    return {
        "kind": info.kind,
        "app_id": info.app_id,
        "prefix": info.prefix,
        "created_at": info.created_at.isoformat(),
        "revoked": info.revoked,
    }


def usage_row(row: UsageSummary) -> dict[str, Any]:
    return {
        "group": row.group,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.total_tokens,
    }


def log_row(row: LogEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "request_id": row.request_id,
        "created_at": row.created_at.isoformat(),
        "app_id": row.app_id,
        "endpoint": row.endpoint,
        "user_id": row.user_id,
        "status": row.status,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "latency_ms": row.latency_ms,
        "safety_category": row.safety_category,
        "question": row.question,
        "answer": row.answer,
    }


def audit_row(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": row.created_at.isoformat(),
        "admin": row.admin,
        "action": row.action,
        "target": row.target,
        "detail": row.detail,
        "address": row.address,
    }


def time_series(found: TimeSeries) -> dict[str, Any]:
    return {
        "since": found.since.isoformat(),
        "until": found.until.isoformat(),
        "bucket_seconds": found.bucket_seconds,
        "buckets": [start.isoformat() for start in found.buckets],
        "series": [
            {
                "endpoint": one.endpoint,
                "requests": one.requests,
                "errors": one.errors,
                "prompt_tokens": one.prompt_tokens,
                "completion_tokens": one.completion_tokens,
                "latency_p50_ms": one.latency_p50_ms,
                "latency_p95_ms": one.latency_p95_ms,
            }
            for one in found.series
        ],
    }


def serving(state: ServingState) -> dict[str, Any]:
    return {
        "status": state.status,
        "endpoints": [
            {
                "name": e.name,
                "service_name": e.service_name,
                "engine": e.engine,
                "ready": e.ready,
                "running": e.running,
                "waiting": e.waiting,
                "prompt_tokens": e.prompt_tokens,
                "cached_prompt_tokens": e.cached_prompt_tokens,
                "generated_tokens": e.generated_tokens,
                "replicas": [
                    {
                        "url": r.url,
                        "healthy": r.healthy,
                        "outstanding": r.outstanding,
                        "requests": r.requests,
                        "failures": r.failures,
                    }
                    for r in e.replicas
                ],
            }
            for e in state.endpoints
        ],
    }
