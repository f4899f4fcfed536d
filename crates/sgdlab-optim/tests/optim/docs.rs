//! The docs' optimizer reference and global-key table, held to the registry: every
//! registered rule has a row listing exactly its keys, in order, and every global key a row.

use std::path::PathBuf;

use sgdlab_optim::{GLOBAL_KEYS, NAMES, Rule};

fn page(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/src/reference")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first backticked cell of each table row: `name:key,key=a\|b,...`.
fn rows(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(cell, _)| cell.to_string()))
        .collect()
}

#[test]
fn the_optimizer_reference_lists_every_rule_with_its_keys() {
    let rows = rows(&page("optimizers.md"));
    for name in NAMES {
        let row = rows
            .iter()
            .find(|r| r.split(':').next() == Some(name))
            .unwrap_or_else(|| panic!("docs/src/reference/optimizers.md has no row for `{name}`"));
        let listed: Vec<&str> = row
            .split_once(':')
            .map(|(_, keys)| {
                keys.split(',')
                    .map(|k| k.split('=').next().unwrap_or(k))
                    .collect()
            })
            .unwrap_or_default();
        let keys = Rule::default_for(name).unwrap().keys().to_vec();
        assert_eq!(
            listed, keys,
            "the row of `{name}` lists other keys than the rule's"
        );
    }
    assert_eq!(
        rows.len(),
        NAMES.len(),
        "a row for a rule the registry does not have"
    );
}

#[test]
fn the_key_page_lists_every_global_key() {
    let rows = rows(&page("keys.md"));
    for key in GLOBAL_KEYS {
        assert!(
            rows.iter().any(|r| r == key.name),
            "docs/src/reference/keys.md has no row for `{}`",
            key.name
        );
    }
}
