//! The figure of an audit ([`audit_figure`]).

use super::{Arrow, Figure, Marker, line};
use crate::Result;
use crate::lab::audit::{Audit, AuditModel, expected_update};
use crate::optim::OptimizerSpec;

/// The figure of an audit: for one parameter, the expected update of every stateless
/// optimizer against Φ with the fixed points; for two, the field of the first stateless one
/// with the data and every fixed point; otherwise drift-norm bars.
pub fn audit_figure(model: &AuditModel, audit: &Audit) -> Result<Figure> {
    audit_figure_lines(model, audit).map(Figure::numbered)
}

fn audit_figure_lines(model: &AuditModel, audit: &Audit) -> Result<Figure> {
    let star = &audit.minimizer;
    let m = model.model();
    let stateless: Vec<OptimizerSpec> = audit
        .optimizers
        .iter()
        .filter(|o| o.method == "exact")
        .map(|o| o.optimizer.parse())
        .collect::<Result<_>>()?;
    let fixed: Vec<Marker> = audit
        .optimizers
        .iter()
        .map(|o| Marker {
            label: format!("fixed point of {}", o.optimizer),
            at: vec![match o.fixed_point.len() {
                1 => (o.fixed_point[0], 0.0),
                _ => (o.fixed_point[0], o.fixed_point[1]),
            }],
        })
        .collect();
    match star.len() {
        1 => {
            let spread = audit
                .optimizers
                .iter()
                .map(|o| o.fixed_point_distance)
                .fold(1.0f64, f64::max);
            let (lo, hi) = (star[0] - 2.0 * spread, star[0] + 2.0 * spread);
            let mut lines = Vec::new();
            for spec in &stateless {
                let points = (0..=100)
                    .map(|k| {
                        let w = lo + (hi - lo) * k as f64 / 100.0;
                        expected_update(m, spec, &[w]).map(|(f, _)| (w, f[0]))
                    })
                    .collect::<Result<Vec<_>>>()?;
                lines.push(line(&format!("E[ΔΦ]/lr, {spec}"), points, false));
            }
            let mut markers = fixed;
            markers.push(Marker {
                label: "loss minimiser Φ*".into(),
                at: vec![(star[0], 0.0)],
            });
            Ok(Figure {
                title: "Expected update per unit learning rate".into(),
                caption: "Each stateless rule's expected step as a function of Φ; its zeros \
                          are fixed points. Stateful rules appear as their simulated fixed \
                          points."
                    .into(),
                x_label: format!("{} (parameter units)", audit.parameters[0]),
                y_label: "E[ΔΦ]/lr (parameter units)".into(),
                lines,
                markers,
                ..Figure::default()
            })
        }
        2 => {
            let spread = audit
                .optimizers
                .iter()
                .map(|o| o.fixed_point_distance)
                .fold(1.0f64, f64::max);
            let mut arrows = Vec::new();
            if let Some(spec) = stateless.first() {
                for i in 0..=12 {
                    for j in 0..=12 {
                        let p = [
                            star[0] - 2.0 * spread + 4.0 * spread * i as f64 / 12.0,
                            star[1] - 2.0 * spread + 4.0 * spread * j as f64 / 12.0,
                        ];
                        let (f, _) = expected_update(m, spec, &p)?;
                        let norm = (f[0] * f[0] + f[1] * f[1]).sqrt().max(1e-300);
                        let len = 0.3 * spread * norm.min(1.0) / norm;
                        arrows.push(Arrow {
                            from: (p[0], p[1]),
                            to: (p[0] + len * f[0], p[1] + len * f[1]),
                        });
                    }
                }
            }
            let mut markers = fixed;
            markers.push(Marker {
                label: "loss minimiser Φ*".into(),
                at: vec![(star[0], star[1])],
            });
            if let AuditModel::Points(points) = model {
                let data = points.data();
                markers.push(Marker {
                    label: "data points".into(),
                    at: (0..data.len())
                        .map(|i| (data.row(i)[0], data.row(i)[1]))
                        .collect(),
                });
            }
            Ok(Figure {
                title: "Expected-update field and fixed points".into(),
                caption: match stateless.first() {
                    Some(s) => format!("Arrows: the expected update of {s} (length capped)."),
                    None => "No stateless optimizer: fixed points only.".into(),
                },
                x_label: format!("{} (parameter units)", audit.parameters[0]),
                y_label: format!("{} (parameter units)", audit.parameters[1]),
                arrows,
                markers,
                ..Figure::default()
            })
        }
        _ => Ok(Figure {
            title: "Drift at the loss minimiser".into(),
            caption: "Norm of the expected step per unit learning rate at Φ* (0 for a \
                      consistent rule)."
                .into(),
            x_label: "optimizer".into(),
            y_label: "‖E[ΔΦ]‖/lr at Φ* (parameter units)".into(),
            bars: audit
                .optimizers
                .iter()
                .map(|o| (o.optimizer.clone(), o.drift_norm))
                .collect(),
            ..Figure::default()
        }),
    }
}
