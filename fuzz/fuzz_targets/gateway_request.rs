//! The gateway's edge: any path resolves or is refused, and any body and query
//! string for any route becomes a request message or a BadRequest, never a panic.
//! Whatever it accepts must also decode as the generated type a service receives,
//! and go through that service's own checks.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use shop_gateway::routes::{self, Resolved, Route};
use shop_gateway::transcode;

static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let pool = prost_reflect::DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    routes::from_descriptors(&pool).expect("routes")
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // The input: a path line, a query line, then the body.
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();

    for method in [http::Method::GET, http::Method::POST] {
        let _ = routes::resolve(&ROUTES, &method, &path);
    }
    let route = &ROUTES[pick as usize % ROUTES.len()];
    let (vars, query) = match routes::resolve(&ROUTES, &http::Method::POST, &path) {
        Resolved::Found(_, vars) => (vars, query),
        _ => (Vec::new(), query),
    };
    let Ok(message) = transcode::build_request(route, body, &vars, query.as_deref(), transcode::UnknownQuery::Reject) else {
        return;
    };
    let bytes = message.encode_to_vec();
    shop_fuzz_checks::service_checks(route.rpc.name(), &bytes);
});

#[path = "../src/checks.rs"]
mod shop_fuzz_checks;
