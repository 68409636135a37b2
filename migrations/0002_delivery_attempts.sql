-- Every attempt to hand over a message (email or webhook), for the record.
CREATE TABLE delivery_attempts (
    batch_id     uuid NOT NULL,
    channel      text NOT NULL,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    error        text,
    PRIMARY KEY (batch_id, channel, attempt),
    FOREIGN KEY (batch_id, channel) REFERENCES deliveries (batch_id, channel) ON DELETE CASCADE
);
