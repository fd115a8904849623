"""payments.charging_until: the lease of the request that is charging the card

While a request charges a card (and asks the gateway after a failure), it holds its payment's
lease; ``shop payments reconcile`` leaves a leased payment alone, so it never releases an order
whose charge is still in flight. The request ends the lease when it stops; a process that dies
leaves it to run out.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "payments", sa.Column("charging_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("charging_until")
