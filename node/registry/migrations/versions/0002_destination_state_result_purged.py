"""destination pause state, result purged_at (issue 15: operator actions, retention)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'destination_state',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.Column('changed_at', sa.DateTime(), nullable=False),
        sa.Column('changed_by', sa.String(length=128), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('name'),
    )
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purged_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
    op.drop_table('destination_state')
