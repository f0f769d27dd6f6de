"""The jobs and job_events tables (as the store created them before migrations).

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "jobs" not in existing:
        op.create_table(
            "jobs",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("kind", sa.String(32), index=True),
            sa.Column("state", sa.String(16), index=True),
            sa.Column("spec_json", sa.Text, default="{}"),
            sa.Column("config_json", sa.Text, default="{}"),
            sa.Column("result_json", sa.Text, default="{}"),
            sa.Column("labels_json", sa.Text, default="{}"),
            sa.Column("reason", sa.Text, default=""),
            sa.Column("message", sa.Text, default=""),
            sa.Column("fraction", sa.Float, default=0.0),
            sa.Column("output_uri", sa.Text, default=""),
            sa.Column("trace_id", sa.String(32), default=""),
            sa.Column("traceparent", sa.String(64), default=""),
            sa.Column("ray_job_id", sa.String(128), default=""),
            sa.Column("log_offset", sa.Integer, default=0),
            sa.Column("created", sa.Float, index=True),
            sa.Column("updated", sa.Float),
        )
    if "job_events" not in existing:
        op.create_table(
            "job_events",
            sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("job_id", sa.String(64), index=True),
            sa.Column("sequence", sa.Integer),
            sa.Column("state", sa.String(16)),
            sa.Column("fraction", sa.Float, default=0.0),
            sa.Column("message", sa.Text, default=""),
            sa.Column("metrics_json", sa.Text, default="{}"),
            sa.Column("time", sa.Float),
        )


def downgrade() -> None:
    op.drop_table("job_events")
    op.drop_table("jobs")
