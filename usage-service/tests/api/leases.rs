use tollgate_proto::usage::v1::{
    AcquireConnectionRequest, AcquireConnectionsRequest, ReleaseConnectionRequest,
    ReleaseConnectionsRequest, UpdateConnectionsRequest,
};
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn acquire(
    app: &TestApp,
    user: &str,
    connection: &str,
) -> Result<(bool, u32), tonic::Status> {
    let request = AcquireConnectionRequest {
        user_id: user.into(),
        connection_id: connection.into(),
        ttl_seconds: 30,
    };
    let answer = app
        .client()
        .acquire_connection(app.check(request))
        .await?
        .into_inner();
    assert_eq!(answer.limit, 2, "free allows two connections");
    Ok((answer.granted, answer.active))
}

async fn connection_leases_enforce_the_plan_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    assert_eq!(acquire(&app, &user, "node-a:1").await.unwrap(), (true, 1));
    assert_eq!(acquire(&app, &user, "node-b:1").await.unwrap(), (true, 2));
    assert!(!acquire(&app, &user, "node-a:2").await.unwrap().0);
    // Renewing a held lease never counts twice.
    assert_eq!(acquire(&app, &user, "node-a:1").await.unwrap(), (true, 2));
    let release = ReleaseConnectionRequest {
        user_id: user.clone(),
        connection_id: "node-b:1".into(),
    };
    app.client()
        .release_connection(app.check(release))
        .await
        .unwrap();
    assert!(acquire(&app, &user, "node-a:2").await.unwrap().0);
    // Other users have their own slots.
    assert!(acquire(&app, &new_user(), "node-a:3").await.unwrap().0);
    let bad = acquire(&app, &user, "bad id with spaces").await;
    assert_refused(bad, Code::InvalidArgument, "invalid_request");
}

fn lease(user: &str, connection: &str) -> AcquireConnectionRequest {
    AcquireConnectionRequest {
        user_id: user.into(),
        connection_id: connection.into(),
        ttl_seconds: 30,
    }
}

fn release(user: &str, connection: &str) -> ReleaseConnectionRequest {
    ReleaseConnectionRequest {
        user_id: user.into(),
        connection_id: connection.into(),
    }
}

/// Batches answer in order, count leases taken earlier in the same batch, tell each user's plan
/// and roles, and are refused whole when one entry is bad or there are too many.
async fn batched_leases_behave_like_single_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (free, pro) = (new_user(), new_user());
    app.change_plan(&pro, "pro", false, &key()).await.unwrap();
    let leases = vec![
        lease(&free, "n:1"),
        lease(&pro, "n:2"),
        lease(&free, "n:3"),
        lease(&free, "n:4"),
        lease(&free, "n:1"),
    ];
    let answers = app
        .client()
        .acquire_connections(app.check(AcquireConnectionsRequest { leases }))
        .await
        .unwrap()
        .into_inner()
        .leases;
    let summary: Vec<_> = answers
        .iter()
        .map(|a| (a.granted, a.active, a.limit, a.plan_id.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (true, 1, 2, "free"),
            (true, 1, 10, "pro"),
            (true, 2, 2, "free"),
            (false, 2, 2, "free"),
            (true, 2, 2, "free"),
        ]
    );
    assert_eq!(answers[0].roles, ["member"]);

    let releases = vec![release(&free, "n:1"), release(&free, "n:3")];
    app.client()
        .release_connections(app.check(ReleaseConnectionsRequest { leases: releases }))
        .await
        .unwrap();
    assert_eq!(acquire(&app, &free, "n:5").await.unwrap(), (true, 1));

    let mixed = vec![lease(&free, "n:6"), lease(&free, "bad id")];
    let refused = app
        .client()
        .acquire_connections(app.check(AcquireConnectionsRequest { leases: mixed }))
        .await;
    assert_refused(refused, Code::InvalidArgument, "invalid_request");
    assert_eq!(
        acquire(&app, &free, "n:7").await.unwrap(),
        (true, 2),
        "nothing of a refused batch was taken"
    );
    let too_many = (0..1001)
        .map(|i| release(&free, &format!("n:{i}")))
        .collect();
    let refused = app
        .client()
        .release_connections(app.check(ReleaseConnectionsRequest { leases: too_many }))
        .await;
    assert_refused(refused, Code::InvalidArgument, "invalid_request");
    let not_a_user = vec![lease("not-a-uuid", "n:8")];
    let refused = app
        .client()
        .acquire_connections(app.check(AcquireConnectionsRequest { leases: not_a_user }))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
}

async fn update(
    app: &TestApp,
    release: Vec<ReleaseConnectionRequest>,
    acquire: Vec<AcquireConnectionRequest>,
) -> Result<Vec<(bool, u32)>, tonic::Status> {
    let answer = app
        .client()
        .update_connections(app.check(UpdateConnectionsRequest { release, acquire }))
        .await?
        .into_inner();
    Ok(answer
        .acquired
        .iter()
        .map(|lease| (lease.granted, lease.active))
        .collect())
}

/// An update gives its releases back before it takes its acquisitions, answers each
/// acquisition in order, and is refused whole, with nothing applied, when one entry is bad.
async fn updates_release_before_they_acquire(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let held = vec![lease(&user, "n:1"), lease(&user, "n:2")];
    assert_eq!(
        update(&app, vec![], held).await.unwrap(),
        [(true, 1), (true, 2)]
    );
    // At the plan's limit of two: the release in the same call makes room for one more.
    let answers = update(
        &app,
        vec![release(&user, "n:1")],
        vec![lease(&user, "n:3"), lease(&user, "n:4")],
    )
    .await
    .unwrap();
    assert_eq!(answers, [(true, 2), (false, 2)]);
    assert_eq!(update(&app, vec![], vec![]).await.unwrap(), []);

    let bad_acquisition = update(
        &app,
        vec![release(&user, "n:2")],
        vec![lease(&user, "bad id")],
    )
    .await;
    assert_refused(bad_acquisition, Code::InvalidArgument, "invalid_request");
    let bad_release = update(
        &app,
        vec![release("not-a-uuid", "n:2")],
        vec![lease(&user, "n:5")],
    )
    .await;
    assert_eq!(bad_release.unwrap_err().code(), Code::InvalidArgument);
    let too_many = (0..1001).map(|i| lease(&user, &format!("n:{i}"))).collect();
    let refused = update(&app, vec![release(&user, "n:2")], too_many).await;
    assert_refused(refused, Code::InvalidArgument, "invalid_request");
    assert_eq!(
        acquire(&app, &user, "n:6").await.unwrap(),
        (false, 2),
        "n:2 and n:3 are still held: nothing of a refused update was applied"
    );
}

/// After a downgrade below the connections held, renewals are refused to the newest leases
/// beyond the new limit (by acquisition order, whatever the order of the renewals), so the
/// gateway closes those connections; the oldest keep their slots.
async fn a_downgrade_refuses_renewals_of_the_newest_leases(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    app.change_plan(&user, "pro", false, &key()).await.unwrap();
    let held = ["n:1", "n:2", "n:3", "n:4"].map(|id| lease(&user, id));
    let taken = update(&app, vec![], held.to_vec()).await.unwrap();
    assert_eq!(taken, [(true, 1), (true, 2), (true, 3), (true, 4)]);

    app.change_plan(&user, "free", true, &key()).await.unwrap();
    let renewals = ["n:4", "n:1", "n:3", "n:2"].map(|id| lease(&user, id));
    let renewed = update(&app, vec![], renewals.to_vec()).await.unwrap();
    assert_eq!(renewed, [(false, 3), (true, 3), (false, 2), (true, 2)]);
    assert_eq!(acquire(&app, &user, "n:5").await.unwrap(), (false, 2));
    assert_eq!(acquire(&app, &user, "n:2").await.unwrap(), (true, 2));
}

both_backends!(
    a_downgrade_refuses_renewals_of_the_newest_leases,
    connection_leases_enforce_the_plan_limit,
    batched_leases_behave_like_single_ones,
    updates_release_before_they_acquire
);
