use anyhow::Context as _;
use shop_inventory::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None | Some("serve" | "healthcheck") => {}
        Some("seed") => {
            let path = args.next().context("usage: inventory-service seed FILE")?;
            let settings = Settings::load()?;
            let seeded = shop_inventory::seed::seed(&settings, path.as_ref()).await?;
            println!(
                "seeded from {path}: created {:?}, kept {:?}",
                seeded.created, seeded.kept
            );
            return Ok(());
        }
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; commands: serve, healthcheck, seed FILE")
        }
    }
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
