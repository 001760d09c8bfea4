//! The published access token keys, and verifiers that fetch them following a
//! rotation: a key published before it signs, retired while its tokens live,
//! withdrawn after.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shop_platform::access_keys::{TokenKeys, from_jwk};
use shop_platform::auth::Authenticator;
use shop_platform::config::Secret;
use shop_platform::event_signature::{key_id, public_keys};
use shop_proto::user as pb;
use shop_testkit::eventually;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::helpers::spawn_app;

fn bearer(token: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    let value = MetadataValue::try_from(format!("Bearer {token}")).expect("ascii");
    metadata.insert("authorization", value);
    metadata
}

/// The key ids `pem` holds (one block).
fn kid(pem: &str) -> String {
    let keys = public_keys(pem).expect("a public key PEM");
    key_id(&keys[0].1)
}

/// Whether `verifier` accepts `token`, or the words of its refusal.
fn verdict(verifier: &Authenticator, token: &str) -> Result<(), String> {
    verifier
        .caller(&bearer(token))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_set_names_the_signing_key_and_every_published_one_in_jwk_form() {
    let app = spawn_app().await;
    let answer = app
        .client
        .clone()
        .list_access_token_keys(pb::ListAccessTokenKeysRequest {})
        .await
        .expect("open to anyone, no token");
    assert_eq!(
        answer
            .metadata()
            .get("cache-control")
            .map(|v| v.to_str().ok()),
        Some(Some("public, max-age=60"))
    );
    let keys = answer.into_inner().keys;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].kid, kid(&app.auth_keys.public_pem));
    from_jwk(&keys[0]).expect("a usable Ed25519 key");

    // A token's header names that key.
    let token = app.admin_token().await;
    let header = jsonwebtoken::decode_header(&token).expect("a JWT");
    assert_eq!(header.kid.as_deref(), Some(keys[0].kid.as_str()));

    // A copy signing with a new key publishes it and the retired one; the same
    // key given again is published once.
    let next = shop_testkit::keypair();
    let retired = app.auth_keys.clone();
    let copy = app
        .copy_with(|settings| {
            settings.accounts.auth_private_key = Secret::new(next.private_pem.clone());
            settings.service.auth_public_key =
                Secret::new(format!("{}\n{}", retired.public_pem, next.public_pem));
        })
        .await;
    let kids: Vec<String> = copy
        .client
        .clone()
        .list_access_token_keys(pb::ListAccessTokenKeysRequest {})
        .await
        .expect("keys")
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, [kid(&next.public_pem), kid(&retired.public_pem)]);
}

#[tokio::test]
async fn verifiers_follow_a_rotation_and_keep_their_keys_through_an_outage() {
    let app = spawn_app().await;
    let old_key = app.auth_keys.clone();
    let new_key = shop_testkit::keypair();
    let old_token = app.admin_token().await;

    // The verifiers reach "the user service" by a name this test resolves, as a
    // DNS name follows a rolled deployment to its new copies.
    let user_service: Arc<Mutex<SocketAddr>> =
        Arc::new(Mutex::new(app.addr().parse().expect("address")));
    let issuer = app.settings.service.auth_issuer.clone();
    let audience = app.settings.service.auth_audience.clone();
    let verifier = |refresh: Duration| {
        let user_service = Arc::clone(&user_service);
        let (issuer, audience) = (issuer.clone(), audience.clone());
        async move {
            let channel = shop_platform::grpc::channel_resolved_by(
                "http://user-service:50051",
                Duration::from_secs(1),
                Duration::from_millis(100),
                None,
                move |_| {
                    let at = *user_service.lock().expect("lock");
                    async move { Ok(vec![at]) }
                },
            )
            .await
            .expect("channel");
            let keys = TokenKeys::fetched(channel, refresh).await;
            let auth =
                Authenticator::new(keys.clone(), &issuer, &audience, None).expect("verifier");
            (keys, auth)
        }
    };
    // One refreshes often; the other would wait an hour, so what it learns early
    // comes from the early fetch a token with an unknown key asks for.
    let (often_keys, often) = verifier(Duration::from_millis(300)).await;
    let (_, hourly) = verifier(Duration::from_secs(3600)).await;
    for v in [&often, &hourly] {
        assert_eq!(verdict(v, &old_token), Ok(()));
    }

    // Steps 1 and 2: the new key signs; the old one stays published while its
    // tokens live.
    let signing_new = app
        .copy_with(|settings| {
            settings.accounts.auth_private_key = Secret::new(new_key.private_pem.clone());
            settings.service.auth_public_key = Secret::new(old_key.public_pem.clone());
        })
        .await;
    let new_token = signing_new.admin_token(&app.admin_email).await;
    assert_eq!(
        jsonwebtoken::decode_header(&new_token).expect("jwt").kid,
        Some(kid(&new_key.public_pem))
    );
    *user_service.lock().expect("lock") = format!("127.0.0.1:{}", signing_new.grpc_port)
        .parse()
        .expect("address");
    for v in [&often, &hourly] {
        let learned = eventually(Duration::from_secs(20), || async {
            verdict(v, &new_token).ok()
        })
        .await;
        assert!(learned.is_some(), "{:?}", verdict(v, &new_token));
        assert_eq!(
            verdict(v, &old_token),
            Ok(()),
            "the retired key still verifies"
        );
    }

    // Step 3: the old key is withdrawn; its tokens stop verifying within a refresh.
    let withdrawn = app
        .copy_with(|settings| {
            settings.accounts.auth_private_key = Secret::new(new_key.private_pem.clone());
            settings.service.auth_public_key = Secret::default();
        })
        .await;
    *user_service.lock().expect("lock") = format!("127.0.0.1:{}", withdrawn.grpc_port)
        .parse()
        .expect("address");
    let refused = eventually(Duration::from_secs(20), || async {
        verdict(&often, &old_token).err()
    })
    .await
    .expect("the withdrawn key stops verifying");
    assert!(
        refused.contains(&format!(
            "signed by key {}, which the user service does not publish",
            kid(&old_key.public_pem)
        )),
        "{refused}"
    );
    assert_eq!(verdict(&often, &new_token), Ok(()));
    assert_eq!(
        verdict(&hourly, &old_token),
        Ok(()),
        "a verifier keeps a withdrawn key until its next refresh: the staleness bound"
    );

    // An outage of the user service leaves the keys held as they were.
    *user_service.lock().expect("lock") = "127.0.0.1:9".parse().expect("address");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(often_keys.refresh().await.is_err(), "nobody answers");
    assert_eq!(
        often_keys.key_ids().into_iter().collect::<Vec<_>>(),
        [kid(&new_key.public_pem)]
    );
    assert_eq!(verdict(&often, &new_token), Ok(()));
}
