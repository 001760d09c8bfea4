use shop_inventory::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_platform::runtime::main(
        "inventory-service",
        shop_platform::runtime::Probe::Grpc {
            default_port: shop_inventory::settings::GRPC_PORT,
        },
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
