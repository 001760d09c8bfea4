//! What the README promises: grpcurl against the port, no .proto files needed.

use shop_testkit::{grpcurl, grpcurl_ok};

use crate::helpers::{PASSWORD, spawn_app, unique_email};

#[tokio::test]
async fn grpcurl_lists_services_checks_health_and_runs_the_account_flow() {
    let app = spawn_app().await;
    let addr = app.addr();

    let services = grpcurl_ok(&["-plaintext", &addr, "list"]).await;
    for expected in [
        "shop.user.v1.UserService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l.trim() == expected),
            "{expected} missing from:\n{services}"
        );
    }
    assert!(
        !services.contains("OrderService"),
        "only the services this port serves:\n{services}"
    );

    for service in ["", "shop.user.v1.UserService", "liveness"] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let out = grpcurl_ok(&[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "grpc.health.v1.Health/Check",
        ])
        .await;
        assert!(out.contains("\"SERVING\""), "{service:?}: {out}");
    }
    let unknown = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"nope"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(
        !unknown.status.success(),
        "an unknown service name is NOT_FOUND"
    );

    let email = unique_email();
    let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}","display_name":"Ada"}}"#);
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        "shop.user.v1.UserService/Register",
    ])
    .await;
    let registered: serde_json::Value = serde_json::from_str(&out).expect("json");
    let user_id = registered["user"]["userId"]
        .as_str()
        .expect("userId")
        .to_owned();

    let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        "shop.user.v1.UserService/Login",
    ])
    .await;
    let login: serde_json::Value = serde_json::from_str(&out).expect("json");
    let token = login["accessToken"].as_str().expect("accessToken");

    let header = format!("authorization: Bearer {token}");
    let body = format!(r#"{{"user_id":"{user_id}"}}"#);
    let out = grpcurl_ok(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &body,
        &addr,
        "shop.user.v1.UserService/GetUser",
    ])
    .await;
    let got: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(got["user"]["email"], email.as_str());
    assert_eq!(got["user"]["role"], "ROLE_CUSTOMER");

    // Without the token: a clear error, not a crash.
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        "shop.user.v1.UserService/GetUser",
    ])
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("missing bearer token"),
        "{stderr}"
    );

    // Malformed JSON and unknown fields are refused by grpcurl before the call.
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"email": 42}"#,
        &addr,
        "shop.user.v1.UserService/Register",
    ])
    .await;
    assert!(!out.status.success());
}

/// Bytes that are not the message they claim to be are the caller's fault:
/// INVALID_ARGUMENT naming the field, not INTERNAL (shop_platform::grpc).
#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    // A LoginRequest whose email says 16 bytes follow and then carries 11.
    let message = b"\x0a\x10ada@example";
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    let path = std::env::temp_dir().join(format!("shop-truncated-{}", std::process::id()));
    std::fs::write(&path, &frame).expect("frame file");
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("http://{}/shop.user.v1.UserService/Login", app.addr()),
        ])
        .output()
        .await
        .expect("curl");
    std::fs::remove_file(&path).ok();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(headers.contains("grpc-status: 3"), "{headers}");
    assert!(headers.contains("loginrequest.email"), "{headers}");
}
