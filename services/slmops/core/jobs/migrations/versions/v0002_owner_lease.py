"""An owner lease on each job, and event sequence numbers unique per job.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("lease_expires", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_jobs_state_lease", "jobs", ["state", "lease_expires"])
    op.create_index("uq_job_events_job_sequence", "job_events", ["job_id", "sequence"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_job_events_job_sequence", "job_events")
    op.drop_index("ix_jobs_state_lease", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires")
        batch.drop_column("owner")
