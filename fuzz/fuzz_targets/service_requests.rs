//! Raw protobuf bytes, as a gRPC client could send them straight to a service
//! port: decoding and each service's request checks never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/checks.rs"]
mod checks;

const RPCS: &[&str] = &[
    "Register",
    "Login",
    "CreateProduct",
    "AdjustStock",
    "ReserveStock",
    "CreateOrder",
    "GetOrder",
];

fuzz_target!(|data: &[u8]| {
    if let Some((&pick, bytes)) = data.split_first() {
        checks::service_checks(RPCS[pick as usize % RPCS.len()], bytes);
    }
});
