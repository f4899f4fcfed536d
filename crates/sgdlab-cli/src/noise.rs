//! `sgdlab noise`: the gradient noise scale of a model on a data set, from exact per-example
//! gradients.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use sgdlab::data::read_csv;
use sgdlab::lab::audit::AuditModel;
use sgdlab::lab::noise::{
    NoiseReport, NoiseScale, gradient_noise, parameter_groups, sample_examples,
};
use sgdlab::model::{Classifier, LossUnit, Model};
use sgdlab::train::{DataSource, ModelSpec, read_checkpoint, split_sha256};

use crate::table::{Table, num};

/// Arguments of `sgdlab noise`.
#[derive(Args, Debug)]
pub struct NoiseArgs {
    /// The data. For points, linreg and logreg: a numeric CSV (last column the target except
    /// for points). For softmax and mlp: what `sgdlab train --data` takes (digits,
    /// fashion-mnist, a directory of IDX files, a CSV with the label last), of which the
    /// training set is used.
    #[arg(long, default_value = "digits")]
    data: String,
    /// points, linreg, logreg, softmax, or mlp:H1[,H2...] (as `sgdlab train --model`).
    #[arg(long, default_value = "softmax")]
    model: String,
    /// Where to take the gradients: `init` (the seeded initial weights `sgdlab train` starts
    /// from; zero for points, linreg and logreg), `minimum` (the loss minimiser, for the
    /// convex models), or a run directory of `sgdlab train` (its checkpoint's weights).
    #[arg(long, default_value = "init", value_name = "init|minimum|DIR")]
    at: String,
    /// Use a random sample of N examples (drawn with --seed) instead of all of them.
    #[arg(long, value_name = "N")]
    examples: Option<usize>,
    /// Drop the bias term b (linreg, logreg).
    #[arg(long)]
    no_bias: bool,
    /// Loss unit of cross-entropy models.
    #[arg(long, default_value = "nats", value_parser = ["nats", "bits"])]
    loss_unit: String,
    /// Seed of the initial weights, the train/test split and the sample (as `sgdlab train`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction held out for testing (digits and CSV data; as `sgdlab train`).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Also write the result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Where the gradients are taken.
enum At {
    Init,
    Minimum,
    Checkpoint(PathBuf),
}

impl At {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "init" => At::Init,
            "minimum" => At::Minimum,
            dir if Path::new(dir).is_dir() => At::Checkpoint(PathBuf::from(dir)),
            other => bail!(
                "invalid --at `{other}`: not init, minimum, or a directory (a run of `sgdlab \
                 train`, holding checkpoint.safetensors)"
            ),
        })
    }
}

/// The model and the point at which its gradients are taken.
struct Subject {
    model: Box<dyn Model<f64>>,
    phi: Vec<f64>,
    groups: Vec<(String, std::ops::Range<usize>)>,
}

const LAB_MODELS: [&str; 3] = ["points", "linreg", "logreg"];

fn lab_subject(args: &NoiseArgs, unit: LossUnit, at: &At) -> anyhow::Result<Subject> {
    let data = read_csv(Path::new(&args.data), args.model != "points")?;
    let model = AuditModel::build(&args.model, data, !args.no_bias, unit)?;
    let phi = match at {
        At::Init => vec![0.0; model.model().dim()],
        At::Minimum => model
            .minimizer()
            .context("cannot find the loss minimiser")?,
        At::Checkpoint(_) => bail!(
            "--at DIR takes a run of `sgdlab train`, whose models are softmax and mlp:…, not \
             {}",
            args.model
        ),
    };
    let groups = parameter_groups(&model.model().parameter_names());
    let model: Box<dyn Model<f64>> = match model {
        AuditModel::Points(m) => Box::new(m),
        AuditModel::LinReg(m) => Box::new(m),
        AuditModel::LogReg(m) => Box::new(m),
        AuditModel::Softmax(m) => Box::new(m),
    };
    Ok(Subject { model, phi, groups })
}

fn network_subject(args: &NoiseArgs, unit: LossUnit, at: &At) -> anyhow::Result<Subject> {
    let spec: ModelSpec = args.model.parse()?;
    let source: DataSource = args.data.parse()?;
    let split = source.load(args.test_fraction, args.seed)?;
    // The examples as the network trains on them (features rounded to f32), so that a run's
    // `train --noise-scale` and this command give the same numbers.
    let mut train = split.train.clone();
    train.round_features_to_f32();
    let model = Classifier::new(train, &spec.hidden, split.classes, unit)?;
    let net = model.network().clone();
    let tensors = match at {
        At::Init => net.init::<f32>(args.seed),
        At::Minimum if spec.hidden.is_empty() => {
            let phi = sgdlab::lab::audit::minimize(&model, &vec![0.0; Model::<f64>::dim(&model)])
                .context(
                "cannot find the loss minimiser (softmax regression on separable data has \
                     none: its weights grow without bound); train it and pass --at the run's \
                     directory",
            )?;
            let groups = network_groups(&net);
            return Ok(Subject {
                model: Box::new(model),
                phi,
                groups,
            });
        }
        At::Minimum => bail!(
            "--at minimum: a network has no minimiser the lab can find; train it (sgdlab \
             train) and pass --at the run's directory"
        ),
        At::Checkpoint(dir) => {
            let (meta, run) = read_checkpoint(dir, &net)?;
            let sha = split_sha256(&split);
            if meta.data_sha256 != sha {
                bail!(
                    "{} was trained on {} with other contents than these data (--data {}, \
                     --seed {}, --test-fraction {}): pass the data, seed and test fraction it \
                     was trained with",
                    dir.display(),
                    meta.data,
                    args.data,
                    args.seed,
                    args.test_fraction
                );
            }
            if meta.loss_unit != unit.to_string() {
                bail!(
                    "{} was trained in {}: pass --loss-unit {}",
                    dir.display(),
                    meta.loss_unit,
                    meta.loss_unit
                );
            }
            // Schedule-Free rules are evaluated at their average, as `train` evaluates them.
            run.params
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    let data = run.optimizer.eval_point(k).unwrap_or(t.data()).to_vec();
                    sgdlab::optim::Tensor::new(t.name(), t.shape().to_vec(), data)
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let phi = tensors
        .iter()
        .flat_map(|t| t.data().iter().map(|&x| f64::from(x)))
        .collect();
    let groups = network_groups(&net);
    Ok(Subject {
        model: Box::new(model),
        phi,
        groups,
    })
}

/// One group per tensor of the network (`layer0.weight`, `layer0.bias`, ...).
fn network_groups(net: &sgdlab::model::Network) -> Vec<(String, std::ops::Range<usize>)> {
    let mut start = 0;
    net.shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            start += n;
            (name, start - n..start)
        })
        .collect()
}

#[derive(Serialize)]
struct Output<'a> {
    data: &'a str,
    model: &'a str,
    at: &'a str,
    #[serde(flatten)]
    report: &'a NoiseReport,
}

pub fn run(args: NoiseArgs) -> anyhow::Result<ExitCode> {
    let unit: LossUnit = args.loss_unit.parse()?;
    let at = At::parse(&args.at)?;
    if args.examples.is_some_and(|n| n < 2) {
        bail!("invalid --examples: the noise scale needs at least 2 examples");
    }
    let subject = if LAB_MODELS.contains(&args.model.as_str()) {
        lab_subject(&args, unit, &at)?
    } else {
        network_subject(&args, unit, &at)?
    };
    let n = subject.model.examples();
    let chosen = args
        .examples
        .filter(|&k| k < n)
        .map(|k| sample_examples(n, k, args.seed));
    let report = gradient_noise(
        subject.model.as_ref(),
        &subject.phi,
        &subject.groups,
        chosen.as_deref(),
    )?;
    println!(
        "{} on {}, at {}: {} examples, mean loss {}",
        args.model,
        args.data,
        args.at,
        report.examples,
        num(report.loss)
    );
    println!();
    let mut table = Table::new(&["parameters", "count", "tr Σ", "|G|²", "B_simple"]);
    for s in report.groups.iter().chain([&report.total]) {
        table.row(row(s));
    }
    print!("{}", table.render());
    println!(
        "\ntr Σ: trace of the per-example gradient covariance; |G|²: squared norm of the true \
         gradient; B_simple = tr Σ/|G|², the batch size at which minibatch noise equals the \
         signal (McCandlish et al. 2018). Unbiased estimates with the examples as a sample of \
         the data distribution (|G|² less tr Σ/n); `-` where |G|² is below its noise."
    );
    if let Some(path) = &args.json {
        let out = Output {
            data: &args.data,
            model: &args.model,
            at: &args.at,
            report: &report,
        };
        let json = serde_json::to_string_pretty(&out)?;
        sgdlab::io::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn row(s: &NoiseScale) -> Vec<String> {
    vec![
        s.name.clone(),
        s.params.to_string(),
        num(s.trace),
        num(s.grad_sq),
        s.b_simple.map_or("-".to_string(), num),
    ]
}
