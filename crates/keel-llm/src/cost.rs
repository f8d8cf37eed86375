//! Prices and cost: the shipped price list (`prices.toml`), overridden by the config.

use std::collections::BTreeMap;

use keel_core::Usage;
use keel_core::config::Price;

const SHIPPED: &str = include_str!("../prices.toml");

#[derive(Debug, Clone)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The shipped prices with `overrides` laid over them.
    pub fn new(overrides: &BTreeMap<String, Price>) -> PriceTable {
        let mut prices: BTreeMap<String, Price> = toml::from_str(SHIPPED).expect("the shipped prices.toml parses");
        prices.extend(overrides.iter().map(|(model, price)| (model.clone(), *price)));
        PriceTable { prices }
    }

    /// The price of `model`: an exact key, else the longest key the name starts with
    /// (dated snapshots), else the part after a `vendor/` prefix.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        let best = self
            .prices
            .iter()
            .filter(|(key, _)| model.starts_with(key.as_str()) && model[key.len()..].starts_with(['-', '@', ':']))
            .max_by_key(|(key, _)| key.len());
        if let Some((_, price)) = best {
            return Some(*price);
        }
        model.split_once('/').and_then(|(_, rest)| self.price(rest))
    }

    /// Cost in USD, or `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let price = self.price(model)?;
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        let cached_price = price.cached_input.unwrap_or(price.input);
        Some(
            (uncached as f64 * price.input + cached as f64 * cached_price + usage.output_tokens as f64 * price.output)
                / 1_000_000.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keel_core::Usage;
    use keel_core::config::Price;

    use super::PriceTable;

    #[test]
    fn prices_dated_and_overridden_models() {
        let mut overrides = BTreeMap::new();
        overrides.insert("my-model".to_string(), Price { input: 1.0, output: 2.0, cached_input: None });
        let table = PriceTable::new(&overrides);
        let usage = Usage { input_tokens: 1_000_000, output_tokens: 1_000_000, cached_input_tokens: 500_000, ..Usage::default() };
        let close = |model: &str, expected: f64| {
            let cost = table.cost(model, &usage).unwrap();
            assert!((cost - expected).abs() < 1e-9, "{model}: {cost} != {expected}");
        };
        close("gpt-4o-mini-2024-07-18", 0.075 + 0.0375 + 0.60);
        close("openai/gpt-4o-mini", 0.075 + 0.0375 + 0.60);
        close("my-model", 0.5 + 0.5 + 2.0);
        assert_eq!(table.cost("gpt-4ox", &usage), None);
        assert_eq!(table.cost("unknown", &usage), None);
    }
}
