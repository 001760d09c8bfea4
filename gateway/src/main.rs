use shop_gateway::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_platform::runtime::main(
        "gateway",
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
