-- One durable send as the relay on PostgreSQL runs it (`PgStore::enqueue_for_sender` in
-- relay/src/store/postgres/mod.rs): a transaction that locks the mailbox row by its send id,
-- reads its capability hashes (the relay checks the sender's capability against them), calls
-- `handover_enqueue` (relay/src/store/postgres/schema.rs) and commits. Four round trips, as the
-- relay's: BEGIN, the SELECT ... FOR UPDATE, the enqueue, COMMIT.
--
-- Run it on a database the relay created (its schema and mailboxes), with `-M prepared` (the
-- relay prepares both statements once per connection) and these variables (`-D NAME=VALUE`):
--   mailboxes   how many mailboxes the sends spread over (1 to 8); client c sends to mailbox
--               c % mailboxes, as the load generator's connection c sends to its mailbox c
--   send0..     the mailboxes' send ids, bytea in hex (`\x...`)
--   body        the envelope's ciphertext, bytea in hex (1 KiB in the load generator)
--   expires     the envelope's expiry, unix seconds
--   wake        the wake-up payload (`NODE:RECV` in hex in the relay; its length is what counts)
--   quota       the quota limits passed to the enqueue (the load generator lifts them:
--               9223372036854775807)
-- The handover-loadgen binary runs it itself after the relay's peak phase (`--store`).
\set m :client_id % :mailboxes
\set e random(1, 1000000000000000)
BEGIN;
\if :m = 0
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send0 FOR UPDATE \gset
\elif :m = 1
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send1 FOR UPDATE \gset
\elif :m = 2
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send2 FOR UPDATE \gset
\elif :m = 3
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send3 FOR UPDATE \gset
\elif :m = 4
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send4 FOR UPDATE \gset
\elif :m = 5
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send5 FOR UPDATE \gset
\elif :m = 6
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send6 FOR UPDATE \gset
\else
SELECT recv_id, capability_hashes FROM handover_mailboxes WHERE send_id = :send7 FOR UPDATE \gset
\endif
SELECT handover_enqueue(:recv_id, int8send(:e) || int8send(:client_id), :expires, :body, :quota, :quota, :wake);
COMMIT;
