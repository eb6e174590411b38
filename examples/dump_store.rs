//! Prints every record of a result store as one JSON array, in image-index order, as
//! this build's reader decodes them. Used to make the store fixtures of
//! `tests/store_format.rs`: a store written by one version of overinterp and the
//! records that version read from it, so later readers are checked against them.
//!
//! ```sh
//! cargo run --release --example dump_store -- STORE > records.json
//! ```

use overinterp::store::StoreReader;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: dump_store STORE"))?;
    let reader = StoreReader::open(&dir)?;
    let records = reader
        .indices()
        .into_iter()
        .map(|i| reader.require(i))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", serde_json::to_string_pretty(&records)?);
    Ok(())
}
