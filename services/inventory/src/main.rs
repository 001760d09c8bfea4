use shop_inventory::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_platform::runtime::main(
        "inventory-service",
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
