use shop_order::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_platform::runtime::main(
        "order-service",
        shop_platform::runtime::Probe::Grpc {
            default_port: shop_order::settings::GRPC_PORT,
        },
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
