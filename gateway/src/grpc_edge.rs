//! gRPC and gRPC-Web on the HTTP port, so that a browser (gRPC-Web, through
//! HTTP/1.1 or HTTP/2) or any gRPC client (HTTP/2) can call the services' API
//! through the gateway.
//!
//! What it reaches: exactly the RPCs the REST routes reach (those with a
//! `google.api.http` annotation), never the services' internal ones
//! (ReserveStock and the like), which only the mesh's own certificates may call.
//! Anything else is UNIMPLEMENTED.
//!
//! A gRPC call takes the same named steps as a REST call (`forward.rs`: request
//! id, route, trace, token and per-user limit, bounded body, deadline) and the
//! same backend call (retries and hedges only with an `idempotency-key`); only
//! its encoding differs. `tonic_web` turns gRPC-Web into gRPC on the way in and
//! back on the way out; an error a step answers in JSON is turned into a gRPC
//! status (`answer_as_grpc`), so that a gRPC client reads its code and message.
//! Unary, server-streaming and client-streaming RPCs are served; ones that
//! stream both ways are not.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use prost_reflect::DynamicMessage;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tower::ServiceExt as _;

use crate::errors::RestError;
use crate::forward::{self, CallDeadline};
use crate::routes::Route;
use crate::state::Gateway;
use crate::transcode::{self, DynamicCodec};

/// Put on a request that `match_route` found to be a gRPC call.
#[derive(Clone, Copy, Debug)]
pub struct GrpcCall;

/// The API as gRPC-Web and gRPC: the steps of `forward.rs` behind the gRPC-Web
/// translation.
pub type GrpcApi = tonic_web::GrpcWebService<axum::Router>;

/// A gRPC request, or a gRPC-Web one (`application/grpc-web`, `-web+proto`,
/// `-web-text`…): its content type says so.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    content_type_starts(headers, "application/grpc")
}

fn is_grpc_web(headers: &HeaderMap) -> bool {
    content_type_starts(headers, "application/grpc-web")
}

pub(crate) fn content_type_starts(headers: &HeaderMap, prefix: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(prefix))
}

/// The annotated RPCs by gRPC path (`/shop.user.v1.UserService/Login`), each
/// as its first route with the gRPC path as its template (the label its metrics
/// and traces carry).
pub fn methods(routes: &[Route]) -> BTreeMap<String, Route> {
    let mut methods = BTreeMap::new();
    for route in routes {
        let path = route.grpc_path();
        methods.entry(path.clone()).or_insert_with(|| Route {
            template: path,
            ..route.clone()
        });
    }
    methods
}

/// `steps` (the API router) as gRPC-Web and gRPC.
pub fn api(steps: axum::Router) -> GrpcApi {
    use tower::Layer as _;
    tonic_web::GrpcWebLayer::new().layer(steps.layer(axum::middleware::from_fn(answer_as_grpc)))
}

/// Sends gRPC and gRPC-Web requests to `grpc`, everything else on.
pub async fn divert(State(grpc): State<GrpcApi>, request: Request, next: Next) -> Response {
    if !is_grpc(request.headers()) {
        return next.run(request).await;
    }
    if request.version() < http::Version::HTTP_2 && !is_grpc_web(request.headers()) {
        return RestError::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Code::Unimplemented,
            "gRPC needs HTTP/2; over HTTP/1.1 send gRPC-Web (application/grpc-web)",
        )
        .into_response();
    }
    match grpc.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// A step's JSON error (`google.rpc.Status`) as the gRPC status a gRPC client
/// reads: the same code and message, in a trailers-only answer.
async fn answer_as_grpc(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if is_grpc(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let error = axum::body::to_bytes(body, 64 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let code = error
        .as_ref()
        .and_then(|e| e["code"].as_i64())
        .and_then(|c| i32::try_from(c).ok())
        .map_or(Code::Unknown, Code::from_i32);
    let message = error
        .as_ref()
        .and_then(|e| e["message"].as_str())
        .map_or_else(|| format!("HTTP {}", parts.status), str::to_owned);
    let mut answer = Status::new(code, message).into_http::<Body>();
    // The route's label and the like, for the metrics layer.
    answer.extensions_mut().extend(parts.extensions);
    for name in [
        header::RETRY_AFTER,
        header::HeaderName::from_static("x-request-id"),
    ] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer.into_response()
}

/// The gRPC call `match_route` found, its body buffered by `read_body`.
pub async fn call(
    gw: &Gateway,
    route: &Route,
    parts: http::request::Parts,
    body: Bytes,
) -> Response {
    // The body is the call's now, as a REST body is its message's once transcoded.
    let mut parts = parts;
    drop(parts.extensions.remove::<forward::BodyReservation>());
    let limit = gw.settings.max_body_bytes;
    let mut server = tonic::server::Grpc::new(DynamicCodec::for_requests(route.rpc.input()))
        .max_decoding_message_size(limit);
    let request = http::Request::from_parts(parts, Body::from(body));
    let response = if route.rpc.is_client_streaming() && route.rpc.is_server_streaming() {
        Status::unimplemented(format!(
            "{} streams both ways, which the gateway does not forward",
            route.template
        ))
        .into_http::<tonic::body::Body>()
    } else if route.rpc.is_client_streaming() {
        let service = tower::service_fn(|request| client_stream(gw, route, request));
        server.client_streaming(service, request).await
    } else if route.rpc.is_server_streaming() {
        let service = tower::service_fn(|request| server_stream(gw, route, request));
        server.server_streaming(service, request).await
    } else {
        let service = tower::service_fn(|request| unary(gw, route, request));
        server.unary(service, request).await
    };
    response.map(Body::new)
}

async fn unary(
    gw: &Gateway,
    route: &Route,
    request: tonic::Request<DynamicMessage>,
) -> Result<tonic::Response<DynamicMessage>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    let (call, timeout, headers) = onward(gw, metadata, &extensions, message, false);
    // Safe to send again only when the backend deduplicates it.
    let repeatable = headers.contains_key("idempotency-key");
    let response = forward::call_unary(gw, route, call, repeatable, timeout)
        .await
        .map_err(to_client)?;
    let (metadata, message, _) = response.into_parts();
    Ok(answer(gw, &metadata, message))
}

/// The client's stream, read whole (its body is bounded already), then sent on.
async fn client_stream(
    gw: &Gateway,
    route: &Route,
    request: tonic::Request<tonic::Streaming<DynamicMessage>>,
) -> Result<tonic::Response<DynamicMessage>, Status> {
    let (metadata, extensions, mut stream) = request.into_parts();
    let mut messages = Vec::new();
    let most = gw.settings.max_stream_messages;
    while let Some(message) = stream.message().await? {
        if messages.len() == most {
            return Err(Status::invalid_argument(transcode::too_many_messages(most)));
        }
        messages.push(message);
    }
    let (call, timeout, _) = onward(gw, metadata, &extensions, messages, false);
    let response = forward::call_client_stream(gw, route, call, timeout)
        .await
        .map_err(to_client)?;
    let (metadata, message, _) = response.into_parts();
    Ok(answer(gw, &metadata, message))
}

type MessageStream = futures::stream::BoxStream<'static, Result<DynamicMessage, Status>>;

async fn server_stream(
    gw: &Gateway,
    route: &Route,
    request: tonic::Request<DynamicMessage>,
) -> Result<tonic::Response<MessageStream>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    let (call, timeout, _) = onward(gw, metadata, &extensions, message, true);
    let response = forward::open_stream(gw, route, call, timeout)
        .await
        .map_err(to_client)?;
    let limit = extensions.get::<CallDeadline>().and_then(|d| d.requested);
    let metadata = response.metadata().clone();
    let stream = forward::bounded(response.into_inner(), limit)
        .map(|item| item.map_err(to_client))
        .boxed();
    Ok(answer(gw, &metadata, stream))
}

/// The backend call carrying `message` for a client's call with `metadata`
/// (`forward::backend_request`), its time limit, and the client's headers.
fn onward<T>(
    gw: &Gateway,
    metadata: MetadataMap,
    extensions: &http::Extensions,
    message: T,
    streaming: bool,
) -> (tonic::Request<T>, std::time::Duration, HeaderMap) {
    let headers = metadata.into_headers();
    let (call, timeout) = forward::backend_request(gw, &headers, extensions, message, streaming);
    (call, timeout, headers)
}

/// `message` with the backend's answer metadata that `FORWARD_RESPONSE_HEADERS`
/// lets through, and no other.
fn answer<T>(gw: &Gateway, backend: &MetadataMap, message: T) -> tonic::Response<T> {
    let mut answer = tonic::Response::new(message);
    *answer.metadata_mut() = MetadataMap::from_headers(gw.response_headers.to_headers(backend));
    answer
}

/// A backend's status as the client may see it: its code, message and details,
/// none of its other metadata; a broken connection to the backend is
/// UNAVAILABLE (the transport's words stay in the log), as on REST.
fn to_client(status: Status) -> Status {
    if shop_platform::grpc::broken_connection(&status) {
        tracing::warn!(error = %status.message(), "backend connection failed");
        return Status::unavailable("backend unavailable, retry later");
    }
    Status::with_details(
        status.code(),
        status.message().to_owned(),
        status.details().to_vec().into(),
    )
}

/// The headers a browser's gRPC-Web client sends, for CORS.
pub const CORS_REQUEST_HEADERS: [&str; 2] = ["x-grpc-web", "x-user-agent"];

/// The headers a browser's gRPC-Web client must read, for CORS (a trailers-only
/// answer carries its status in headers).
pub const CORS_EXPOSED_HEADERS: [&str; 3] =
    ["grpc-status", "grpc-message", "grpc-status-details-bin"];
