-- Merkle trees over every chain (RFC 9162 hashing), so single events and history prefixes
-- can be proven without the database.
--
-- merkle_frontier: the roots of the perfect subtrees the chain's tree decomposes into
-- (8-byte big-endian size, then 32 bytes per set bit of the size, largest subtree first),
-- advanced in the same transaction as the rows. NULL on chains written before trees were
-- kept: the writer rebuilds it from the chain's row hashes on first use.
ALTER TABLE ledger_chain_heads ADD COLUMN merkle_frontier BYTEA;

-- The tree head a v2 checkpoint signs; its tree size is the checkpoint's seq. NULL on v1
-- checkpoints (signed before trees were kept), which still verify as before.
ALTER TABLE ledger_checkpoints ADD COLUMN tree_root BYTEA;

