--
-- 002_invisible.sql: "appear offline" is durable (issue 10, item 5).
--
-- users.invisible: the user chose to appear offline (PUT /v1/status
-- offline); written behind by the module with status and last_seen, read
-- back by the warm start and whenever a user first appears in a table,
-- so that a restart never shows such a user online.
--
-- Idempotent, as every file here: applied in file order on every deploy.
--

ALTER TABLE users ADD COLUMN IF NOT EXISTS invisible boolean NOT NULL
    DEFAULT false;
