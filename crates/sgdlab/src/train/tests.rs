//! Tests of the training loop, its schedules, metrics and checkpoints.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors};

use super::*;
use crate::data::{digits, stratified_split};
use crate::model::LossUnit;

fn setup() -> (Network, Split) {
    let split = stratified_split(&digits().unwrap(), 0.2, 0).unwrap();
    let net = Network::new(64, &[16], 10, LossUnit::Nats).unwrap();
    (net, split)
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 32,
        schedule: crate::optim::Schedule::Constant.into(),
        ema_weights: Some(0.9),
        seed: 3,
        noise_examples: None,
    }
}

#[test]
fn schedules_parse_and_scale() {
    let spec = |t: &str| t.parse::<ScheduleSpec>().unwrap();
    assert_eq!(spec("constant").to_string(), "constant");
    // decay:Eep,γ counts epochs: with 10 steps per epoch, decay every 20 steps.
    let s = spec("decay:2ep,0.5").for_run(10, 6).unwrap();
    assert_eq!((s.factor(19), s.factor(20), s.factor(45)), (1.0, 0.5, 0.25));
    let c = spec("cosine").for_run(10, 10).unwrap();
    assert!((c.factor(50) - 0.5).abs() < 1e-15);
    assert_eq!(spec("warmup:4").for_run(10, 1).unwrap().factor(0), 0.25);
    let wc = spec("warmup-cosine:10").for_run(10, 11).unwrap();
    assert_eq!((wc.factor(9), wc.factor(10)), (1.0, 1.0));
    assert!((wc.factor(60) - 0.5).abs() < 1e-15);
    let wsd = spec("wsd:10,*,20").for_run(10, 10).unwrap();
    assert_eq!(
        (wsd.factor(0), wsd.factor(50), wsd.factor(90)),
        (0.1, 1.0, 0.5)
    );
    assert!(spec("cosine").depends_on_length() && !spec("decay:1ep,0.5").depends_on_length());
    assert!(spec("warmup-cosine:200").for_run(10, 10).is_err());
    for bad in [
        "decay:0ep,0.5",
        "decay:2ep",
        "warmup:x",
        "linear",
        "decay:1ep,2",
        "wsd:1,*,0",
        "step:2,0.5",
        "wsd:1,2",
    ] {
        assert!(bad.parse::<ScheduleSpec>().is_err(), "{bad}");
    }
    for text in [
        "decay:2ep,0.5",
        "cosine",
        "warmup-cosine:5",
        "wsd:1,*,2",
        "seq[warmup:3;exp:0.9]@3",
    ] {
        assert_eq!(
            spec(text).to_string().parse::<ScheduleSpec>().unwrap(),
            spec(text)
        );
    }
}

#[test]
fn training_learns_and_resume_is_bit_identical() {
    let (net, split) = setup();
    let spec: OptimizerSpec = "adam:lr=0.01".parse().unwrap();
    let trainer = Trainer::new(&net, &split, config(3)).unwrap();
    let mut straight = trainer.start(&spec).unwrap();
    trainer.train(&mut straight, &|_, _, _| {}).unwrap();
    assert!(
        straight.metrics[2].test_accuracy > 0.85,
        "{:?}",
        straight.metrics
    );

    let dir = std::env::temp_dir().join(format!("sgdlab-train-{}", std::process::id()));
    let meta = CheckpointMeta {
        epochs: 1,
        ..meta_for(&spec, &net, &split)
    };
    let first = Trainer::new(&net, &split, config(1)).unwrap();
    let mut run = first.start(&spec).unwrap();
    first.train(&mut run, &|_, _, _| {}).unwrap();
    save_checkpoint(&dir, &run, &meta).unwrap();
    let mut resumed = load_checkpoint(
        &dir,
        &CheckpointMeta {
            epochs: 3,
            ..meta.clone()
        },
        &net,
    )
    .unwrap();
    trainer.train(&mut resumed, &|_, _, _| {}).unwrap();
    assert_eq!(resumed.params, straight.params);
    assert_eq!(resumed.ema, straight.ema);
    let strip = |m: &[EpochMetrics]| -> Vec<EpochMetrics> {
        m.iter()
            .map(|e| EpochMetrics {
                seconds: 0.0,
                ..e.clone()
            })
            .collect()
    };
    assert_eq!(strip(&resumed.metrics), strip(&straight.metrics));

    let other = CheckpointMeta {
        seed: 4,
        ..meta.clone()
    };
    assert!(load_checkpoint(&dir, &other, &net).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn meta_for(spec: &OptimizerSpec, net: &Network, split: &Split) -> CheckpointMeta {
    CheckpointMeta {
        optimizer: spec.to_string(),
        groups: Vec::new(),
        widths: net.widths().to_vec(),
        loss_unit: "nats".into(),
        seed: 3,
        batch: 32,
        schedule: "constant".into(),
        epochs: 2,
        ema_weights: Some(0.9),
        data: "digits".into(),
        data_sha256: split_sha256(split),
    }
}

fn trained(epochs: usize) -> (Network, Split, Run, CheckpointMeta) {
    let (net, split) = setup();
    let spec: OptimizerSpec = "adam:lr=0.01".parse().unwrap();
    let trainer = Trainer::new(&net, &split, config(epochs)).unwrap();
    let mut run = trainer.start(&spec).unwrap();
    trainer.train(&mut run, &|_, _, _| {}).unwrap();
    let meta = CheckpointMeta {
        epochs,
        ..meta_for(&spec, &net, &split)
    };
    (net, split, run, meta)
}

#[test]
fn a_checkpoint_is_one_file_and_round_trips_metrics_exactly() {
    let (net, _, mut run, meta) = trained(1);
    // Values whose shortest decimal form needs the last digit, and non-finite ones.
    run.metrics[0].train_loss = 0.10008464337058459;
    run.metrics[0].test_loss = f64::INFINITY;
    run.metrics[0].ema_test_loss = Some(f64::NAN);
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(dir.path(), &run, &meta).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [CHECKPOINT_FILE], "one file, no temporary left");
    let back = load_checkpoint(dir.path(), &meta, &net).unwrap();
    let m = &back.metrics[0];
    assert_eq!(m.train_loss.to_bits(), 0.10008464337058459f64.to_bits());
    assert_eq!(m.test_loss, f64::INFINITY);
    assert!(m.ema_test_loss.unwrap().is_nan());
    assert_eq!(back.params, run.params);
    assert_eq!(back.optimizer, run.optimizer);
    // Saving what was loaded gives the same bytes.
    assert_eq!(
        checkpoint_bytes(&back, &meta).unwrap(),
        std::fs::read(dir.path().join(CHECKPOINT_FILE)).unwrap()
    );
}

#[test]
fn a_corrupt_or_inconsistent_checkpoint_is_refused() {
    let (net, _, run, meta) = trained(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CHECKPOINT_FILE);
    let good = checkpoint_bytes(&run, &meta).unwrap();
    // A flipped bit anywhere in the data.
    for at in [good.len() - 1, good.len() / 2, good.len() - 4000] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = load_checkpoint(dir.path(), &meta, &net)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHA-256 does not match"), "{err}");
    }
    // Truncated.
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    assert!(load_checkpoint(dir.path(), &meta, &net).is_err());
    // Weights of one moment beside optimizer state of another (re-hashed, so only the
    // consistency check can tell).
    let mut later = run.clone();
    later.optimizer = {
        let mut o = run.optimizer.clone();
        let mut p = run.params.clone();
        let g: Vec<_> = p.iter().map(Tensor::zeros_like).collect();
        o.step(&mut p, &g, &StepInfo::default()).unwrap();
        o
    };
    std::fs::write(&path, checkpoint_bytes(&later, &meta).unwrap()).unwrap();
    let err = load_checkpoint(dir.path(), &meta, &net)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different moments"), "{err}");
    // A step count at the top of u64, re-hashed: refused by the optimizer's bound, not
    // wrapped into a sum that matches the weights' step.
    let forged = resealed(&good, |md| {
        md.insert("optimizer.step".into(), u64::MAX.to_string());
        md.insert("step".into(), (u64::MAX - 1).to_string());
        md.insert("optimizer.skipped".into(), 0.to_string());
    });
    std::fs::write(&path, &forged).unwrap();
    let err = load_checkpoint(dir.path(), &meta, &net)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the limit"), "{err}");
    // Sparse bytes past the declared end: refused before they are read.
    std::fs::write(&path, &good).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let err = load_checkpoint(dir.path(), &meta, &net)
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than its contents"), "{err}");
}

/// `bytes` (a checkpoint) with its metadata edited and its SHA-256 recomputed, as a
/// deliberate forger would.
fn resealed(bytes: &[u8], edit: impl FnOnce(&mut HashMap<String, String>)) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let mut md = header.metadata().clone().unwrap();
    edit(&mut md);
    md.remove("sha256");
    let tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype()))
        .collect();
    let encode = |md: HashMap<String, String>| {
        crate::optim::checkpoint::encode_with(
            md,
            tensors
                .iter()
                .map(|(n, s, r, d)| (n.as_str(), s.as_slice(), r.as_slice(), *d)),
        )
        .unwrap()
    };
    let first = encode(md.clone());
    let data = crate::optim::checkpoint::data_section(&first).unwrap();
    md.insert(
        "sha256".into(),
        crate::optim::checkpoint::content_hash(&md, data),
    );
    encode(md)
}

#[test]
fn a_run_longer_than_an_optimizer_can_step_is_refused() {
    let (net, split) = setup();
    let err = Trainer::new(&net, &split, config(usize::MAX))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("exceed the 9007199254740992 steps"), "{err}");
}

#[test]
fn diverged_weights_are_described_by_what_they_hold() {
    let finite = Tensor::vector("w", vec![1.0f32, -3.0]);
    assert_eq!(
        describe_weights(std::slice::from_ref(&finite)),
        "largest |weight| 3e0"
    );
    let broken = Tensor::vector("v", vec![0.0f32, f32::NAN, f32::INFINITY, f32::NAN]);
    assert_eq!(
        describe_weights(&[finite, broken]),
        "2 NaN and 1 infinite weights, the first v[1]"
    );
}

#[test]
fn other_settings_are_listed_in_words() {
    let (net, split, run, meta) = trained(2);
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(dir.path(), &run, &meta).unwrap();
    let other = CheckpointMeta {
        seed: 4,
        loss_unit: "bits".into(),
        data_sha256: "0".repeat(64),
        ..meta.clone()
    };
    let err = load_checkpoint(dir.path(), &other, &net)
        .unwrap_err()
        .to_string();
    for needle in [
        "seed: the checkpoint has 3, this command asks for 4",
        "loss unit: the checkpoint has nats, this command asks for bits",
        "data: ",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("CheckpointMeta"), "{err}");
    // The same data reached by another path hash the same.
    assert_eq!(split_sha256(&split), meta.data_sha256);
    // Fewer epochs than done would discard some.
    let fewer = CheckpointMeta {
        epochs: 1,
        ..meta.clone()
    };
    let err = load_checkpoint(dir.path(), &fewer, &net)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 epochs done") && err.contains("--epochs 2"),
        "{err}"
    );
    // More epochs are fine for a constant schedule, not for a cosine one.
    assert!(
        load_checkpoint(
            dir.path(),
            &CheckpointMeta {
                epochs: 5,
                ..meta.clone()
            },
            &net
        )
        .is_ok()
    );
    let cosine = CheckpointMeta {
        schedule: "cosine".into(),
        ..meta.clone()
    };
    save_checkpoint(dir.path(), &run, &cosine).unwrap();
    let err = load_checkpoint(
        dir.path(),
        &CheckpointMeta {
            epochs: 5,
            ..cosine
        },
        &net,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cosine schedule of the checkpoint spans 2 epochs"),
        "{err}"
    );
}

#[test]
fn every_epoch_can_be_checkpointed_and_a_big_batch_is_the_whole_set() {
    let (net, split) = setup();
    let mut cfg = config(3);
    cfg.batch = usize::MAX;
    let trainer = Trainer::new(&net, &split, cfg).unwrap();
    assert_eq!(trainer.config().batch, split.train.len());
    assert_eq!(trainer.steps_per_epoch(), 1);
    let mut run = trainer.start(&"sgd:lr=0.1".parse().unwrap()).unwrap();
    let mut seen = Vec::new();
    trainer
        .train_with(&mut run, &|_, _, _| {}, &mut |r| {
            seen.push((r.epoch, r.step));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
}

#[test]
fn memory_is_checked_before_allocation() {
    let (_, split) = setup();
    let huge = Network::new(64, &[100_000, 100_000], 10, LossUnit::Nats).unwrap();
    match Trainer::new(&huge, &split, config(1)) {
        Err(e) => assert!(e.to_string().contains("of memory"), "{e}"),
        Ok(_) => assert!(crate::resources::available_memory().is_none()),
    }
}

#[test]
fn an_overflowing_first_loss_blames_the_data() {
    let text: String = (0..40).map(|i| format!("3e38,3e38,{}\n", i % 2)).collect();
    let split = stratified_split(&crate::data::parse_csv(&text, true).unwrap(), 0.25, 0).unwrap();
    let net = Network::new(2, &[16], 2, LossUnit::Nats).unwrap();
    let trainer = Trainer::new(&net, &split, config(1)).unwrap();
    let mut run = trainer.start(&"sgd".parse().unwrap()).unwrap();
    let err = trainer
        .train(&mut run, &|_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("initial weights") && err.contains("overflows f32"),
        "{err}"
    );
}

#[test]
fn divergence_is_reported_not_fatal() {
    let (net, split) = setup();
    let trainer = Trainer::new(&net, &split, config(2)).unwrap();
    let mut run = trainer.start(&"sgd:lr=1e30".parse().unwrap()).unwrap();
    trainer.train(&mut run, &|_, _, _| {}).unwrap();
    assert!(run.diverged.is_some());
}

/// A whole experiment through the library: it writes its tables and checkpoints, reports to
/// its observer, refuses to overwrite a run unless told, and resumes to the same weights.
#[test]
fn an_experiment_runs_reports_and_resumes_in_one_call() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Count(AtomicUsize, AtomicUsize);
    impl Observer for Count {
        fn run_started(&self, _: usize, _: &OptimizerSpec, _: usize, _: u64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn run_finished(&self, _: usize, _: &Run) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let experiment = |epochs: usize, mode: OutMode| Experiment {
        data: "digits".parse().unwrap(),
        test_fraction: 0.2,
        model: "mlp:8".parse().unwrap(),
        loss_unit: LossUnit::Nats,
        optimizers: vec![
            "sgd:lr=0.1".parse().unwrap(),
            "adam:lr=0.01".parse().unwrap(),
        ],
        groups: vec!["*.bias:weight_decay=0".parse().unwrap()],
        config: TrainConfig {
            epochs,
            batch: 64,
            schedule: "seq[constant;cosine]@1ep".parse().unwrap(),
            ema_weights: None,
            seed: 5,
            noise_examples: None,
        },
        out: dir.path().join("out"),
        mode,
        checkpoint_every: 1,
    };
    let seen = Count(AtomicUsize::new(0), AtomicUsize::new(0));
    let whole = experiment(3, OutMode::New).run(&seen).unwrap();
    assert_eq!((seen.0.into_inner(), seen.1.into_inner()), (2, 2));
    for name in ["metrics.csv", "summary.json", "run0/checkpoint.safetensors"] {
        assert!(dir.path().join("out").join(name).is_file(), "{name}");
    }
    let figures = experiment(3, OutMode::New).figures(&whole);
    assert_eq!(figures.len(), 2);
    drop(whole);
    // The directory holds a run now: a new experiment is refused, a forced one replaces it.
    let e = experiment(2, OutMode::New)
        .run(&Silent)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume") && e.contains("--force"), "{e}");
    let short = experiment(2, OutMode::Force).run(&Silent).unwrap();
    drop(short);
    // Resumed to 3 epochs... with a schedule over the whole run, the length may not change.
    let e = experiment(3, OutMode::Resume)
        .run(&Silent)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("epochs"), "{e}");
    let again = experiment(2, OutMode::Resume).run(&Silent).unwrap();
    assert_eq!(again.runs[1].epoch, 2);
    assert!(experiment(0, OutMode::New).run(&Silent).is_err());
    assert!("mlp:0".parse::<ModelSpec>().is_err() && "cnn".parse::<ModelSpec>().is_err());
    assert_eq!(
        "mlp:8,4".parse::<ModelSpec>().unwrap().to_string(),
        "mlp:8,4"
    );
}
