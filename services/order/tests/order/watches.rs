//! WatchOrder under abuse: one user opening watch after watch, a thousand watchers
//! of one order, and a watch left open forever.

use std::time::Duration;

use futures::StreamExt as _;
use shop_proto::order as pb;
use tonic::Code;

use crate::mesh::Mesh;

/// Transactions committed in the order service's database so far.
async fn commits(pool: &sqlx::PgPool, database: &str) -> i64 {
    let mut conn = pool.acquire().await.expect("connection");
    // Statistics are a snapshot per transaction: clear it to read the current figure.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .expect("clear snapshot");
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(database)
        .fetch_one(&mut *conn)
        .await
        .expect("xact_commit")
}

#[tokio::test]
async fn a_user_may_hold_only_a_few_watches_and_each_ends_after_its_lifetime() {
    let mesh = Mesh::start_with(|settings| {
        settings.watch.max_watches_per_user = 3;
        settings.watch.max_watch_secs = 3;
    })
    .await;
    let (token, order) = mesh.confirmed_order("CAP").await;

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            mesh.watch(&token, &order.order_id)
                .await
                .expect("within the cap"),
        );
    }
    let err = mesh
        .watch(&token, &order.order_id)
        .await
        .expect_err("past the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("close one first"),
        "{}",
        err.message()
    );

    // Another user is not affected by this one's watches.
    let (other, theirs) = mesh.confirmed_order("CAP").await;
    mesh.watch(&other, &theirs.order_id)
        .await
        .expect("their own cap");

    // Closing one gives its place back.
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(stream) = mesh.watch(&token, &order.order_id).await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = again.expect("a closed watch frees its place");

    // The first message is the order now; then nothing changes, and the stream
    // ends at its lifetime with UNAVAILABLE, which says to watch again.
    let first = stream.next().await.expect("first").expect("ok");
    assert_eq!(first.order.expect("order").order_id, order.order_id);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends within its lifetime")
        .expect("an item")
        .expect_err("ends with a status");
    assert_eq!(end.code(), Code::Unavailable);
    assert!(end.message().contains("watch again"), "{}", end.message());
}

#[tokio::test]
async fn a_thousand_watchers_of_one_order_cost_no_polling_and_all_see_the_change() {
    const WATCHERS: usize = 1_000;
    let mesh = Mesh::start_with(|settings| {
        settings.watch.max_watches = WATCHERS;
        settings.watch.max_watches_per_user = WATCHERS;
    })
    .await;
    let (token, order) = mesh.confirmed_order("FAN").await;

    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut stream = mesh.watch(&token, &order.order_id).await.expect("watch");
        let first = stream.next().await.expect("first").expect("ok");
        assert_eq!(
            first.order.expect("order").status,
            pb::OrderStatus::Confirmed as i32
        );
        streams.push(stream);
    }

    // With every watcher waiting, the database is left alone: a polling watcher
    // would read the order five times a second, 15,000 transactions here.
    let db = &mesh.order.as_ref().expect("order service").db;
    let pool = sqlx::PgPool::connect(&shop_testkit::admin_database_url())
        .await
        .expect("server pool");
    let before = commits(&pool, &db.name).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = commits(&pool, &db.name).await - before;
    eprintln!("{WATCHERS} idle watchers: {idle} transactions in 3 s");
    assert!(
        idle < 300,
        "{idle} transactions in 3 s with {WATCHERS} idle watchers"
    );

    // One change reaches every watcher, then each stream ends (a final state).
    mesh.cancel(&token, &order.order_id).await.expect("cancel");
    let seen = futures::future::join_all(streams.into_iter().map(|mut stream| async move {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.next()).await;
        matches!(next, Ok(Some(Ok(m))) if m.order.as_ref().is_some_and(|o| o.status == pb::OrderStatus::Cancelled as i32))
    }))
    .await;
    let cancelled = seen.iter().filter(|s| **s).count();
    assert_eq!(cancelled, WATCHERS, "every watcher sees the cancellation");
}

#[tokio::test]
async fn a_watch_on_one_copy_sees_a_change_made_through_the_other() {
    let mesh = Mesh::start().await;
    let (token, order) = mesh.confirmed_order("TWO").await;
    // A second copy of the order service on the same database, as a replica runs.
    let other = shop_order::Application::build(mesh.another_order_copy())
        .await
        .expect("second order service copy");
    let other_port = other.grpc_port();
    let stop_other = shop_platform::Shutdown::new();
    let task = tokio::spawn(other.run_until_stopped(stop_other.clone()));
    mesh.identity.wait_serving(other_port).await;

    let mut request = tonic::Request::new(pb::WatchOrderRequest {
        order_id: order.order_id.clone(),
    });
    shop_testkit::bearer(&mut request, "authorization", &token);
    let mut stream = pb::order_service_client::OrderServiceClient::new(mesh.channel(other_port))
        .watch_order(request)
        .await
        .expect("watch on the second copy")
        .into_inner();
    let first = stream.next().await.expect("first").expect("ok");
    assert_eq!(
        first.order.expect("order").status,
        pb::OrderStatus::Confirmed as i32
    );

    // The cancellation goes through the first copy; the watch on the second sees it.
    mesh.cancel(&token, &order.order_id).await.expect("cancel");
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the change reaches the other copy's watch")
        .expect("an item")
        .expect("ok");
    assert_eq!(
        next.order.expect("order").status,
        pb::OrderStatus::Cancelled as i32
    );
    stop_other.trigger();
    task.await
        .expect("join")
        .expect("second copy stops cleanly");
}
