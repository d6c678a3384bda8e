"""The PostgreSQL index's schema migrations: ``NNNN_what.sql``, applied in order by ``specbuilder.store.postgres``."""
