"""Room for longer ids and owners: a revision id is its deployment's name (up to 63 characters)
plus `.rev<n>`, and an owner is a host name (up to 63) plus a process id and a suffix. SQLite never
enforced the old 64-character limits; PostgreSQL does.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("id", type_=sa.String(128), existing_type=sa.String(64), existing_nullable=False)
        batch.alter_column("owner", type_=sa.String(128), existing_type=sa.String(64), existing_nullable=False,
                           existing_server_default="")  # fmt: skip
    with op.batch_alter_table("job_events") as batch:
        batch.alter_column("job_id", type_=sa.String(128), existing_type=sa.String(64))


def downgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.alter_column("job_id", type_=sa.String(64), existing_type=sa.String(128))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("owner", type_=sa.String(64), existing_type=sa.String(128), existing_nullable=False,
                           existing_server_default="")  # fmt: skip
        batch.alter_column("id", type_=sa.String(64), existing_type=sa.String(128), existing_nullable=False)
