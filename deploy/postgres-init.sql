-- Each service keeps its own migration history, so each gets its own database.
-- (POSTGRES_DB creates tollgate_auth; this runs once, on an empty volume.)
CREATE DATABASE tollgate_usage;
