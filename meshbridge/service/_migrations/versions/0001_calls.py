"""The calls table: one row per caller request.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# (name, columns, dialects it is made on: None for all); see _ledger_schema.py, rule 5.
_INDEXES = [
    ("ix_meshbridge_calls_started", ["started"], None),
    ("ix_meshbridge_calls_api_key_id", ["api_key_id", "started"], {"postgresql"}),
]


def _made(dialects: set[str] | None) -> bool:
    return dialects is None or op.get_bind().dialect.name in dialects


def upgrade() -> None:
    op.create_table(
        "meshbridge_calls",
        sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("duration_bucket", sa.SmallInteger(), nullable=False),
        sa.Column("ttfb", sa.Float()),
        sa.Column("ttft", sa.Float()),
        sa.Column("source", sa.String()),
        sa.Column("api_key_id", sa.String()),
        sa.Column("client", sa.String()),
        sa.Column("peer", sa.String()),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("fallback", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String()),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("request_model", sa.String()),
        sa.Column("response_model", sa.String()),
        sa.Column("model", sa.String()),
        sa.Column("input_tokens", sa.BigInteger()),
        sa.Column("output_tokens", sa.BigInteger()),
        sa.Column("cached_input_tokens", sa.BigInteger()),
        sa.Column("reasoning_tokens", sa.BigInteger()),
        sa.Column("tool_calls", sa.JSON(), nullable=False),
        sa.Column("trace_id", sa.String()),
        sa.Column("prompt", sa.Text()),
        sqlite_with_rowid=False,
    )
    for name, columns, dialects in _INDEXES:
        if _made(dialects):
            op.create_index(name, "meshbridge_calls", columns)


def downgrade() -> None:
    for name, _, dialects in _INDEXES:
        if _made(dialects):
            op.drop_index(name, table_name="meshbridge_calls")
    op.drop_table("meshbridge_calls")
