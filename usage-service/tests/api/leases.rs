use tollgate_proto::usage::v1::{AcquireConnectionRequest, ReleaseConnectionRequest};
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

both_backends!(connection_leases_enforce_the_plan_limit);
