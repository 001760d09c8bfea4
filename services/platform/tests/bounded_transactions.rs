//! A bounded transaction whose process stops between statements (frozen, as a
//! SIGSTOPped copy is) loses its rows to the others after the idle limit, on a
//! real PostgreSQL, instead of holding them for as long as it is frozen.

use std::time::{Duration, Instant};

use shop_testkit::TestDatabase;

#[tokio::test]
async fn a_frozen_bounded_transaction_releases_its_rows_after_the_idle_limit() {
    let db = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
    sqlx::query("CREATE TABLE stock (sku text PRIMARY KEY, reserved bigint NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    sqlx::query("INSERT INTO stock VALUES ('MUG', 0)")
        .execute(&pool)
        .await
        .expect("row");

    // One copy locks the row, then its process stops before the next statement.
    let mut frozen = shop_platform::db::begin_bounded(&pool)
        .await
        .expect("bounded transaction");
    sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'MUG'")
        .execute(&mut *frozen)
        .await
        .expect("locks the row");

    // Another copy's write to that row waits only for the idle limit (500 ms).
    let started = Instant::now();
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::query("UPDATE stock SET reserved = reserved + 2 WHERE sku = 'MUG'").execute(&pool),
    )
    .await
    .expect("the row is released well before the frozen copy wakes")
    .expect("the other write succeeds");
    assert_eq!(other.rows_affected(), 1);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "the other write waited {waited:?}"
    );

    // The frozen copy, waking, finds its transaction ended and nothing of it kept.
    assert!(
        frozen.commit().await.is_err(),
        "the frozen transaction was ended"
    );
    let reserved: i64 = sqlx::query_scalar("SELECT reserved FROM stock WHERE sku = 'MUG'")
        .fetch_one(&pool)
        .await
        .expect("read");
    assert_eq!(reserved, 2, "only the other copy's write stands");
    eprintln!("the other copy's write waited {waited:?}");
}
