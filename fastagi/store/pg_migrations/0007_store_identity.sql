-- PostgreSQL twin of migrations/0007_store_identity.sql: the store's own random id.
CREATE TABLE IF NOT EXISTS store_identity (
    id  TEXT NOT NULL PRIMARY KEY
);
INSERT INTO store_identity (id)
    SELECT md5(random()::text || clock_timestamp()::text) WHERE NOT EXISTS (SELECT 1 FROM store_identity);
