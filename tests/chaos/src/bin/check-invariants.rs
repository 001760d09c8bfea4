//! `check-invariants queries` prints the snapshot's queries as JSON;
//! `check-invariants` reads `{"rows", "topics", "client_confirmed",
//! "tracked_skus"}` on stdin and prints the report as JSON. tests/chaos/run.py
//! gathers with psql and its topic reader and checks through this.

use std::io::Read as _;

use serde::Deserialize;
use shop_chaos::{Rows, Snapshot, Topics, check, queries};

#[derive(Deserialize)]
struct Input {
    rows: Rows,
    topics: Option<Topics>,
    client_confirmed: Option<Vec<String>>,
    #[serde(default)]
    tracked_skus: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("queries") {
        println!("{}", serde_json::to_string(&queries())?);
        return Ok(());
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let input: Input = serde_json::from_str(&text)?;
    let mut snapshot = Snapshot {
        topics: input.topics,
        client_confirmed: input.client_confirmed,
        tracked_skus: input.tracked_skus,
        ..Snapshot::default()
    };
    snapshot.add_rows(&input.rows)?;
    println!("{}", serde_json::to_string(&check(&snapshot))?);
    Ok(())
}
