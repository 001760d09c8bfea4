//! Logout and "sign this user out everywhere": a revoked token is refused by every
//! copy of the service, through the Redis they share, within a second.

use std::time::{Duration, Instant};

use shop_proto::user as pb;
use tonic::{Code, Request};

use crate::helpers::{PASSWORD, bearer, spawn_app_sharing_redis, unique_email};

/// What a copy answers to GetUser of `user_id` with `token`, until `wanted` or 3 s.
async fn answer_becomes(
    client: &shop_proto::user::user_service_client::UserServiceClient<tonic::transport::Channel>,
    user_id: &str,
    token: &str,
    wanted: Code,
) -> (Code, String, Duration) {
    let started = Instant::now();
    loop {
        let mut request = Request::new(pb::GetUserRequest {
            user_id: user_id.into(),
        });
        bearer(&mut request, "authorization", token);
        let (code, message) = match client.clone().get_user(request).await {
            Ok(_) => (Code::Ok, String::new()),
            Err(status) => (status.code(), status.message().to_owned()),
        };
        if code == wanted || started.elapsed() > Duration::from_secs(3) {
            return (code, message, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    bearer(&mut request, "authorization", token);
    request
}

#[tokio::test]
async fn a_logout_on_one_copy_is_refused_by_the_other_within_a_second() {
    let app = spawn_app_sharing_redis().await;
    let other = app.copy().await;
    let (user, token) = app.customer().await;
    let (code, _, _) = answer_becomes(&other.client, &user.user_id, &token, Code::Ok).await;
    assert_eq!(code, Code::Ok, "the other copy accepts the token first");

    app.client
        .clone()
        .logout(with_token(pb::LogoutRequest {}, &token))
        .await
        .expect("logout");

    let (code, message, took) =
        answer_becomes(&other.client, &user.user_id, &token, Code::Unauthenticated).await;
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("revoked"), "{message}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    // The copy that revoked it refuses it at once; a logout needs a token.
    let (code, _, took) =
        answer_becomes(&app.client, &user.user_id, &token, Code::Unauthenticated).await;
    assert_eq!(
        (code, took < Duration::from_millis(100)),
        (Code::Unauthenticated, true)
    );
    let anonymous = app.client.clone().logout(pb::LogoutRequest {}).await;
    assert_eq!(
        anonymous.expect_err("no token").code(),
        Code::Unauthenticated
    );

    // Signing in again gives a token that works.
    let email_token = app
        .login(&user.email, PASSWORD)
        .await
        .expect("login again")
        .access_token;
    let (code, message, _) =
        answer_becomes(&other.client, &user.user_id, &email_token, Code::Ok).await;
    assert_eq!(code, Code::Ok, "{message}");
}

#[tokio::test]
async fn an_admin_revokes_every_token_of_a_user_on_every_copy() {
    let app = spawn_app_sharing_redis().await;
    let other = app.copy().await;
    let email = unique_email();
    let user = app.register(&email).await.expect("register");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        tokens.push(
            app.login(&email, PASSWORD)
                .await
                .expect("login")
                .access_token,
        );
    }
    let (bystander, bystander_token) = app.customer().await;
    let admin = app.admin_token().await;

    // Not for customers; unknown and malformed ids are named.
    let own = app
        .client
        .clone()
        .revoke_user_tokens(with_token(
            pb::RevokeUserTokensRequest {
                user_id: user.user_id.clone(),
            },
            &tokens[0],
        ))
        .await;
    assert_eq!(own.expect_err("customer").code(), Code::PermissionDenied);
    for (id, code) in [
        (uuid::Uuid::now_v7().to_string(), Code::NotFound),
        ("not-a-uuid".to_owned(), Code::InvalidArgument),
    ] {
        let reply = app
            .client
            .clone()
            .revoke_user_tokens(with_token(
                pb::RevokeUserTokensRequest { user_id: id },
                &admin,
            ))
            .await;
        assert_eq!(reply.expect_err("refused").code(), code);
    }

    other
        .client
        .clone()
        .revoke_user_tokens(with_token(
            pb::RevokeUserTokensRequest {
                user_id: user.user_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("admin revokes");
    for token in &tokens {
        for client in [&app.client, &other.client] {
            let (code, message, took) =
                answer_becomes(client, &user.user_id, token, Code::Unauthenticated).await;
            assert_eq!(code, Code::Unauthenticated, "{message}");
            assert!(took < Duration::from_secs(1), "refused after {took:?}");
        }
    }
    // Another user's token is untouched.
    let (code, _, _) =
        answer_becomes(&app.client, &bystander.user_id, &bystander_token, Code::Ok).await;
    assert_eq!(code, Code::Ok);
    // Tokens are revoked up to the second of the revocation (a JWT's `iat` has
    // no finer grain); a sign-in after it works.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let fresh = app
        .login(&email, PASSWORD)
        .await
        .expect("login")
        .access_token;
    let (code, message, _) = answer_becomes(&other.client, &user.user_id, &fresh, Code::Ok).await;
    assert_eq!(code, Code::Ok, "{message}");
}
