//! grpc.health.v1 and server reflection for every service. A service is SERVING
//! while its database answers, it holds the keys that verify access tokens, and it
//! is not shutting down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access_keys::TokenKeys;
use crate::shutdown::Shutdown;

/// Sets the status of the service name and of the overall ("") entry together.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    service_name: &'static str,
    serving: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("service_name", &self.service_name)
            .field("serving", &self.is_serving())
            .finish()
    }
}

/// The health name that says only "this process is alive and not stopping": SERVING
/// while the database is down too, so that a liveness probe does not restart pods
/// for a dependency's outage (readiness uses the service's own name).
pub const LIVENESS: &str = "liveness";

pub type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

impl Health {
    /// The reporter and the gRPC service to mount; everything starts NOT_SERVING.
    pub async fn new(service_name: &'static str) -> (Self, HealthService) {
        let reporter = HealthReporter::new();
        let service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        let health = Self {
            reporter,
            service_name,
            serving: Arc::new(AtomicBool::new(false)),
        };
        health.set(false).await;
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        (health, service)
    }

    /// The process is stopping: liveness goes too (readiness already has).
    pub async fn set_stopping(&self) {
        self.reporter
            .set_service_status(LIVENESS, ServingStatus::NotServing)
            .await;
    }

    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.serving.store(serving, Ordering::SeqCst);
        self.reporter
            .set_service_status(self.service_name, status)
            .await;
        self.reporter.set_service_status("", status).await;
    }

    /// Ends every Watch stream (they would otherwise hold shutdown until its timeout).
    pub async fn close_watches(&self) {
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status(self.service_name).await;
        reporter.clear_service_status("").await;
        reporter.clear_service_status(LIVENESS).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Follows the database and the access token keys: NOT_SERVING while the
    /// database does not answer or `keys` have not been fetched yet, SERVING again
    /// when both hold, NOT_SERVING for good once shutdown starts.
    pub async fn watch_readiness(self, pool: PgPool, keys: Option<TokenKeys>, shutdown: Shutdown) {
        let mut last = None;
        loop {
            let database = tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(&pool),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            let keys_held = keys.as_ref().is_none_or(TokenKeys::are_held);
            if shutdown.is_triggered() {
                break;
            }
            let ok = database && keys_held;
            if last != Some(ok) {
                if ok {
                    tracing::info!(service = self.service_name, "database reachable; serving");
                } else {
                    tracing::warn!(
                        service = self.service_name,
                        database_reachable = database,
                        access_token_keys_held = keys_held,
                        "not serving"
                    );
                }
                self.set(ok).await;
                last = Some(ok);
            }
            // Quick while the keys are awaited (a start), every second after.
            let pause = if keys_held { 1000 } else { 100 };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
            }
        }
        // The runtime's shutdown sequence reports NOT_SERVING and closes the watches.
    }
}

/// Server reflection (v1 for current clients, v1alpha for grpcurl 1.8) over the
/// shopmesh descriptors and the health service's, advertising only the services
/// this process serves.
pub fn reflection(
    served: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(shop_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in served {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
