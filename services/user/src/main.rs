use anyhow::Context as _;
use shop_user::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None | Some("serve" | "healthcheck") => {}
        Some("generate-keys") => {
            let dir = args
                .next()
                .context("usage: user-service generate-keys DIR")?;
            return shop_platform::dev_pki::generate_dev_keys(std::path::Path::new(&dir));
        }
        Some(other) => {
            anyhow::bail!(
                "unknown command {other:?}; commands: serve, healthcheck, generate-keys DIR"
            )
        }
    }
    shop_platform::runtime::main(
        "user-service",
        shop_platform::runtime::Probe::Grpc {
            default_port: shop_user::settings::GRPC_PORT,
        },
        Settings::load,
        Application::build,
        Application::run_until_stopped,
    )
    .await
}
