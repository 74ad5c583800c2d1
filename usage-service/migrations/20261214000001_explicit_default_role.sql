-- Roles are explicit: a user holds exactly the roles in user_roles, and one with none holds no
-- role permission. The default role, member, is granted as a row when usage-service first sees
-- a user; seen_users records that sighting, so a user whose every role was revoked is not
-- granted the default again. Portable SQL, like the first migration.

CREATE TABLE seen_users (
    user_id TEXT PRIMARY KEY,
    first_seen_at BIGINT NOT NULL
);

-- Every user seen so far has a subscription; those without a role held member implicitly.
INSERT INTO user_roles (user_id, role, granted_at)
SELECT s.user_id, 'member', s.updated_at
FROM subscriptions s
WHERE NOT EXISTS (SELECT 1 FROM user_roles r WHERE r.user_id = s.user_id);

INSERT INTO seen_users (user_id, first_seen_at)
SELECT user_id, MIN(seen_at)
FROM (
    SELECT user_id, updated_at AS seen_at FROM subscriptions
    UNION ALL
    SELECT user_id, granted_at AS seen_at FROM user_roles
) known
GROUP BY user_id;
