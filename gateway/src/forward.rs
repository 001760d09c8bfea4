//! Every request that is not one of the gateway's own paths goes through these
//! named steps, outermost first, around one forwarding handler:
//! 1. `assign_request_id`: the client's `x-request-id` when it is sane, else a
//!    new one; echoed on the response.
//! 2. `match_route`: the route from the `google.api.http` annotations, or 404 /
//!    405 with `Allow`.
//! 3. `trace_call`: the server span, named by the route, continuing the client's
//!    trace only from `TRUSTED_TRACE_SOURCES` (otherwise linked to it).
//! 4. `authenticate`: the bearer token, required unless the RPC is public; a
//!    token bucket per signed-in user.
//! 5. `read_body`: the body within `MAX_BODY_BYTES` (413), its bytes reserved in
//!    the client's share before reading (429 / 503), read within
//!    `BODY_READ_TIMEOUT_MS` (408).
//! 6. `set_deadline`: the client's `grpc-timeout`, capped at `REQUEST_TIMEOUT_MS`.
//!
//! `forward` then transcodes the JSON into the RPC's message, calls the backend
//! and transcodes the answer (a server stream as SSE or NDJSON). A gRPC or
//! gRPC-Web call takes the same steps (`match_route` finds it by its gRPC path)
//! and is answered in gRPC by `grpc_edge`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use prost_reflect::DynamicMessage;
use shop_platform::budget::{Grant, Refusal};
use shop_platform::grpc::{self, RetryPolicy, requested_budget};
use shop_platform::metrics::OTHER_LABEL;
use shop_platform::telemetry;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tracing::Instrument;

use crate::errors::RestError;
use crate::grpc_edge::GrpcCall;
use crate::layers::{ClientAddress, RouteLabel, too_many};
use crate::routes::{self, Resolved, Route};
use crate::state::Gateway;
use crate::transcode::{self, DynamicCodec};

/// How long a repeatable call may go unanswered before it is also sent to another
/// copy of its backend: above a CreateOrder's usual time, so that hedges stay
/// rare, and low enough that a copy frozen mid-call keeps answers under a second.
const HEDGE_AFTER: Duration = Duration::from_millis(500);

/// The request's id, as the client sent it or made here.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The route a request matched and its path variables.
#[derive(Clone, Debug)]
pub struct Matched {
    pub route: Route,
    pub vars: Vec<(String, String)>,
}

/// Request body bytes held in the client's share until the body is transcoded
/// (given back when this is dropped).
#[derive(Clone, Debug)]
pub struct BodyReservation {
    _held: Arc<Grant>,
}

/// How long the backend call may take: `budget` for a unary call (the client's
/// `grpc-timeout` capped at `REQUEST_TIMEOUT_MS`); a server stream lives as long
/// as its client keeps it open unless the client itself sent a `grpc-timeout`
/// (`requested`), since the unary default would cut every watch off.
#[derive(Clone, Copy, Debug)]
pub struct CallDeadline {
    pub budget: Duration,
    pub requested: Option<Duration>,
}

fn error(err: RestError) -> Response {
    err.into_response()
}

pub async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

pub async fn trace_call(State(gw): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    let route = request
        .extensions()
        .get::<Matched>()
        .map_or_else(|| OTHER_LABEL.to_owned(), |m| m.route.template.clone());
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
    );
    let trusted = request
        .extensions()
        .get::<ClientAddress>()
        .is_some_and(|c| gw.trusted_trace_sources.contains(c.peer));
    if trusted {
        telemetry::set_parent_from_http(&span, request.headers());
    } else {
        telemetry::link_from_http(&span, request.headers());
    }
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    // The access log: one record per request, in its trace (target `access`, at
    // debug: `RUST_LOG` or `OTEL_LOGS_FILTER` with `access=debug` turns it on).
    span.in_scope(|| {
        tracing::debug!(
            target: "access",
            method = %method,
            route = %route,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request answered"
        );
    });
    response
}

pub async fn match_route(
    State(gw): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    if crate::grpc_edge::is_grpc(request.headers()) {
        let Some(route) = gw
            .grpc_methods
            .get(&path)
            .filter(|_| method == http::Method::POST)
        else {
            return error(RestError::new(
                StatusCode::NOT_FOUND,
                Code::Unimplemented,
                format!("no RPC {path} at the gateway: it serves the RPCs its REST routes reach"),
            ));
        };
        request.extensions_mut().insert(GrpcCall);
        return matched(request, next, route, Vec::new()).await;
    }
    match routes::resolve(&gw.routes, &method, &path) {
        Resolved::Found(route, vars) => matched(request, next, route, vars).await,
        Resolved::WrongMethod(allowed) => {
            let mut err = RestError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("{method} is not allowed on {path}"),
            );
            err.allow = Some(
                allowed
                    .iter()
                    .map(http::Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            error(err)
        }
        Resolved::NotFound => error(RestError::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            format!("no route for {method} {path}"),
        )),
    }
}

/// Runs the rest of the steps for the request `route` matched, and labels the
/// answer with the route for the metrics layer.
async fn matched(
    mut request: Request,
    next: Next,
    route: &Route,
    vars: Vec<(String, String)>,
) -> Response {
    let label = RouteLabel(route.template.clone());
    request.extensions_mut().insert(Matched {
        route: route.clone(),
        vars,
    });
    let mut response = next.run(request).await;
    response.extensions_mut().insert(label);
    response
}

pub async fn authenticate(
    State(gw): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(matched) = request.extensions().get::<Matched>() else {
        return next.run(request).await;
    };
    let rpc = &matched.route.rpc;
    let rpc_name = format!("{}/{}", rpc.parent_service().full_name(), rpc.name());
    let metadata = MetadataMap::from_headers(request.headers().clone());
    let caller = match gw.auth.caller(&metadata) {
        Ok(caller) => caller,
        Err(e) => return error(RestError::from_status(&tonic::Status::from(e))),
    };
    if !gw.public.contains(&rpc_name) && caller.user.is_none() {
        return error(RestError::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "missing bearer token in authorization header",
        ));
    }
    if let Some(user) = &caller.user
        && let Err(seconds) = gw.limiter.check(&format!("user:{}", user.user_id)).await
    {
        return error(too_many(seconds, "user"));
    }
    next.run(request).await
}

pub async fn read_body(State(gw): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let limit = gw.settings.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return error(too_large(limit));
    }
    // HTTP/1.1 says so in its headers; an HTTP/2 request may declare no length
    // and still send DATA frames.
    let has_body = declared.map_or_else(
        || !axum::body::HttpBody::is_end_stream(request.body()),
        |n| n > 0,
    );
    if !has_body {
        return next.run(request).await;
    }
    // Memory for the body is reserved before it is read: what it declares, or
    // (chunked, HTTP/2, gRPC) each chunk as it arrives. Refused at once, never
    // queued.
    let client = request
        .extensions()
        .get::<ClientAddress>()
        .map(ClientAddress::bucket);
    let mut reserved = match gw.body_bytes.take(client.as_deref(), declared.unwrap_or(0)) {
        Ok(grant) => grant,
        Err(refusal) => return error(body_budget_refused(refusal)),
    };
    let (mut parts, body) = request.into_parts();
    let read_limit = Duration::from_millis(gw.settings.body_read_timeout_ms);
    let read = async {
        if declared.is_some() {
            return axum::body::to_bytes(body, limit)
                .await
                .map_err(|_| too_large(limit));
        }
        let mut chunks = body.into_data_stream();
        let mut collected = bytes::BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| too_large(limit))?;
            if collected.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            gw.body_bytes
                .extend(&mut reserved, chunk.len())
                .map_err(body_budget_refused)?;
            collected.extend_from_slice(&chunk);
        }
        Ok(collected.freeze())
    };
    let bytes = match tokio::time::timeout(read_limit, read).await {
        Err(_) => return error(body_too_slow(read_limit)),
        Ok(Err(err)) => return error(err),
        Ok(Ok(bytes)) => bytes,
    };
    parts.extensions.insert(BodyReservation {
        _held: Arc::new(reserved),
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

pub async fn set_deadline(
    State(gw): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let sent = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok());
    let budget = requested_budget(sent, Duration::from_millis(gw.settings.request_timeout_ms));
    let requested = sent.and_then(grpc::parse_grpc_timeout);
    request
        .extensions_mut()
        .insert(CallDeadline { budget, requested });
    next.run(request).await
}

/// Transcodes the request, calls the backend, transcodes the answer.
pub async fn forward(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    call(&gw, request).await.unwrap_or_else(error)
}

async fn call(gw: &Gateway, request: Request) -> Result<Response, RestError> {
    let (mut parts, body) = request.into_parts();
    let Some(Matched { route, vars }) = parts.extensions.remove::<Matched>() else {
        return Err(RestError::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            format!("no route for {} {}", parts.method, parts.uri.path()),
        ));
    };
    // `read_body` has buffered the body already: this takes what is there.
    let bytes: Bytes = axum::body::to_bytes(body, gw.settings.max_body_bytes)
        .await
        .map_err(|_| too_large(gw.settings.max_body_bytes))?;
    if parts.extensions.get::<GrpcCall>().is_some() {
        return Ok(crate::grpc_edge::call(gw, &route, parts, bytes).await);
    }
    if route.rpc.is_client_streaming() {
        return client_stream(gw, &route, &parts, &bytes, &vars).await;
    }
    // Bodies are read as JSON whatever Content-Type says (curl -d sends a form type),
    // as grpc-gateway's default marshaler does; a google.api.HttpBody takes the
    // bytes and the Content-Type as they came.
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (query, unknown) = (parts.uri.query(), gw.settings.unknown_query_parameters);
    let message = transcode::build_raw_request(&route, &bytes, content_type, &vars, query, unknown)
        .unwrap_or_else(|| transcode::build_request(&route, &bytes, &vars, query, unknown))
        .map_err(|e| RestError::bad_request(&e.field, &e.description))?;
    // The body's bytes are the message's now: the reservation ends with them.
    drop((parts.extensions.remove::<BodyReservation>(), bytes));

    let streaming = route.rpc.is_server_streaming();
    let (request, timeout) =
        backend_request(gw, &parts.headers, &parts.extensions, message, streaming);
    let backend_error = |s: tonic::Status| RestError::from_backend(&s);
    if streaming {
        let response = open_stream(gw, &route, request, timeout)
            .await
            .map_err(backend_error)?;
        let limit = parts
            .extensions
            .get::<CallDeadline>()
            .and_then(|d| d.requested);
        let answered = gw.response_headers.to_headers(response.metadata());
        let stream = bounded(response.into_inner(), limit);
        let mut http = if transcode::is_http_body(&route.rpc.output()) {
            http_body_stream(stream, timeout).await?
        } else {
            stream_response(route, stream, &parts.headers)
        };
        http.headers_mut().extend(answered);
        return Ok(http);
    }
    // A GET, or a write with an Idempotency-Key the backend deduplicates by.
    let repeatable =
        parts.method == http::Method::GET || parts.headers.contains_key("idempotency-key");
    let response = call_unary(gw, &route, request, repeatable, timeout)
        .await
        .map_err(backend_error)?;
    let mut answered = gw.response_headers.to_headers(response.metadata());
    let mut http = if route.response_body.is_empty() && transcode::is_http_body(&route.rpc.output())
    {
        let (content_type, data) = transcode::http_body_parts(response.get_ref());
        (
            route.success.status,
            [(header::CONTENT_TYPE, media_type(&content_type))],
            data,
        )
            .into_response()
    } else if parts.method == http::Method::GET {
        let body = transcode::response_json(&route, response.get_ref()).to_string();
        let backend_tag = answered.remove(header::ETAG);
        crate::conditional::respond(&parts.headers, body, backend_tag.as_ref())
    } else {
        json_success(&route, response.get_ref(), &mut answered)
    };
    http.headers_mut().extend(answered);
    Ok(http)
}

/// A client-streaming RPC over REST: the NDJSON body's lines are the stream's
/// messages (each read as a JSON body is), sent once the body is in (it is
/// bounded by `MAX_BODY_BYTES` like any other); the answer is JSON.
async fn client_stream(
    gw: &Gateway,
    route: &Route,
    parts: &http::request::Parts,
    bytes: &Bytes,
    vars: &[(String, String)],
) -> Result<Response, RestError> {
    if route.rpc.is_server_streaming() {
        return Err(RestError::new(
            StatusCode::NOT_IMPLEMENTED,
            Code::Unimplemented,
            format!(
                "{} streams both ways, which REST cannot carry; call it over gRPC",
                route.grpc_path()
            ),
        ));
    }
    let messages = transcode::build_stream(
        route,
        bytes,
        vars,
        parts.uri.query(),
        gw.settings.unknown_query_parameters,
        gw.settings.max_stream_messages,
    )
    .map_err(|e| RestError::bad_request(&e.field, &e.description))?;
    let (request, timeout) =
        backend_request(gw, &parts.headers, &parts.extensions, messages, false);
    let response = call_client_stream(gw, route, request, timeout)
        .await
        .map_err(|s| RestError::from_backend(&s))?;
    let mut answered = gw.response_headers.to_headers(response.metadata());
    let mut http = json_success(route, response.get_ref(), &mut answered);
    http.headers_mut().extend(answered);
    Ok(http)
}

/// The backend call carrying `message`, and how long it may take: the client's
/// deadline (`set_deadline`), the allow-listed headers as metadata, the client's
/// address as resolved at the edge (services trust it from the gateway only) and
/// the trace. A server stream has no deadline unless the client sent one.
pub(crate) fn backend_request<T>(
    gw: &Gateway,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    message: T,
    streaming: bool,
) -> (tonic::Request<T>, Duration) {
    let deadline_of = extensions.get::<CallDeadline>().copied();
    let timeout = deadline_of.map_or(Duration::from_millis(gw.settings.request_timeout_ms), |d| {
        d.budget
    });
    let mut request = tonic::Request::new(message);
    match (streaming, deadline_of.and_then(|d| d.requested)) {
        (false, _) => request.set_timeout(timeout),
        (true, Some(requested)) => request.set_timeout(requested),
        (true, None) => {}
    }
    gw.request_headers
        .to_metadata(headers, request.metadata_mut());
    if let Some(client) = extensions.get::<ClientAddress>()
        && let Ok(value) = client.ip.to_string().parse()
    {
        request.metadata_mut().insert("x-forwarded-for", value);
    }
    telemetry::inject_into_metadata(request.metadata_mut());
    (request, timeout)
}

/// The route's backend, its gRPC path and the codec of its answers.
fn target(
    gw: &Gateway,
    route: &Route,
    streaming: bool,
) -> Result<
    (
        tonic::client::Grpc<tonic::transport::Channel>,
        http::uri::PathAndQuery,
        DynamicCodec,
        String,
    ),
    tonic::Status,
> {
    let package = route
        .rpc
        .parent_service()
        .package_name()
        .rsplit_once('.')
        .map_or("", |(p, _)| p)
        .to_owned();
    let channel = gw
        .channel(&package, streaming)
        .ok_or_else(|| tonic::Status::unimplemented(format!("no backend for {package}")))?;
    let path = route
        .grpc_path()
        .parse()
        .map_err(|_| tonic::Status::internal("bad gRPC path"))?;
    let codec = DynamicCodec::for_responses(route.rpc.output());
    Ok((tonic::client::Grpc::new(channel), path, codec, package))
}

/// Opens the route's server stream, waiting within `timeout` for its backend.
pub(crate) async fn open_stream(
    gw: &Gateway,
    route: &Route,
    request: tonic::Request<DynamicMessage>,
    timeout: Duration,
) -> Result<tonic::Response<tonic::codec::Streaming<DynamicMessage>>, tonic::Status> {
    let (mut grpc, path, codec, package) = target(gw, route, true)?;
    tokio::time::timeout(timeout, ready(&mut grpc, &package))
        .await
        .map_err(|_| deadline())??;
    grpc.server_streaming(request, path, codec).await
}

/// A client stream of `messages` (all at hand), sent once: a stream is never
/// repeated.
pub(crate) async fn call_client_stream(
    gw: &Gateway,
    route: &Route,
    request: tonic::Request<Vec<DynamicMessage>>,
    timeout: Duration,
) -> Result<tonic::Response<DynamicMessage>, tonic::Status> {
    let (mut grpc, path, codec, package) = target(gw, route, false)?;
    let call = async {
        ready(&mut grpc, &package).await?;
        let request = request.map(futures::stream::iter);
        grpc.client_streaming(request, path, codec).await
    };
    tokio::time::timeout(timeout + Duration::from_millis(250), call)
        .await
        .map_err(|_| deadline())?
}

/// One unary call. A `repeatable` one (safe to send again) is hedged on another
/// copy when its first attempt is slow and tried once more when its copy was
/// unavailable, as the retry budget allows; any other call is sent once.
pub(crate) async fn call_unary(
    gw: &Gateway,
    route: &Route,
    request: tonic::Request<DynamicMessage>,
    repeatable: bool,
    timeout: Duration,
) -> Result<tonic::Response<DynamicMessage>, tonic::Status> {
    let (grpc, grpc_path, codec, package) = target(gw, route, false)?;
    // Each attempt waits for the channel to be ready.
    let unary = |request: tonic::Request<DynamicMessage>| {
        let mut grpc = grpc.clone();
        let (path, codec, package) = (grpc_path.clone(), codec.clone(), package.clone());
        async move {
            ready(&mut grpc, &package).await?;
            grpc.unary(request, path, codec).await
        }
    };
    let answer = if repeatable {
        let started = std::time::Instant::now();
        let (message, metadata) = (request.get_ref().clone(), request.metadata().clone());
        let policy = RetryPolicy {
            // A copy that died fails at once and so looks least loaded to the
            // balancer until its probe ejects it (PROBE_EVERY): the waits between
            // attempts (100, 200, 400 ms) outlast that.
            max_attempts: 4,
            first_backoff: Duration::from_millis(100),
            attempt_timeout: timeout,
            hedge_after: Some(HEDGE_AFTER),
            // Its copy unavailable, or the connection to it broken mid-call (a copy
            // that died): another copy answers.
            retry_when: |status| {
                status.code() == Code::Unavailable || grpc::broken_connection(status)
            },
        };
        let attempt = || {
            let mut attempt = tonic::Request::from_parts(
                metadata.clone(),
                http::Extensions::default(),
                message.clone(),
            );
            attempt.set_timeout(timeout.saturating_sub(started.elapsed()));
            Ok(attempt)
        };
        tokio::time::timeout(
            timeout + Duration::from_millis(250),
            grpc::call_idempotent(policy, &gw.retries, attempt, unary),
        )
        .await
    } else {
        tokio::time::timeout(timeout + Duration::from_millis(250), unary(request)).await
    };
    answer.map_err(|_| deadline())?
}

/// A successful call that is not a GET, answered as its RPC declares: the
/// status, and the `Location` (a `location` the backend set wins).
fn json_success(route: &Route, response: &DynamicMessage, answered: &mut HeaderMap) -> Response {
    let success = &route.success;
    if !answered.contains_key(header::LOCATION)
        && let Some(location) = success.location(response)
    {
        answered.insert(header::LOCATION, location);
    }
    if success.status == StatusCode::NO_CONTENT {
        return StatusCode::NO_CONTENT.into_response();
    }
    let body = transcode::response_json(route, response).to_string();
    (
        success.status,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Waits until `grpc`'s channel can take a call; UNAVAILABLE (the reason logged,
/// not sent) when it cannot.
async fn ready(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    package: &str,
) -> Result<(), tonic::Status> {
    grpc.ready().await.map_err(|e| {
        tracing::warn!(backend = %package, error = %e, "backend unavailable");
        tonic::Status::unavailable("backend unavailable, retry later")
    })
}

fn too_large(limit: usize) -> RestError {
    RestError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
        format!("request body exceeds {limit} bytes"),
    )
}

/// A body that did not arrive in time: 408, and the connection is closed so
/// that the rest of it is never read.
fn body_too_slow(limit: Duration) -> RestError {
    let mut err = RestError::new(
        StatusCode::REQUEST_TIMEOUT,
        Code::DeadlineExceeded,
        format!("request body not received within {} ms", limit.as_millis()),
    );
    err.close_connection = true;
    err
}

fn body_budget_refused(refusal: Refusal) -> RestError {
    let mut err = RestError::budget_refused(
        refusal,
        "too many request bodies in flight from your address; retry in 1 s",
        "the gateway is receiving too many request bodies; retry in 1 s",
    );
    // The unread body stays on the wire: close rather than read it.
    err.close_connection = true;
    err
}

fn deadline() -> tonic::Status {
    tonic::Status::deadline_exceeded("the backend did not answer within the deadline")
}

/// The backend's stream, ended with DEADLINE_EXCEEDED when the client's own
/// `grpc-timeout` elapses (tonic bounds only the wait for a stream's headers,
/// not the stream). Dropping the backend's stream cancels the call.
pub(crate) fn bounded(
    stream: tonic::codec::Streaming<prost_reflect::DynamicMessage>,
    limit: Option<Duration>,
) -> futures::stream::BoxStream<'static, Result<prost_reflect::DynamicMessage, tonic::Status>> {
    let Some(limit) = limit else {
        return stream.boxed();
    };
    let expires = tokio::time::Instant::now() + limit;
    futures::stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout_at(expires, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(tonic::Status::deadline_exceeded(
                    "the stream reached the grpc-timeout the client sent",
                )),
                None,
            )),
        }
    })
    .boxed()
}

/// The Content-Type an HttpBody names; `application/octet-stream` when it names
/// none or one that is no header value.
fn media_type(content_type: &str) -> HeaderValue {
    HeaderValue::from_str(content_type)
        .ok()
        .filter(|_| !content_type.is_empty())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// A stream of google.api.HttpBody as one HTTP body: the first message's
/// content type, then each message's bytes as they come. A failure before the
/// first message is answered as any error is; one after it cuts the body off
/// (the status is sent already), which the client sees as a truncated transfer.
async fn http_body_stream(
    mut stream: futures::stream::BoxStream<
        'static,
        Result<prost_reflect::DynamicMessage, tonic::Status>,
    >,
    first_within: Duration,
) -> Result<Response, RestError> {
    let first = tokio::time::timeout(first_within, stream.next())
        .await
        .map_err(|_| RestError::from_status(&deadline()))?;
    let (content_type, data) = match first {
        Some(Ok(message)) => transcode::http_body_parts(&message),
        Some(Err(status)) => return Err(RestError::from_backend(&status)),
        None => (String::new(), Bytes::new()),
    };
    let rest = stream.map(|item| match item {
        Ok(message) => Ok(transcode::http_body_parts(&message).1),
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "body stream cut off by the backend");
            Err(std::io::Error::other(status.message().to_owned()))
        }
    });
    let body = Body::from_stream(futures::stream::once(async move { Ok(data) }).chain(rest));
    Ok(([(header::CONTENT_TYPE, media_type(&content_type))], body).into_response())
}

/// A server stream as Server-Sent Events, or newline-delimited JSON when asked
/// (`Accept: application/x-ndjson`).
fn stream_response(
    route: Route,
    stream: futures::stream::BoxStream<
        'static,
        Result<prost_reflect::DynamicMessage, tonic::Status>,
    >,
    headers: &HeaderMap,
) -> Response {
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let to_json = move |item: Result<prost_reflect::DynamicMessage, tonic::Status>| match item {
        Ok(message) => (
            false,
            transcode::response_json(&route, &message).to_string(),
        ),
        Err(status) => (true, RestError::from_status(&status).body.to_string()),
    };
    if ndjson {
        let lines = stream.map(move |item| Ok::<_, Infallible>(format!("{}\n", to_json(item).1)));
        return (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response();
    }
    let events = stream.map(move |item| {
        let (is_error, data) = to_json(item);
        Ok::<_, Infallible>(
            Event::default()
                .event(if is_error { "error" } else { "message" })
                .data(data),
        )
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
