-- The store's own random id, made once when the store is made (or upgraded to this version).
-- An archive file records the id of the store that wrote it (store/archive.py): its rows name
-- that store's numbers and accounts by their ids, so another store must neither add to it nor
-- read it as its own history. `extbill db copy` carries the id to the copy (same ledger).
CREATE TABLE IF NOT EXISTS store_identity (
    id  TEXT NOT NULL PRIMARY KEY
);
INSERT INTO store_identity (id)
    SELECT lower(hex(randomblob(16))) WHERE NOT EXISTS (SELECT 1 FROM store_identity);
