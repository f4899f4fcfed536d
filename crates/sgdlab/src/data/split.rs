//! Train/test splits.

use rand::seq::SliceRandom;

use super::Dataset;
use crate::lab::montecarlo::chain_rng;
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
        let mut classes = 0;
        for (name, set) in [("training", &train), ("test", &test)] {
            let labels = set
                .targets()
                .ok_or_else(|| Error::Data(format!("the {name} set has no labels")))?;
            for (i, &y) in labels.iter().enumerate() {
                if y < 0.0 || y != y.round() || y > 1e6 {
                    return Err(Error::Data(format!(
                        "{name} example {i}: label {y} is not a class number"
                    )));
                }
                classes = classes.max(y as usize + 1);
            }
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
    let classes = labels.iter().fold(0.0f64, |m, &y| m.max(y)) as usize + 1;
    let mut rng = chain_rng(seed, 0);
    let mut test = Vec::new();
    for c in 0..classes {
        let mut members: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == c as f64)
            .collect();
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
}
