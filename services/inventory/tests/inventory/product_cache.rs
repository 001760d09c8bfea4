//! GetProduct from memory: a copy reads its own writes at once, another copy's
//! within the notification's delay, and a gap in listening keeps nothing stale.

use std::time::Duration;

use shop_proto::inventory::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;

use crate::helpers::{order_id, product_from, sku, spawn_app_with};

/// Waits (up to 2 s) for `client` to answer `sku` with the name `name`.
async fn sees_name(client: &InventoryServiceClient<Channel>, sku: &str, name: &str) -> bool {
    shop_testkit::eventually(Duration::from_secs(2), || async {
        (product_from(client, sku).await.name == name).then_some(())
    })
    .await
    .is_some()
}

/// Renames `sku` with the trigger off, so that no copy hears of it.
async fn rename_unannounced(pool: &sqlx::PgPool, sku: &str, name: &str) {
    let mut tx = pool.begin().await.expect("begin");
    for statement in [
        "ALTER TABLE products DISABLE TRIGGER product_changed",
        "UPDATE products SET name = $2 WHERE sku = $1",
        "ALTER TABLE products ENABLE TRIGGER product_changed",
    ] {
        sqlx::query(statement)
            .bind(sku)
            .bind(name)
            .execute(&mut *tx)
            .await
            .expect(statement);
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn copies_serve_products_from_memory_and_forget_every_change() {
    // An hour's TTL: anything fresh below came from a change being followed.
    let app = spawn_app_with(&shop_testkit::kafka_brokers(), |s| {
        s.stock.product_cache_ttl_ms = 3_600_000;
    })
    .await;
    let replica = app.replica().await;
    let pool = app.pool().await;
    let mug = sku("CACHE");
    app.create_product(&mug, 10, 500).await;
    let first = product_from(&replica.client, &mug).await;
    assert_eq!(first.available, 10);

    // Behind the trigger's back, the row changes: the replica keeps answering
    // from memory, which shows that it does not ask the database.
    rename_unannounced(&pool, &mug, "renamed unannounced").await;
    assert_eq!(product_from(&replica.client, &mug).await.name, first.name);

    // A copy reads its own writes at once (it forgets the SKU as it commits)...
    app.reserve(&order_id(), &[(&mug, 1)])
        .await
        .expect("reserve");
    let own = product_from(&app.client, &mug).await;
    assert_eq!((own.available, own.reserved), (9, 1));
    // ...and the other copy once the change's notification reaches it.
    let seen = shop_testkit::eventually(Duration::from_secs(2), || async {
        let p = product_from(&replica.client, &mug).await;
        (p.available == 9).then_some(p)
    })
    .await
    .expect("the replica sees the reservation");
    assert_eq!(
        seen.name, "renamed unannounced",
        "the whole row is read again"
    );

    // A change typed by hand is announced by the trigger as well.
    sqlx::query("UPDATE products SET name = 'renamed by hand' WHERE sku = $1")
        .bind(&mug)
        .execute(&pool)
        .await
        .expect("update by hand");
    assert!(sees_name(&replica.client, &mug, "renamed by hand").await);

    // The replica's listening connection is cut while a change goes unannounced:
    // it cannot know what it missed, so it drops everything it held and keeps
    // nothing until it listens again.
    rename_unannounced(&pool, &mug, "changed during the gap").await;
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%product_changed%'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate listeners");
    assert_eq!(cut.len(), 2, "each copy listens on one connection: {cut:?}");
    assert!(sees_name(&replica.client, &mug, "changed during the gap").await);
    assert!(sees_name(&app.client, &mug, "changed during the gap").await);

    // Listening again, the replica keeps products in memory again (an unannounced
    // change is not seen), and follows announced ones.
    let resumed = shop_testkit::eventually(Duration::from_secs(5), || async {
        product_from(&replica.client, &mug).await;
        let marker = uuid::Uuid::now_v7().to_string();
        rename_unannounced(&pool, &mug, &marker).await;
        (product_from(&replica.client, &mug).await.name != marker).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "the replica caches once it listens again"
    );
    let before = product_from(&replica.client, &mug).await.available;
    app.adjust(&mug, 5, &uuid::Uuid::now_v7().to_string())
        .await
        .expect("adjust");
    let followed = shop_testkit::eventually(Duration::from_secs(2), || async {
        (product_from(&replica.client, &mug).await.available == before + 5).then_some(())
    })
    .await;
    assert!(
        followed.is_some(),
        "the replica follows changes after listening again"
    );

    replica.stop().await;
    app.stop().await;
}
