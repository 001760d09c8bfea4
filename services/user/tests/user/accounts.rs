use std::time::{SystemTime, UNIX_EPOCH};

use shop_proto::user as pb;
use tonic::{Code, Request};

use crate::helpers::{PASSWORD, bearer, spawn_app, unique_email};

#[tokio::test]
async fn register_login_and_read_own_account() {
    let app = spawn_app().await;
    let email = unique_email();
    let user = app.register(&email.to_uppercase()).await.expect("register");
    assert_eq!(user.email, email, "email is stored lower-cased");
    assert_eq!(user.role, pb::Role::Customer as i32);
    assert!(uuid::Uuid::parse_str(&user.user_id).is_ok());

    let login = app.login(&email, PASSWORD).await.expect("login");
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.access_token.split('.').count(), 3, "a JWT");
    let me = app
        .get_user(&user.user_id, Some(&login.access_token))
        .await
        .expect("get own user");
    assert_eq!(me.user_id, user.user_id);
    let stats = me.stats.expect("stats");
    assert_eq!(stats.order_count, 0);
    assert!(stats.lifetime_spend.is_empty());
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn registration_input_is_validated_field_by_field() {
    let app = spawn_app().await;
    let long_name = "n".repeat(101);
    let cases: &[(&str, &str, &str, &str)] = &[
        ("not-an-email", PASSWORD, "", "invalid email"),
        ("", PASSWORD, "", "invalid email: is required"),
        ("a@-b.com", PASSWORD, "", "invalid email"),
        (
            "ok@example.com",
            "short",
            "",
            "invalid password: must be at least 12 characters",
        ),
        (
            "ok@example.com",
            PASSWORD,
            &long_name,
            "invalid display_name",
        ),
    ];
    for (email, password, name, expected) in cases {
        let err = app
            .client
            .clone()
            .register(pb::RegisterRequest {
                email: (*email).into(),
                password: (*password).into(),
                display_name: (*name).into(),
            })
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), Code::InvalidArgument, "{email}");
        assert!(
            err.message().starts_with(expected),
            "{email}: {}",
            err.message()
        );
    }
    let huge = "x".repeat(2 * 1024 * 1024);
    let err = app.register(&huge).await.expect_err("huge message");
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("too large"), "{}", err.message());

    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool().await)
        .await
        .expect("count");
    assert_eq!(users, 1, "only the bootstrap admin exists");
}

#[tokio::test]
async fn duplicate_email_is_already_exists_and_keeps_the_first_account() {
    let app = spawn_app().await;
    let email = unique_email();
    let first = app.register(&email).await.expect("first");
    let err = app
        .register(&email.to_uppercase())
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&email), "{}", err.message());
    let token = app
        .login(&email, PASSWORD)
        .await
        .expect("first password still works")
        .access_token;
    let me = app
        .get_user(&first.user_id, Some(&token))
        .await
        .expect("get");
    assert_eq!(me.user_id, first.user_id);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE event_key = $1")
        .bind(&first.user_id)
        .fetch_one(&app.pool().await)
        .await
        .expect("count");
    assert_eq!(events, 1, "the refused duplicate wrote no event");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_fail_alike() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&email).await.expect("register");
    let wrong = app
        .login(&email, "wrong password here")
        .await
        .expect_err("wrong password");
    let unknown = app
        .login(&unique_email(), PASSWORD)
        .await
        .expect_err("unknown email");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(wrong.message(), "invalid email or password");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token signed with `private_pem` whose header names the key `kid`.
fn craft_token(private_pem: &str, kid: Option<&str>, sub: &str, aud: &str, exp: u64) -> String {
    let claims = serde_json::json!({
        "iss": "shopmesh-user-service", "aud": aud, "sub": sub,
        "exp": exp, "iat": exp.saturating_sub(900), "jti": "t", "role": "admin",
    });
    let key = jsonwebtoken::EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).expect("encode")
}

/// The key id of a public key PEM block.
fn kid_of(public_pem: &str) -> String {
    let keys = shop_platform::event_signature::public_keys(public_pem).expect("a public key");
    shop_platform::event_signature::key_id(&keys[0].1)
}

#[tokio::test]
async fn get_user_checks_the_token_and_who_asks() {
    let app = spawn_app().await;
    let (alice, alice_token) = app.customer().await;
    let (bob, _) = app.customer().await;

    let err = app
        .get_user(&alice.user_id, None)
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("missing bearer token"),
        "{}",
        err.message()
    );

    let kid = kid_of(&app.auth_keys.public_pem);
    let expired = craft_token(
        &app.auth_keys.private_pem,
        Some(&kid),
        &alice.user_id,
        "shopmesh",
        now() - 60,
    );
    let err = app
        .get_user(&alice.user_id, Some(&expired))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "access token has expired");

    // Another key's signature under the published key's id; under its own id; no id.
    let forger = shop_testkit::keypair();
    let forged = craft_token(
        &forger.private_pem,
        Some(&kid),
        &alice.user_id,
        "shopmesh",
        now() + 600,
    );
    let err = app
        .get_user(&alice.user_id, Some(&forged))
        .await
        .expect_err("forged");
    assert_eq!(err.message(), "access token signature is invalid");
    let forger_kid = kid_of(&forger.public_pem);
    let unpublished = craft_token(
        &forger.private_pem,
        Some(&forger_kid),
        &alice.user_id,
        "shopmesh",
        now() + 600,
    );
    let err = app
        .get_user(&alice.user_id, Some(&unpublished))
        .await
        .expect_err("unpublished key");
    assert_eq!(
        err.message(),
        format!(
            "access token is signed by key {forger_kid}, which the user service does not publish"
        )
    );
    let nameless = craft_token(
        &app.auth_keys.private_pem,
        None,
        &alice.user_id,
        "shopmesh",
        now() + 600,
    );
    let err = app
        .get_user(&alice.user_id, Some(&nameless))
        .await
        .expect_err("no kid");
    assert_eq!(err.message(), "access token names no key (kid)");

    let wrong_audience = craft_token(
        &app.auth_keys.private_pem,
        Some(&kid),
        &alice.user_id,
        "elsewhere",
        now() + 600,
    );
    let err = app
        .get_user(&alice.user_id, Some(&wrong_audience))
        .await
        .expect_err("audience");
    assert_eq!(err.message(), "access token audience is not accepted");

    let err = app
        .get_user(&bob.user_id, Some(&alice_token))
        .await
        .expect_err("someone else");
    assert_eq!(err.code(), Code::PermissionDenied);

    let err = app
        .get_user("not-a-uuid", Some(&alice_token))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "invalid user_id: must be a UUID");

    let admin = app.admin_token().await;
    assert_eq!(
        app.get_user(&bob.user_id, Some(&admin))
            .await
            .expect("admin reads")
            .user_id,
        bob.user_id
    );
    let err = app
        .get_user(&uuid::Uuid::now_v7().to_string(), Some(&admin))
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);

    // The order service, by its service identity, may read any user.
    let mut request = Request::new(pb::GetUserRequest {
        user_id: bob.user_id.clone(),
    });
    bearer(
        &mut request,
        "x-service-authorization",
        &app.service_token("order-service"),
    );
    let user = app
        .client
        .clone()
        .get_user(request)
        .await
        .expect("service reads")
        .into_inner();
    assert_eq!(user.user.expect("user").user_id, bob.user_id);

    // Any other service identity may not.
    let mut request = Request::new(pb::GetUserRequest {
        user_id: bob.user_id.clone(),
    });
    bearer(
        &mut request,
        "x-service-authorization",
        &app.service_token("gateway"),
    );
    let err = app
        .client
        .clone()
        .get_user(request)
        .await
        .expect_err("only the order service");
    assert_eq!(err.code(), Code::PermissionDenied);

    // A service token signed with a user key is not a service identity.
    let mut request = Request::new(pb::GetUserRequest {
        user_id: bob.user_id.clone(),
    });
    bearer(&mut request, "x-service-authorization", &alice_token);
    let err = app
        .client
        .clone()
        .get_user(request)
        .await
        .expect_err("not a service token");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn list_users_is_for_admins_and_pages() {
    let app = spawn_app().await;
    let (_, customer_token) = app.customer().await;
    app.customer().await;
    app.customer().await;
    let admin = app.admin_token().await;

    let list = |token: String, page_size: i32, page_token: String| {
        let mut client = app.client.clone();
        async move {
            let mut request = Request::new(pb::ListUsersRequest {
                page_size,
                page_token,
            });
            bearer(&mut request, "authorization", &token);
            client.list_users(request).await.map(|r| r.into_inner())
        }
    };

    let err = list(customer_token, 10, String::new())
        .await
        .expect_err("customer");
    assert_eq!(err.code(), Code::PermissionDenied);

    let first = list(admin.clone(), 3, String::new()).await.expect("page 1");
    assert_eq!(first.users.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = list(admin.clone(), 3, first.next_page_token.clone())
        .await
        .expect("page 2");
    assert_eq!(second.users.len(), 1, "admin + 3 customers = 4 users");
    assert!(second.next_page_token.is_empty());
    let mut ids: Vec<_> = first
        .users
        .iter()
        .chain(&second.users)
        .map(|u| u.user_id.clone())
        .collect();
    let before = ids.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, before, "stable order, no repeats");

    let err = list(admin.clone(), 5000, String::new())
        .await
        .expect_err("absurd page size");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_size"));
    let err = list(admin, 10, "garbage".into())
        .await
        .expect_err("bad token");
    assert!(err.message().contains("page_token"));
}
