use shop_gateway::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_platform::runtime::main(
        "gateway",
        shop_platform::runtime::Probe::Http {
            default_port: shop_gateway::settings::HTTP_PORT,
            path: "/readyz",
        },
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
