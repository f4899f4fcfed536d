//! Train/test splits.

use rand::seq::SliceRandom;

use super::Dataset;
use crate::rng::chain_rng;
use crate::{Error, Result};

/// A training set and a test set of labelled examples with classes `0..classes`.
#[derive(Clone, Debug)]
pub struct Split {
    /// Examples to train on.
    pub train: Dataset,
    /// Held-out examples to evaluate on.
    pub test: Dataset,
    /// Number of classes: one more than the largest label.
    pub classes: usize,
}

impl Split {
    /// Checks that both sets have integer labels and the same number of features.
    pub fn new(train: Dataset, test: Dataset) -> Result<Self> {
        if train.is_empty() || test.is_empty() {
            return Err(Error::Data(format!(
                "a split needs examples on both sides ({} training, {} test)",
                train.len(),
                test.len()
            )));
        }
        let mut classes = 2;
        for (name, set) in [("training", &train), ("test", &test)] {
            let labels = set
                .targets()
                .ok_or_else(|| Error::Data(format!("the {name} set has no labels")))?;
            let count = crate::resources::class_count(labels)
                .map_err(|e| Error::Data(format!("{name} set: {e}")))?;
            classes = classes.max(count);
        }
        if train.dim() != test.dim() {
            return Err(Error::Data(format!(
                "training examples have {} features, test examples {}",
                train.dim(),
                test.dim()
            )));
        }
        Ok(Self {
            train,
            test,
            classes: classes.max(2),
        })
    }
}

/// A stratified split: from every class, a seeded random `test_fraction` of its examples
/// (rounded) goes to the test set, the rest to the training set, each in original order.
pub fn stratified_split(data: &Dataset, test_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&test_fraction) {
        return Err(Error::invalid(
            "test fraction",
            test_fraction,
            "must lie in [0, 1)",
        ));
    }
    let labels = data
        .targets()
        .ok_or_else(|| Error::Data("a split needs labels".to_string()))?;
    // Labels are checked (integers in a bounded range) before anything per class exists.
    let classes = crate::resources::class_count(labels)?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &y) in labels.iter().enumerate() {
        by_class[y as usize].push(i);
    }
    let mut rng = chain_rng(seed, 0);
    let mut test = Vec::new();
    for mut members in by_class {
        members.shuffle(&mut rng);
        let k = (members.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&members[..k]);
    }
    test.sort_unstable();
    let mut is_test = vec![false; labels.len()];
    for &i in &test {
        is_test[i] = true;
    }
    let train: Vec<usize> = (0..labels.len()).filter(|&i| !is_test[i]).collect();
    Split::new(data.subset(&train), data.subset(&test))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;

    #[test]
    fn digits_split_is_stratified_and_seeded() {
        let d = digits().unwrap();
        let a = stratified_split(&d, 0.2, 7).unwrap();
        let b = stratified_split(&d, 0.2, 7).unwrap();
        assert_eq!(a.train.features(), b.train.features());
        assert_eq!(a.train.len() + a.test.len(), 1797);
        assert!((355..=365).contains(&a.test.len()), "{}", a.test.len());
        assert_eq!(a.classes, 10);
        let c = stratified_split(&d, 0.2, 8).unwrap();
        assert_ne!(a.test.features(), c.test.features());
        let err = stratified_split(&d, 0.0, 7).unwrap_err().to_string();
        assert!(err.contains("0 test"), "{err}");
    }

    #[test]
    fn bad_labels_name_the_label_not_the_split() {
        for (label, needle) in [
            ("-1", "label -1"),
            ("0.5", "label 0.5"),
            ("1e30", "label 1000000000000000000000000000000"),
            ("1e18", "label 1000000000000000000"),
        ] {
            let text = format!("1,0\n2,1\n3,0\n4,{label}\n5,1\n");
            let data = crate::data::parse_csv(&text, true).unwrap();
            let err = stratified_split(&data, 0.4, 0).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("example 4"),
                "{label}: {err}"
            );
        }
    }
}
