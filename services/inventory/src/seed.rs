//! `inventory-service seed FILE`: creates the products a JSON catalogue lists,
//! through the same checks and outbox as CreateProduct, keeping those that exist.
//! `make dev` and docker compose seed their demo products with it.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use shop_platform::ApiError;
use shop_platform::outbox::OutboxSignal;
use shop_proto::common::Money;
use shop_proto::inventory as pb;

use crate::model::NewProduct;
use crate::settings::Settings;
use crate::store::{Catalog, ProductCache};

/// One catalogue entry; the fields of CreateProductRequest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sku: String,
    name: String,
    #[serde(default)]
    description: String,
    unit_price: Price,
    initial_stock: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Price {
    currency_code: String,
    amount_minor: i64,
}

/// Reads and checks every entry before anything is written.
fn read_catalogue(path: &Path) -> anyhow::Result<Vec<NewProduct>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read catalogue {}", path.display()))?;
    let entries: Vec<Entry> = serde_json::from_str(&text)
        .with_context(|| format!("catalogue {} is not a list of products", path.display()))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let request = pb::CreateProductRequest {
                sku: entry.sku,
                name: entry.name,
                description: entry.description,
                unit_price: Some(Money {
                    currency_code: entry.unit_price.currency_code,
                    amount_minor: entry.unit_price.amount_minor,
                }),
                initial_stock: entry.initial_stock,
            };
            // The same rules as CreateProduct: a catalogue is a batch of requests.
            shop_platform::contract::check(&request)
                .and_then(|()| NewProduct::try_from(request))
                .map_err(|err| anyhow::anyhow!("catalogue entry {i}: {err}"))
        })
        .collect()
}

/// What a seed run did, per SKU.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub created: Vec<String>,
    pub kept: Vec<String>,
}

/// Creates the catalogue's products that do not exist yet. The running service's
/// relay publishes their ProductCreated events from the outbox.
pub async fn seed(settings: &Settings, path: &Path) -> anyhow::Result<Seeded> {
    let products = read_catalogue(path)?;
    let pool = crate::application::connect(settings).await?;
    let catalog = Catalog::new(
        pool.clone(),
        OutboxSignal::default(),
        settings.stock.stock_low_threshold,
        ProductCache::off(),
    );
    let mut seeded = Seeded::default();
    for product in products {
        let sku = product.sku.clone();
        match catalog.create(product).await {
            Ok(_) => seeded.created.push(sku),
            Err(ApiError::AlreadyExists { .. }) => seeded.kept.push(sku),
            Err(err) => return Err(anyhow::Error::new(err).context(format!("creating {sku}"))),
        }
    }
    pool.close().await;
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue(text: &str) -> anyhow::Result<Vec<NewProduct>> {
        let path = std::env::temp_dir().join(format!(
            "shop-catalogue-{}-{}.json",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text)?;
        let read = read_catalogue(&path);
        std::fs::remove_file(&path).ok();
        read
    }

    #[test]
    fn the_demo_catalogue_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/demo/catalog.json");
        let products = read_catalogue(&path).expect("demo catalogue");
        let skus: Vec<&str> = products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus, ["MUG-001", "LAMP-001", "BOOK-042"]);
    }

    #[test]
    fn a_bad_entry_is_named_and_nothing_is_accepted() {
        let err = catalogue(
            r#"[{"sku":"MUG-001","name":"Mug","unit_price":{"currency_code":"EUR","amount_minor":1},"initial_stock":1},
                {"sku":"bad sku","name":"x","unit_price":{"currency_code":"EUR","amount_minor":1},"initial_stock":1}]"#,
        )
        .expect_err("bad sku");
        assert!(
            err.to_string()
                .starts_with("catalogue entry 1: invalid sku"),
            "{err}"
        );

        let err = catalogue(r#"[{"sku":"MUG-001","colour":"red"}]"#).expect_err("unknown field");
        assert!(
            format!("{err:#}").contains("unknown field `colour`"),
            "{err:#}"
        );
    }
}
