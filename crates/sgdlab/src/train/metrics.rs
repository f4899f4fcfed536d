//! What an epoch of training records, and how it is written exactly.

use serde::{Deserialize, Serialize};

/// Metrics at the end of one epoch.
///
/// In JSON, finite numbers are written exactly (they read back to the same bits) and
/// non-finite ones as the strings `"NaN"`, `"inf"` and `"-inf"`, so that an overflowing test
/// loss is recorded as what it is and still reads back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Mean minibatch loss over the epoch.
    #[serde(with = "real_json")]
    pub train_loss: f64,
    /// Mean loss on the test set.
    #[serde(with = "real_json")]
    pub test_loss: f64,
    /// Accuracy on the test set.
    #[serde(with = "real_json")]
    pub test_accuracy: f64,
    /// Test loss of the EMA of the weights, if kept.
    #[serde(with = "real_json::option")]
    pub ema_test_loss: Option<f64>,
    /// Test accuracy of the EMA of the weights, if kept.
    #[serde(with = "real_json::option")]
    pub ema_test_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    #[serde(with = "real_json")]
    pub lr: f64,
    /// Seconds spent in this epoch's training steps.
    #[serde(with = "real_json")]
    pub seconds: f64,
    /// The gradient noise's tr Σ̂ at the epoch's end, when measured
    /// ([`TrainConfig::noise_examples`](super::TrainConfig::noise_examples)).
    #[serde(default, with = "real_json::option")]
    pub noise_trace: Option<f64>,
    /// The true gradient's |G|²̂ at the epoch's end, when measured.
    #[serde(default, with = "real_json::option")]
    pub noise_grad_sq: Option<f64>,
    /// B\_simple = tr Σ̂/|G|²̂ at the epoch's end, when measured and |G|²̂ > 0.
    #[serde(default, with = "real_json::option")]
    pub noise_b_simple: Option<f64>,
}

/// Serde for `f64` that keeps non-finite values: finite numbers as JSON numbers, NaN and the
/// infinities as the strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no such numbers, and
/// `serde_json` would write `null`, which does not read back as a number).
pub mod real_json {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    fn decode<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Number(x) => Ok(x),
            Repr::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::custom(format!(
                    "`{t}` is not a number, NaN, inf or -inf"
                ))),
            },
        }
    }

    /// Writes `x` (see the module docs).
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        decode(Repr::deserialize(d)?)
    }

    /// The same for `Option<f64>` (`None` is `null`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `x`: `null` for `None`.
        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads what [`serialize`] writes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<super::Repr>::deserialize(d)?
                .map(super::decode)
                .transpose()
        }
    }
}
