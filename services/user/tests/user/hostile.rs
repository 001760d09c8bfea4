//! Abuse of the sign-in and registration RPCs, straight to the gRPC port (tonic
//! and grpcurl), as an attacker who skips the gateway would do it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use shop_proto::user as pb;
use shop_proto::user::user_service_client::UserServiceClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use crate::helpers::{PASSWORD, spawn_app, spawn_app_sharing_redis, unique_email};

/// A client whose connections come from `source` (any 127.0.0.0/8 address is local).
async fn client_from(port: u16, source: &str) -> UserServiceClient<Channel> {
    let source: IpAddr = source.parse().expect("address");
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .local_address(Some(source))
        .connect()
        .await
        .expect("connect");
    UserServiceClient::new(channel)
}

async fn login(
    client: &mut UserServiceClient<Channel>,
    email: &str,
    password: &str,
    claimed_address: Option<&str>,
) -> Result<pb::LoginResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    });
    if let Some(claimed) = claimed_address {
        request
            .metadata_mut()
            .insert("x-forwarded-for", claimed.parse().expect("ascii"));
    }
    client.login(request).await.map(tonic::Response::into_inner)
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RESOURCE_EXHAUSTED carries google.rpc.RetryInfo")
}

#[tokio::test]
async fn guessing_the_admin_password_meets_growing_waits_while_the_owner_still_gets_in() {
    let app = spawn_app().await;
    let admin = app.admin_email.clone();
    let mut attacker = client_from(app.grpc_port, "127.0.0.1").await;

    // Ten seconds of guessing by an attacker who honours every wait it is given,
    // and claims a new address each time (nobody is trusted to say so).
    let started = Instant::now();
    let (mut checked, mut waits) = (0, Vec::new());
    let mut guess = 0;
    while started.elapsed() < Duration::from_secs(10) {
        guess += 1;
        let claimed = format!("198.51.100.{}", guess % 250);
        let err = login(
            &mut attacker,
            &admin,
            &format!("guess number {guess}"),
            Some(&claimed),
        )
        .await
        .expect_err("a wrong password never signs in");
        match err.code() {
            Code::Unauthenticated => checked += 1,
            Code::ResourceExhausted => {
                let wait = retry_delay(&err);
                assert!(err.message().contains("retry in"), "{}", err.message());
                waits.push(wait);
                let left = Duration::from_secs(10).saturating_sub(started.elapsed());
                tokio::time::sleep(wait.min(left)).await;
            }
            other => panic!("unexpected {other:?}: {}", err.message()),
        }
    }
    assert!(
        checked <= 10,
        "{checked} passwords checked in 10 s; the throttle allows 5 free, then doubling waits"
    );
    let longest = waits.iter().max().copied().unwrap_or_default();
    assert!(
        longest >= Duration::from_secs(3),
        "waits grow with each failure: {waits:?}"
    );

    // Locked out: even the right password is refused from the attacker's address,
    // and grpcurl to the port is refused the same way.
    let err = login(&mut attacker, &admin, PASSWORD, None)
        .await
        .expect_err("still locked");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    let body = format!(r#"{{"email":"{admin}","password":"{PASSWORD}"}}"#);
    let out = shop_testkit::grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &app.addr(),
        "shop.user.v1.UserService/Login",
    ])
    .await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("ResourceExhausted"),
        "grpcurl: {said}"
    );

    // The owner, from another address, signs in at once.
    let mut owner = client_from(app.grpc_port, "127.0.0.2").await;
    let started = Instant::now();
    login(&mut owner, &admin, PASSWORD, None)
        .await
        .expect("the owner is not locked out by the attacker");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn registrations_from_one_address_are_limited() {
    let app = spawn_app().await;
    let mut flood = client_from(app.grpc_port, "127.0.0.1").await;
    let mut refused = None;
    for n in 0..40 {
        let request = pb::RegisterRequest {
            email: unique_email(),
            password: PASSWORD.into(),
            display_name: String::new(),
        };
        if let Err(err) = flood.register(request).await {
            refused = Some((n, err));
            break;
        }
    }
    let (n, err) = refused.expect("a flood of registrations is refused");
    assert_eq!(n, 20, "the burst is 20 per address");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .starts_with("too many registrations from your address"),
        "{}",
        err.message()
    );
    assert!(retry_delay(&err) >= Duration::from_secs(1));

    let mut other = client_from(app.grpc_port, "127.0.0.3").await;
    other
        .register(pb::RegisterRequest {
            email: unique_email(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .expect("another address registers");
}

#[tokio::test]
async fn junk_grpc_paths_and_admin_paths_do_not_grow_the_metrics() {
    let app = spawn_app().await;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", app.grpc_port))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let junk_calls = |count: usize, offset: usize| {
        let channel = channel.clone();
        async move {
            let calls = (offset..offset + count).map(|n| {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                async move {
                    let path = format!("/junk.v{n}.Service{n}/Method{n}");
                    grpc.ready().await.expect("ready");
                    let codec = tonic_prost::ProstCodec::<(), ()>::default();
                    let err = grpc
                        .unary(tonic::Request::new(()), path.parse().expect("path"), codec)
                        .await
                        .expect_err("no such method");
                    assert_eq!(err.code(), Code::Unimplemented);
                }
            });
            futures::stream::iter(calls)
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        }
    };
    let metrics = || async { shop_testkit::http_get(app.admin_port, "/metrics").await.1 };
    junk_calls(100, 0).await;
    metrics().await;
    let before = metrics().await;
    junk_calls(10_000, 100).await;
    for n in 0..500 {
        shop_testkit::http_get(app.admin_port, &format!("/junk/{n}")).await;
    }
    let after = metrics().await;
    // Only the RPC families can take a label from a request; the rest (consumer
    // lag, say) appear on their own while the test runs.
    let rpc = |text: &str| -> String {
        text.lines()
            .filter(|l| l.starts_with("rpc_server_"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (before, after) = (rpc(&before), rpc(&after));
    let growth = after.len() as f64 / before.len() as f64 - 1.0;
    assert!(
        growth < 0.10 && before.lines().count() == after.lines().count(),
        "the RPC metrics grew {:.0} % ({} → {} lines) after 10,000 unknown gRPC paths",
        growth * 100.0,
        before.lines().count(),
        after.lines().count()
    );
    assert!(
        after.contains(r#"rpc_service="other",rpc_method="other",grpc_code="Unimplemented""#),
        "{after}"
    );
}

#[tokio::test]
async fn two_copies_lock_an_account_out_after_the_failures_one_would_allow() {
    let app = spawn_app_sharing_redis().await;
    let other = app.copy().await;
    let email = unique_email();
    app.register(&email).await.expect("register");
    // One guesser, alternating between the copies: each copy alone has seen too
    // few failures to lock anything, but the shared counters have seen them all.
    let mut copies = [
        client_from(app.grpc_port, "127.0.0.71").await,
        client_from(other.grpc_port, "127.0.0.71").await,
    ];
    for guess in 0..5 {
        let refused = login(&mut copies[guess % 2], &email, "wrong password!", None)
            .await
            .expect_err("a wrong password");
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "guess {guess}: {refused:?}"
        );
    }
    for copy in &mut copies {
        let locked = login(copy, &email, "wrong password!", None)
            .await
            .expect_err("locked out");
        assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
        assert!(
            locked
                .message()
                .contains("for this account from your address"),
            "{}",
            locked.message()
        );
        assert!(retry_delay(&locked) > Duration::ZERO);
    }
}

#[tokio::test]
async fn two_copies_hold_one_address_to_the_registrations_one_copy_allows() {
    let app = spawn_app_sharing_redis().await;
    let other = app.copy().await;
    // An address of this run's own: the limit's counters live in the run's Redis.
    let octets = uuid::Uuid::new_v4().into_bytes();
    let source = format!("127.{}.{}.{}", octets[0], octets[1], octets[2].max(2));
    let mut copies = [
        client_from(app.grpc_port, &source).await,
        client_from(other.grpc_port, &source).await,
    ];
    let mut refused = None;
    for n in 0..60 {
        let request = pb::RegisterRequest {
            email: unique_email(),
            password: PASSWORD.into(),
            display_name: String::new(),
        };
        if let Err(err) = copies[n % 2].register(request).await {
            refused = Some((n, err));
            break;
        }
    }
    let (n, err) = refused.expect("a flood of registrations over two copies is refused");
    assert_eq!(n, 20, "the burst of 20 per address holds over both copies");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .starts_with("too many registrations from your address"),
        "{}",
        err.message()
    );
}
