use shop_gateway::{Application, Settings};
use shop_platform::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = telemetry::init("gateway")?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    Application::build(settings)
        .await?
        .run_until_stopped(shutdown)
        .await
}
