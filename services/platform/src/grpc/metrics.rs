//! RED metrics for every call a gRPC server answers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;

use prost::Message as _;
use tonic::Code;

use crate::metrics::{ActiveLabels, GrpcCode, OTHER_LABEL, RpcLabels, metrics};

/// `/package.Service/Method` → (service, method) for every method in the
/// contracts' descriptors: the only values the RPC labels take besides `other`.
fn known_methods() -> &'static HashMap<String, (&'static str, &'static str)> {
    static KNOWN: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let set = prost_types::FileDescriptorSet::decode(shop_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let mut known = HashMap::new();
        for file in set.file {
            let package = file.package().to_owned();
            for service in file.service {
                // Leaked once per process: a fixed, small table.
                let full: &'static str =
                    Box::leak(format!("{package}.{}", service.name()).into_boxed_str());
                for method in service.method {
                    let name: &'static str = Box::leak(method.name().to_owned().into_boxed_str());
                    known.insert(format!("/{full}/{name}"), (full, name));
                }
            }
        }
        known
    })
}

/// The labels of a call to `path`: the method's names when the contracts have
/// it, `other` for anything else (a path is the client's to choose).
fn method_labels(path: &str) -> (&'static str, &'static str) {
    known_methods()
        .get(path)
        .copied()
        .unwrap_or((OTHER_LABEL, OTHER_LABEL))
}

/// A call counted in `rpc_server_active_requests` until it is answered or dropped.
struct Active(ActiveLabels);

impl Active {
    fn start(rpc_service: &'static str, rpc_method: &'static str) -> Self {
        let labels = ActiveLabels {
            rpc_service,
            rpc_method,
        };
        metrics().rpc_active.get_or_create(&labels).inc();
        Self(labels)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics().rpc_active.get_or_create(&self.0).dec();
    }
}

/// RED metrics for every call a gRPC server answers: requests and latency by
/// service, method and gRPC code.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedLayer;

impl<S> tower::Layer<S> for RedLayer {
    type Service = Red<S>;

    fn layer(&self, inner: S) -> Red<S> {
        Red { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Red<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Red<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = method_labels(request.uri().path());
        let internal = request.uri().path().starts_with("/grpc.");
        let started = std::time::Instant::now();
        let active = (!internal).then(|| Active::start(service, method));
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            drop(active);
            // Errors come back trailers-only (grpc-status in the headers); success puts
            // it in the trailers, so an absent header is OK for unary calls.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from),
                Err(_) => Code::Unknown,
            };
            // Health and reflection are the platform's, not the service's calls.
            if !internal {
                let labels = RpcLabels {
                    rpc_service: service,
                    rpc_method: method,
                    grpc_code: GrpcCode(code),
                };
                metrics().rpc.record(&labels, started.elapsed());
                // The access log: one record per call, inside the call's span, so in
                // its trace (target `access`, at debug: `RUST_LOG` or
                // `OTEL_LOGS_FILTER` with `access=debug` turns it on).
                tracing::debug!(
                    target: "access",
                    rpc_service = service,
                    rpc_method = method,
                    grpc_code = ?code,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "call answered"
                );
            }
            result
        })
    }
}
