-- Dead letters sent back to their source topic by `auditflow dlq replay`: each at most once.
CREATE TABLE dlq_replays (
    dlq_topic     TEXT        NOT NULL,
    dlq_partition INTEGER     NOT NULL,
    dlq_offset    BIGINT      NOT NULL,
    source_topic  TEXT        NOT NULL,
    replayed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
