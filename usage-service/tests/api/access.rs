use std::time::Duration;

use tollgate_proto::usage::v1::{
    AssignRoleRequest, DelegateRequest, DenyReason, ListPermissionsRequest,
    RevokeDelegationRequest, RevokeRoleRequest,
};
use tollgate_shared::time::unix_now;
use tonic::Code;

use crate::{both_backends, helpers::*};

pub(crate) async fn assign(app: &TestApp, user: &str, role: &str) {
    let request = AssignRoleRequest {
        user_id: user.into(),
        role: role.into(),
    };
    app.client().assign_role(app.admin(request)).await.unwrap();
}

async fn revoke(app: &TestApp, user: &str, role: &str) -> Vec<String> {
    let request = RevokeRoleRequest {
        user_id: user.into(),
        role: role.into(),
    };
    let answer = app.client().revoke_role(app.admin(request)).await.unwrap();
    answer.into_inner().roles
}

pub(crate) async fn roles_and_permissions(app: &TestApp, user: &str) -> (Vec<String>, Vec<String>) {
    let request = ListPermissionsRequest {
        user_id: user.into(),
    };
    let listed = app.client().list_permissions(app.check(request)).await;
    let listed = listed.unwrap().into_inner();
    (listed.roles, listed.permissions)
}

pub(crate) async fn delegate(
    app: &TestApp,
    from: &str,
    to: &str,
    permission: &str,
    expires_at: i64,
) -> Result<String, tonic::Status> {
    let request = DelegateRequest {
        from_user_id: from.into(),
        to_user_id: to.into(),
        permission: permission.into(),
        expires_at,
    };
    app.client()
        .delegate(app.admin(request))
        .await
        .map(|response| response.into_inner().delegation_id)
}

async fn plans_and_roles_combine_with_inheritance(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let member = new_user();
    let viewer = new_user();
    let admin = new_user();
    for user in [&member, &viewer, &admin] {
        app.change_plan(user, "enterprise", false, &key())
            .await
            .unwrap();
    }
    assign(&app, &viewer, "viewer").await;
    assign(&app, &admin, "admin").await;

    // Every user is a member until given a role.
    assert!(
        app.authorize(&member, "tool:calculator")
            .await
            .unwrap()
            .allowed
    );
    let denied = app.authorize(&viewer, "tool:calculator").await.unwrap();
    assert_eq!(
        (denied.allowed, denied.reason()),
        (false, DenyReason::PermissionDenied)
    );
    assert!(app.authorize(&viewer, "tool:search").await.unwrap().allowed);
    // Admin inherits member and viewer, and adds the audit permission.
    for action in [
        "tool:search",
        "tool:calculator",
        "tool:admin_audit",
        "admin:audit",
    ] {
        assert!(
            app.authorize(&admin, action).await.unwrap().allowed,
            "{action}"
        );
    }
    let audit = app.authorize(&member, "admin:audit").await.unwrap();
    assert_eq!(audit.reason(), DenyReason::PermissionDenied);
    assert_eq!(audit.roles, ["member"]);

    // The plan gates first: an admin on free lacks the feature, and is told which plan has it.
    let free_admin = new_user();
    assign(&app, &free_admin, "admin").await;
    let gated = app
        .authorize(&free_admin, "tool:admin_audit")
        .await
        .unwrap();
    assert_eq!(
        (gated.reason(), gated.upgrade_to.as_deref()),
        (DenyReason::PlanFeatureMissing, Some("enterprise"))
    );

    // Revoking the role takes effect at once.
    app.client()
        .revoke_role(app.admin(RevokeRoleRequest {
            user_id: admin.clone(),
            role: "admin".into(),
        }))
        .await
        .unwrap();
    assert!(!app.authorize(&admin, "admin:audit").await.unwrap().allowed);
}

async fn delegations_grant_what_the_grantor_holds_for_a_time(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (grantor, grantee, third) = (new_user(), new_user(), new_user());
    for user in [&grantor, &grantee, &third] {
        app.change_plan(user, "enterprise", false, &key())
            .await
            .unwrap();
    }
    assign(&app, &grantor, "admin").await;
    let an_hour = unix_now() + 3600;

    assert!(
        !app.authorize(&grantee, "admin:audit")
            .await
            .unwrap()
            .allowed
    );
    let id = delegate(&app, &grantor, &grantee, "admin:audit", an_hour)
        .await
        .unwrap();
    assert!(
        app.authorize(&grantee, "admin:audit")
            .await
            .unwrap()
            .allowed
    );
    let listed = app
        .client()
        .list_permissions(app.check(ListPermissionsRequest {
            user_id: grantee.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.permissions.contains(&"admin:audit".to_owned()));

    // Held only by delegation: it cannot be passed on, back or onwards (no loops).
    assert_refused(
        delegate(&app, &grantee, &third, "admin:audit", an_hour).await,
        Code::FailedPrecondition,
        "not_allowed",
    );
    assert_refused(
        delegate(&app, &grantee, &grantor, "admin:audit", an_hour).await,
        Code::FailedPrecondition,
        "not_allowed",
    );
    // Nobody delegates what it lacks, or to itself, or into the past.
    assert_refused(
        delegate(&app, &third, &grantee, "admin:audit", an_hour).await,
        Code::FailedPrecondition,
        "not_allowed",
    );
    assert_refused(
        delegate(&app, &grantor, &grantor, "admin:audit", an_hour).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    assert_refused(
        delegate(&app, &grantor, &third, "admin:audit", unix_now() - 1).await,
        Code::InvalidArgument,
        "invalid_request",
    );

    // A grantor who loses the role can no longer lend it.
    app.client()
        .revoke_role(app.admin(RevokeRoleRequest {
            user_id: grantor.clone(),
            role: "admin".into(),
        }))
        .await
        .unwrap();
    assert!(
        !app.authorize(&grantee, "admin:audit")
            .await
            .unwrap()
            .allowed
    );
    assign(&app, &grantor, "admin").await;
    assert!(
        app.authorize(&grantee, "admin:audit")
            .await
            .unwrap()
            .allowed
    );

    // Revoked: denied at once; revoking twice is NOT_FOUND.
    app.client()
        .revoke_delegation(app.admin(RevokeDelegationRequest {
            delegation_id: id.clone(),
        }))
        .await
        .unwrap();
    assert!(
        !app.authorize(&grantee, "admin:audit")
            .await
            .unwrap()
            .allowed
    );
    let again = app
        .client()
        .revoke_delegation(app.admin(RevokeDelegationRequest { delegation_id: id }))
        .await;
    assert_refused(again, Code::NotFound, "unknown_delegation");

    // Expired: denied once its time is up.
    delegate(&app, &grantor, &third, "admin:audit", unix_now() + 1)
        .await
        .unwrap();
    assert!(app.authorize(&third, "admin:audit").await.unwrap().allowed);
    let expired = eventually(Duration::from_secs(5), || async {
        !app.authorize(&third, "admin:audit").await.unwrap().allowed
    })
    .await;
    assert!(expired, "an expired delegation still grants");
}

/// Roles are explicit: a user first seen through a decision is granted `member` as a role it
/// can lose, one first seen through an assignment holds just that role, and a user whose last
/// role is revoked holds no role permission at all.
async fn revoking_the_last_role_leaves_no_role_permission(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (restricted, newcomer) = (new_user(), new_user());
    for user in [&restricted, &newcomer] {
        app.change_plan(user, "enterprise", false, &key())
            .await
            .unwrap();
    }
    assign(&app, &restricted, "viewer").await;
    assert!(
        app.authorize(&restricted, "tool:search")
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !app.authorize(&restricted, "tool:calculator")
            .await
            .unwrap()
            .allowed
    );
    assert!(revoke(&app, &restricted, "viewer").await.is_empty());
    for action in ["tool:search", "tool:calculator"] {
        let denied = app.authorize(&restricted, action).await.unwrap();
        assert_eq!(
            (denied.allowed, denied.reason()),
            (false, DenyReason::PermissionDenied),
            "{action}: a revoked viewer is no member"
        );
        assert!(denied.roles.is_empty());
    }
    assert_eq!(
        roles_and_permissions(&app, &restricted).await,
        (vec![], vec![])
    );

    assert!(
        app.authorize(&newcomer, "tool:calculator")
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(roles_and_permissions(&app, &newcomer).await.0, ["member"]);
    assert!(revoke(&app, &newcomer, "member").await.is_empty());
    for action in ["tool:search", "tool:calculator"] {
        assert!(
            !app.authorize(&newcomer, action).await.unwrap().allowed,
            "{action}"
        );
    }
    assert_eq!(
        roles_and_permissions(&app, &newcomer).await,
        (vec![], vec![]),
        "the default is granted once, not again"
    );
}

both_backends!(
    plans_and_roles_combine_with_inheritance,
    delegations_grant_what_the_grantor_holds_for_a_time,
    revoking_the_last_role_leaves_no_role_permission
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_seeing_new_users_at_once_grant_the_default_role_once() {
    let a = TestApp::spawn(Backend::PostgresRedis).await;
    let b = TestApp::start(
        a.config.clone(),
        std::sync::Arc::clone(&a.database),
        std::sync::Arc::clone(&a.auth),
    )
    .await;
    let users: Vec<String> = (0..16).map(|_| new_user()).collect();
    // Both replicas see each new user at the same moment: each answers with the default role.
    let answers = futures::future::join_all(users.iter().flat_map(|user| {
        [
            a.authorize(user, "tool:calculator"),
            b.authorize(user, "tool:calculator"),
        ]
    }))
    .await;
    for answer in answers {
        let answer = answer.unwrap();
        assert!(answer.allowed, "{answer:?}");
        assert_eq!(answer.roles, ["member"]);
    }
    // It was granted once, as one row: one revocation takes it away on both replicas.
    for user in &users {
        assert!(revoke(&a, user, "member").await.is_empty());
    }
    for user in &users {
        for replica in [&a, &b] {
            let revoked = eventually(Duration::from_secs(2), || async {
                !replica
                    .authorize(user, "tool:calculator")
                    .await
                    .unwrap()
                    .allowed
            })
            .await;
            assert!(revoked, "a replica still grants the revoked default role");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_evicts_cached_decisions_on_the_other() {
    let a = TestApp::spawn(Backend::PostgresRedis).await;
    let b = TestApp::start(
        a.config.clone(),
        std::sync::Arc::clone(&a.database),
        std::sync::Arc::clone(&a.auth),
    )
    .await;
    let user = new_user();
    // B caches the user's context (free plan, member).
    assert!(!b.authorize(&user, "tool:web_browse").await.unwrap().allowed);
    assert!(b.authorize(&user, "tool:calculator").await.unwrap().allowed);

    // Well inside the cache's 10 s lifetime, B must see A's changes.
    let within = Duration::from_secs(2);
    a.change_plan(&user, "pro", false, &key()).await.unwrap();
    let upgraded = eventually(within, || async {
        b.authorize(&user, "tool:web_browse").await.unwrap().allowed
    })
    .await;
    assert!(upgraded, "B kept a stale plan");

    // Demoted: viewer granted, the default role taken away.
    assign(&a, &user, "viewer").await;
    revoke(&a, &user, "member").await;
    let demoted = eventually(within, || async {
        !b.authorize(&user, "tool:calculator").await.unwrap().allowed
    })
    .await;
    assert!(demoted, "B kept stale roles");
}
