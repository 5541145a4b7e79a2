-- Account lifecycle notices sent, by occurrence key (the password's change date, or the last
-- sign-in and the threshold): each is sent once, ever, whichever instance runs the job.
CREATE TABLE outreach_sent (
    notice_key TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    sent_at    BIGINT NOT NULL
);
