//! Compiles the contracts with protox (no system protoc), keeps protox's own
//! encoding of the descriptor set (the only one that keeps the google.api.http
//! options) for reflection and the gateway, and generates tonic code from it.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "shop/api/v1/http_response.proto",
    "shop/common/v1/money.proto",
    "shop/user/v1/user_service.proto",
    "shop/user/v1/events.proto",
    "shop/inventory/v1/inventory_service.proto",
    "shop/inventory/v1/events.proto",
    "shop/order/v1/order_service.proto",
    "shop/order/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    std::fs::write(
        out_dir.join("shop_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Each package with an events.proto publishes on the topic `<package>.events`:
    // the name is made here, from the contract, so that no code spells it.
    for file in compiler.file_descriptor_set().file {
        if file.name().ends_with("/events.proto") {
            let package = file.package();
            std::fs::write(
                out_dir.join(format!("{package}.topic.rs")),
                format!(
                    "/// The topic this package's events are published on (key: the aggregate id).\n\
                     pub const EVENTS_TOPIC: &str = \"{package}.events\";\n"
                ),
            )?;
        }
    }

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds_with_config(compiler.file_descriptor_set(), {
            // Name impls give each event its fully qualified type for the ce_type header.
            let mut config = prost_build::Config::new();
            config.enable_type_names();
            config
        })?;

    for dir in ["shop", "google", "buf"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    Ok(())
}
