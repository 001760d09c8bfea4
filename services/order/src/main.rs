use shop_order::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_platform::runtime::main(
        "order-service",
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
