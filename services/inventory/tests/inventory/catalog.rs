use shop_proto::inventory as pb;
use shop_testkit::{bearer, grpcurl, grpcurl_ok};
use tonic::{Code, Request};

use crate::helpers::{eur, sku, spawn_app};

#[tokio::test]
async fn products_are_created_read_and_listed_in_stable_pages() {
    let app = spawn_app().await;
    let created = app.create_product("MUG-100", 10, 1299).await;
    assert_eq!(
        (created.available, created.reserved, created.sold),
        (10, 0, 0)
    );
    assert_eq!(created.unit_price, eur(1299));
    assert_eq!(app.product("MUG-100").await.name, "Product MUG-100");

    for s in ["MUG-300", "MUG-500"] {
        app.create_product(s, 1, 100).await;
    }
    let mut client = app.client.clone();
    let first = client
        .list_products(pb::ListProductsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("page 1")
        .into_inner();
    let skus: Vec<_> = first.products.iter().map(|p| p.sku.as_str()).collect();
    assert_eq!(skus, ["MUG-100", "MUG-300"]);
    // A product inserted before the cursor does not shift the next page.
    app.create_product("MUG-200", 1, 100).await;
    let second = client
        .list_products(pb::ListProductsRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .expect("page 2")
        .into_inner();
    let skus: Vec<_> = second.products.iter().map(|p| p.sku.as_str()).collect();
    assert_eq!(skus, ["MUG-500"]);
    assert!(second.next_page_token.is_empty());

    let err = client
        .list_products(pb::ListProductsRequest {
            page_size: 100_000,
            page_token: String::new(),
        })
        .await
        .expect_err("absurd page size");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_size"));
    app.stop().await;
}

#[tokio::test]
async fn product_input_is_validated_and_duplicates_refused() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let cases = [
        (
            pb::CreateProductRequest {
                sku: "bad sku".into(),
                name: "x".into(),
                unit_price: eur(1),
                ..Default::default()
            },
            "invalid sku",
        ),
        (
            pb::CreateProductRequest {
                sku: "OK-1".into(),
                name: String::new(),
                unit_price: eur(1),
                ..Default::default()
            },
            "invalid name: is required",
        ),
        (
            pb::CreateProductRequest {
                sku: "OK-1".into(),
                name: "x".into(),
                unit_price: None,
                ..Default::default()
            },
            "invalid unit_price: is required",
        ),
        (
            pb::CreateProductRequest {
                sku: "OK-1".into(),
                name: "x".into(),
                unit_price: eur(-5),
                ..Default::default()
            },
            "invalid unit_price.amount_minor",
        ),
        (
            pb::CreateProductRequest {
                sku: "OK-1".into(),
                name: "x".into(),
                unit_price: eur(1),
                initial_stock: -1,
                ..Default::default()
            },
            "invalid initial_stock",
        ),
    ];
    for (request, expected) in cases {
        let err = client
            .create_product(app.as_admin(request))
            .await
            .expect_err(expected);
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}");
        assert!(err.message().starts_with(expected), "{}", err.message());
    }
    let s = sku("DUP");
    app.create_product(&s, 3, 100).await;
    let err = client
        .create_product(app.as_admin(pb::CreateProductRequest {
            sku: s.clone(),
            name: "again".into(),
            unit_price: eur(1),
            initial_stock: 99,
            ..Default::default()
        }))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        app.product(&s).await.available,
        3,
        "the first product is unchanged"
    );

    let err = client
        .get_product(pb::GetProductRequest {
            sku: "NOPE-404".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_product(pb::GetProductRequest {
            sku: "x'; DROP TABLE products;--".into(),
        })
        .await
        .expect_err("injection");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn only_admins_create_products_and_adjust_stock() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let request = || pb::CreateProductRequest {
        sku: "ANY-1".into(),
        name: "x".into(),
        unit_price: eur(1),
        ..Default::default()
    };
    let err = client
        .create_product(request())
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut as_customer = Request::new(request());
    bearer(
        &mut as_customer,
        "authorization",
        &app.identity.customer_token(),
    );
    let err = client
        .create_product(as_customer)
        .await
        .expect_err("customer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut as_service = Request::new(request());
    bearer(
        &mut as_service,
        "x-service-authorization",
        &app.identity.service_token("order-service"),
    );
    let err = client
        .create_product(as_service)
        .await
        .expect_err("a service is not an admin");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn adjustments_apply_once_per_request_id_and_never_go_below_zero() {
    let app = spawn_app().await;
    let s = sku("ADJ");
    app.create_product(&s, 5, 100).await;
    assert_eq!(app.adjust(&s, 7, "r-1").await.expect("add").available, 12);
    assert_eq!(
        app.adjust(&s, 7, "r-1").await.expect("retry").available,
        12,
        "applied once"
    );
    let err = app.adjust(&s, -3, "r-1").await.expect_err("reused id");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("request_id r-1"),
        "{}",
        err.message()
    );
    let err = app.adjust(&s, -13, "r-2").await.expect_err("below zero");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("below 0"), "{}", err.message());
    assert_eq!(
        app.adjust(&s, -12, "r-3").await.expect("to zero").available,
        0
    );
    let err = app
        .adjust("NOPE-1", 1, "r-4")
        .await
        .expect_err("unknown sku");
    assert_eq!(err.code(), Code::NotFound);
    let err = app.adjust(&s, 0, "r-5").await.expect_err("zero delta");
    assert!(err.message().starts_with("invalid delta"));
    app.assert_stock_invariants().await;
}

#[tokio::test]
async fn grpcurl_reads_products_without_a_token_and_is_refused_the_rest() {
    let app = spawn_app().await;
    let addr = app.addr();
    app.create_product("LAMP-001", 4, 2599).await;
    let services = grpcurl_ok(&["-plaintext", &addr, "list"]).await;
    assert!(
        services.contains("shop.inventory.v1.InventoryService"),
        "{services}"
    );
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"sku":"LAMP-001"}"#,
        &addr,
        "shop.inventory.v1.InventoryService/GetProduct",
    ])
    .await;
    assert!(
        out.contains("\"available\": \"4\""),
        "int64 as a string in JSON: {out}"
    );
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "shop.inventory.v1.InventoryService/ListProducts",
    ])
    .await;
    assert!(out.contains("LAMP-001"), "{out}");

    let body =
        r#"{"sku":"NEW-001","name":"n","unit_price":{"currency_code":"EUR","amount_minor":"1"}}"#;
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        &addr,
        "shop.inventory.v1.InventoryService/CreateProduct",
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));

    let header = format!("authorization: Bearer {}", app.identity.customer_token());
    let body = format!(
        r#"{{"order_id":"{}","lines":[{{"sku":"LAMP-001","quantity":"1"}}]}}"#,
        uuid::Uuid::now_v7()
    );
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &body,
        &addr,
        "shop.inventory.v1.InventoryService/ReserveStock",
    ])
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("order-service"),
        "{stderr}"
    );
    assert_eq!(
        app.product("LAMP-001").await.available,
        4,
        "nothing was reserved"
    );
}

#[tokio::test]
async fn the_seed_command_creates_the_demo_catalogue_once() {
    let app = spawn_app().await;
    let mut settings = shop_inventory::Settings::default();
    settings.service =
        app.identity
            .settings(settings.service, &app.db, &shop_testkit::kafka_brokers());
    let catalogue = shop_testkit::workspace_root().join("deploy/demo/catalog.json");

    let first = shop_inventory::seed::seed(&settings, &catalogue)
        .await
        .expect("first seed");
    assert_eq!(first.created, ["MUG-001", "LAMP-001", "BOOK-042"]);
    assert!(first.kept.is_empty());
    let mug = app.product("MUG-001").await;
    assert_eq!((mug.available, mug.unit_price), (100, eur(1299)));

    // Run again (a restarted seed job): nothing is created twice or overwritten.
    app.adjust("MUG-001", -10, "fair-1").await.expect("adjust");
    let second = shop_inventory::seed::seed(&settings, &catalogue)
        .await
        .expect("second seed");
    assert!(second.created.is_empty());
    assert_eq!(second.kept, ["MUG-001", "LAMP-001", "BOOK-042"]);
    assert_eq!(app.product("MUG-001").await.available, 90);
}

#[tokio::test]
async fn an_update_changes_what_its_mask_names_and_nothing_else() {
    let app = spawn_app().await;
    let s = sku("UPD");
    let before = app.create_product(&s, 7, 1299).await;
    let mut client = app.client.clone();
    let update = |product: pb::Product, paths: &[&str]| pb::UpdateProductRequest {
        product: Some(product),
        update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let values = |name: &str, description: &str, price: Option<i64>| pb::Product {
        sku: s.clone(),
        name: name.into(),
        description: description.into(),
        unit_price: price.and_then(eur),
        // Output-only: ignored wherever they appear, masks included.
        available: 999,
        ..Default::default()
    };

    // The mask names the name: the price in the request does not change.
    let after = client
        .update_product(app.as_admin(update(
            values("  Blue mug  ", "", Some(1)),
            &["name", "available"],
        )))
        .await
        .expect("rename")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(after.name, "Blue mug", "trimmed as at creation");
    assert_eq!(
        (&after.description, &after.unit_price, after.available),
        (&before.description, &before.unit_price, 7)
    );
    let stamp = |p: &pb::Product| p.update_time.map(|t| (t.seconds, t.nanos));
    assert!(stamp(&after) > stamp(&before), "the change is stamped");

    // No mask: what the request sets changes, what it leaves empty does not.
    let after = client
        .update_product(app.as_admin(update(values("", "", Some(1500)), &[])))
        .await
        .expect("reprice")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(
        (
            after.name.as_str(),
            after.description.as_str(),
            after.unit_price
        ),
        ("Blue mug", before.description.as_str(), eur(1500))
    );

    // Named and empty: a description is cleared, a name or a price is refused.
    let after = client
        .update_product(app.as_admin(update(values("", "", None), &["description"])))
        .await
        .expect("clear the description")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(after.description, "");
    for (paths, field) in [
        (&["name"][..], "product.name"),
        (&["unit_price"][..], "product.unit_price"),
        (&["colour"][..], "update_mask"),
        (&["unit_price.amount_minor"][..], "update_mask"),
    ] {
        let err = client
            .update_product(app.as_admin(update(values("", "", None), paths)))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{paths:?}");
        assert!(
            err.message().contains(field),
            "{paths:?}: {}",
            err.message()
        );
    }
    let err = client
        .update_product(app.as_admin(update(values("\u{7}bell", "", None), &["name"])))
        .await
        .expect_err("the name's rule");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("name"), "{}", err.message());

    // Another SKU is not found; only an admin may change the catalogue.
    let mut missing = values("Ghost", "", None);
    missing.sku = "NO-SUCH-SKU".into();
    let err = client
        .update_product(app.as_admin(update(missing, &["name"])))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .update_product(update(values("Mine", "", None), &["name"]))
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Each change that committed published the product's new values.
    let pool = app.pool().await;
    let updates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE event_type = 'shop.inventory.v1.ProductUpdated'",
    )
    .fetch_one(&pool)
    .await
    .expect("outbox");
    assert_eq!(updates, 3);
    assert_eq!(app.product(&s).await.name, "Blue mug");
    app.stop().await;
}

fn import_line(sku: &str, name: &str, stock: i64) -> pb::ImportProductsRequest {
    pb::ImportProductsRequest {
        product: Some(pb::CreateProductRequest {
            sku: sku.into(),
            name: name.into(),
            description: String::new(),
            unit_price: eur(450),
            initial_stock: stock,
        }),
    }
}

#[tokio::test]
async fn an_import_adds_every_product_or_none_and_can_be_sent_again() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let pool = app.pool().await;
    let created_events = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox_events WHERE event_type = 'shop.inventory.v1.ProductCreated'",
        )
        .fetch_one(&pool)
        .await
        .expect("outbox")
    };
    let had = app.create_product("IMP-OLD", 1, 100).await;
    let lines = vec![
        import_line("IMP-001", "Teapot", 5),
        import_line("IMP-OLD", "Not this name", 9),
        import_line("IMP-002", "Cup", 0),
    ];
    let before = created_events().await;
    let answer = client
        .import_products(app.as_admin(tokio_stream::iter(lines.clone())))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(answer.created_skus, ["IMP-001", "IMP-002"]);
    assert_eq!(answer.existing_skus, ["IMP-OLD"]);
    assert_eq!(app.product("IMP-001").await.available, 5);
    assert_eq!(
        app.product("IMP-OLD").await.name,
        had.name,
        "left as it was"
    );
    assert_eq!(
        created_events().await - before,
        2,
        "one ProductCreated each"
    );

    // Sent again: nothing new, everything reported as there.
    let again = client
        .import_products(app.as_admin(tokio_stream::iter(lines)))
        .await
        .expect("import again")
        .into_inner();
    assert!(again.created_skus.is_empty(), "{again:?}");
    assert_eq!(again.existing_skus, ["IMP-001", "IMP-OLD", "IMP-002"]);

    // One bad product: none is added, and the error names it by its place.
    let bad = vec![
        import_line("IMP-003", "Saucer", 1),
        import_line("imp 004", "Spoon", 1),
    ];
    let err = client
        .import_products(app.as_admin(tokio_stream::iter(bad)))
        .await
        .expect_err("a bad SKU");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid [1].product.sku"),
        "{}",
        err.message()
    );
    let missing = client
        .get_product(pb::GetProductRequest {
            sku: "IMP-003".into(),
        })
        .await
        .expect_err("not added");
    assert_eq!(missing.code(), Code::NotFound);
    let twice = vec![
        import_line("IMP-005", "A", 1),
        import_line("IMP-005", "B", 1),
    ];
    let err = client
        .import_products(app.as_admin(tokio_stream::iter(twice)))
        .await
        .expect_err("a SKU twice");
    assert!(
        err.message()
            .contains("[1].product.sku: repeats [0].product.sku"),
        "{}",
        err.message()
    );
    let too_many: Vec<_> = (0..=shop_inventory::api::MAX_IMPORT)
        .map(|n| import_line(&format!("BULK-{n}"), "Bulk", 1))
        .collect();
    let err = client
        .import_products(app.as_admin(tokio_stream::iter(too_many)))
        .await
        .expect_err("over the limit");
    assert!(err.message().contains("at most 1000"), "{}", err.message());

    // Admins only.
    let mut as_customer = Request::new(tokio_stream::iter(vec![import_line("IMP-006", "C", 1)]));
    bearer(
        &mut as_customer,
        "authorization",
        &app.identity.customer_token(),
    );
    let err = client
        .import_products(as_customer)
        .await
        .expect_err("customer");
    assert_eq!(err.code(), Code::PermissionDenied);
    app.stop().await;
}
