//! Reading a state back: [`Optimizer::from_source`] rebuilds an optimizer from a
//! checkpoint's metadata and buffers, refusing anything that does not fit (format, version,
//! spec, dtype, layout, buffer shapes, step counts, tensor scalars).

use super::*;
use crate::StateDtype;
use crate::optimizer::QuantState;

impl<T: Real> Optimizer<T> {
    /// Rebuilds an optimizer from metadata and a buffer lookup (name → shape and elements,
    /// or a description of the wrong dtype).
    #[allow(clippy::type_complexity)]
    pub(super) fn from_source(
        meta: &HashMap<String, String>,
        names: &[String],
        lookup: &dyn Fn(&str) -> Option<std::result::Result<(Vec<usize>, Buffer<T>), String>>,
        prefix: &str,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Checkpoint {
            path: "(bytes)".to_string(),
            reason,
        };
        let get = |key: &str| {
            meta.get(&format!("{prefix}{key}"))
                .ok_or_else(|| bad(format!("metadata lacks `{prefix}{key}`")))
        };
        if get("format")? != FORMAT {
            return Err(bad(format!(
                "format is `{}`, not `{FORMAT}`",
                get("format")?
            )));
        }
        if !READ_VERSIONS.contains(&get("version")?.as_str()) {
            return Err(bad(format!(
                "format version {} is not supported (this build reads version {FORMAT_VERSION})",
                get("version")?
            )));
        }
        if get("dtype")? != T::NAME {
            return Err(bad(format!(
                "holds {} state, but {} was asked for",
                get("dtype")?,
                T::NAME
            )));
        }
        let spec: OptimizerSpec = get("spec")?
            .parse()
            .map_err(|e| bad(format!("bad spec: {e}")))?;
        let count = |key: &str| {
            get(key)?
                .parse::<u64>()
                .map_err(|_| bad(format!("`{key}` is not a step count")))
        };
        let (step, skipped) = (count("step")?, count("skipped")?);
        if step > crate::MAX_STEPS || skipped > crate::MAX_STEPS {
            return Err(bad(format!(
                "step counts {step} (applied) and {skipped} (skipped) exceed the limit of \
                 {} (2^53)",
                crate::MAX_STEPS
            )));
        }
        let eval_mode = match meta.get(&format!("{prefix}eval_mode")).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(bad(format!("`eval_mode` is `{other}`, not true or false"))),
        };
        let layout: Option<Layout> =
            bounded(get("layout")?).map_err(|e| bad(format!("bad layout: {e}")))?;
        if let Some(layout) = &layout {
            check_unique_names("tensor name", layout.iter().map(|(n, _)| n.as_str()))
                .map_err(|e| bad(format!("bad layout: {e}")))?;
        }
        let scalars: Vec<Vec<f64>> = bounded(get("tensor_scalars")?)
            .map_err(|e| bad(format!("bad tensor_scalars: {e}")))?
            .unwrap_or_default();
        let buffers = names.iter().filter(|n| n.starts_with(prefix)).count();

        let groups: Vec<crate::GroupSpec> = match meta.get(&format!("{prefix}groups")) {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<String>>(text)
                .map_err(|e| bad(format!("bad groups: {e}")))?
                .iter()
                .map(|g| g.parse())
                .collect::<Result<_>>()
                .map_err(|e| bad(format!("bad group: {e}")))?,
        };
        let mut opt = Optimizer::<T>::with_groups(spec, groups)?;
        opt.step = step;
        opt.skipped = skipped;
        // Files written before schedules were attached have none: constant.
        if let Some(text) = meta.get(&format!("{prefix}schedule")) {
            opt.schedule = text
                .parse()
                .map_err(|e| bad(format!("bad schedule: {e}")))?;
        }
        opt.eval_mode = eval_mode;
        let Some(layout) = layout else {
            if step != 0 || buffers != 0 {
                return Err(bad("state buffers without a parameter layout".into()));
            }
            return Ok(opt);
        };
        let tensor_groups: Vec<usize> = match meta.get(&format!("{prefix}tensor_groups")) {
            None => vec![0; layout.len()],
            Some(text) => bounded(text)
                .map_err(|e| bad(format!("bad tensor_groups: {e}")))?
                .unwrap_or_default(),
        };
        if tensor_groups.len() != layout.len()
            || tensor_groups.iter().any(|&g| g > opt.groups.len())
        {
            return Err(bad(
                "tensor_groups do not match the layout and groups".into()
            ));
        }
        let specs: Vec<&OptimizerSpec> = tensor_groups
            .iter()
            .map(|&g| opt.group_spec(g).unwrap_or(&opt.spec))
            .collect();
        if scalars.len() != layout.len()
            || scalars
                .iter()
                .zip(&specs)
                .any(|(s, spec)| s.len() != scalars_of(spec).len())
        {
            return Err(bad("tensor_scalars do not match the layout".into()));
        }
        let masters = if opt.spec.master_weights {
            layout.len()
        } else {
            0
        };
        // 8-bit state keeps two tensors a buffer: codes and scales.
        let expected: usize = specs
            .iter()
            .map(|s| {
                slots_of(s).len()
                    * if s.state_dtype == StateDtype::Q8 {
                        2
                    } else {
                        1
                    }
            })
            .sum::<usize>()
            + masters;
        let mut tensors = Vec::with_capacity(layout.len());
        for (((name, shape), scalars), (&group, spec)) in layout
            .iter()
            .zip(scalars)
            .zip(tensor_groups.iter().zip(&specs))
        {
            let slot_names = slots_of(spec);
            let bf16 = spec.state_dtype == crate::StateDtype::Bf16;
            let numel = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor `{name}` has a shape {shape:?} past usize")))?;
            let mut slots = Vec::with_capacity(slot_names.len());
            let mut lowp = Vec::new();
            let mut quant = Vec::new();
            for (k, slot) in slot_names.iter().enumerate() {
                let key = format!("{prefix}{slot}/{name}");
                if spec.state_dtype == StateDtype::Q8 {
                    quant.push(decode_quant(
                        spec, k, &key, slot, name, shape, numel, lookup, prefix,
                    )?);
                    continue;
                }
                // A buffer's own shape (a whole-tensor rule's statistics are square matrices).
                let slot_shape = spec.rule.slot_shape(k, shape);
                let (shape, numel) = (&slot_shape, slot_shape.iter().product::<usize>());
                let found =
                    lookup(&key).ok_or_else(|| bad(format!("buffer `{key}` is missing")))?;
                let data = match found {
                    Ok((got, data)) if got == *shape && data.len() == numel => data,
                    Ok((got, data)) if got == *shape => {
                        return Err(bad(format!(
                            "buffer `{key}` has {} elements, but its shape {shape:?} holds {numel}",
                            data.len()
                        )));
                    }
                    Ok((got, _)) => {
                        return Err(bad(format!(
                            "buffer `{key}` is {} {got:?}, expected {} {shape:?}",
                            T::NAME,
                            T::NAME
                        )));
                    }
                    Err(what) => {
                        return Err(bad(format!(
                            "buffer `{key}` is {what}, expected {} {shape:?}",
                            T::NAME
                        )));
                    }
                };
                match (data, bf16) {
                    (Buffer::Full(data), false) => slots.push(data),
                    (Buffer::Bf16(data), true) => lowp.push(data),
                    (Buffer::Full(data), true) => {
                        // From a state dict: widened values, narrowed back exactly.
                        let mut bits = Vec::with_capacity(data.len());
                        for (i, x) in data.into_iter().enumerate() {
                            // A NaN keeps its bits (rounding would quiet a signalling one).
                            let b = if x.is_nan() {
                                (x.to_f32_for_bf16().to_bits() >> 16) as u16
                            } else {
                                crate::lowp::bf16_nearest(x.to_f32_for_bf16())
                            };
                            let y = T::from_bf16(b);
                            if y == x || (y.is_nan() && x.is_nan()) {
                                bits.push(b);
                            } else {
                                return Err(bad(format!(
                                    "buffer `{key}` element {i} = {x:?} is not a bfloat16 value \
                                     (the spec keeps the state in bf16)"
                                )));
                            }
                        }
                        lowp.push(bits);
                    }
                    (Buffer::Bf16(_), false) => {
                        return Err(bad(format!(
                            "buffer `{key}` is bf16, but the spec `{spec}` keeps the state in {}",
                            T::NAME
                        )));
                    }
                    (other @ (Buffer::Codes(_) | Buffer::Scales(_)), _) => {
                        return Err(bad(format!(
                            "buffer `{key}` is {}, but the spec `{spec}` keeps the state in {}",
                            if matches!(other, Buffer::Codes(_)) {
                                "U8"
                            } else {
                                "F32"
                            },
                            if bf16 { "bf16" } else { T::NAME }
                        )));
                    }
                }
            }
            let master = if opt.spec.master_weights {
                let key = format!("{prefix}{MASTER}/{name}");
                let missing = || {
                    bad(format!(
                        "buffer `{key}` is missing (the master copy of the parameters that \
                         master_weights=true keeps)"
                    ))
                };
                match lookup(&key).ok_or_else(missing)? {
                    Ok((got, Buffer::Full(data))) if got == *shape && data.len() == numel => data,
                    Ok((got, Buffer::Full(data))) if got == *shape => {
                        return Err(bad(format!(
                            "buffer `{key}` has {} elements, but its shape {shape:?} holds {numel}",
                            data.len()
                        )));
                    }
                    Ok((got, Buffer::Full(_))) => {
                        return Err(bad(format!(
                            "buffer `{key}` is {} {got:?}, expected {} {shape:?}",
                            T::NAME,
                            T::NAME
                        )));
                    }
                    Ok((_, Buffer::Bf16(_) | Buffer::Codes(_) | Buffer::Scales(_))) => {
                        return Err(bad(format!(
                            "buffer `{key}` is not {}: the master copy of the parameters is",
                            T::NAME
                        )));
                    }
                    Err(what) => {
                        return Err(bad(format!(
                            "buffer `{key}` is {what}, expected {} {shape:?}",
                            T::NAME
                        )));
                    }
                }
            } else {
                Vec::new()
            };
            tensors.push(TensorState {
                group,
                slots,
                scalars,
                lowp,
                master,
                quant,
            });
        }
        // Checked after the buffers each tensor needs, so that a missing one is named there.
        if buffers != expected {
            return Err(bad(format!(
                "holds {buffers} buffers, expected {expected} (the state buffers of {} \
                 tensors{})",
                layout.len(),
                if masters > 0 {
                    format!(" and their {MASTER}/ copies: master_weights=true")
                } else {
                    String::new()
                }
            )));
        }
        opt.layout = Some(layout);
        opt.tensors = tensors;
        Ok(opt)
    }
}

/// The lookup of a state's buffers by name ([`Optimizer::from_source`]).
type Lookup<'l, T> =
    dyn Fn(&str) -> Option<std::result::Result<(Vec<usize>, Buffer<T>), String>> + 'l;

/// Reads 8-bit state buffer `slot` (number `k` of its rule) of tensor `name`: its codes (U8,
/// from a file) or values (the parameters' type, from a state dict) under `key`, and its
/// scales under `{slot}.absmax/{name}` (F32, or the parameters' type holding `f32` values).
/// Values must each be c\[q\]·a of a code of their block, exactly.
#[allow(clippy::too_many_arguments)]
fn decode_quant<T: Real>(
    spec: &OptimizerSpec,
    k: usize,
    key: &str,
    slot: &str,
    name: &str,
    shape: &[usize],
    numel: usize,
    lookup: &Lookup<'_, T>,
    prefix: &str,
) -> Result<QuantState> {
    let bad = |reason: String| Error::Checkpoint {
        path: "(bytes)".to_string(),
        reason,
    };
    let block = spec.block_size;
    let n_blocks = numel.div_ceil(block);
    let nonnegative = spec.rule.slot_is_nonnegative(k);
    let book = crate::quant::CodeBook::for_buffer(nonnegative);
    let akey = format!("{prefix}{slot}{ABSMAX}/{name}");
    let absmax = match lookup(&akey).ok_or_else(|| bad(format!("buffer `{akey}` is missing")))? {
        Ok((got, data)) if got == [n_blocks] && data.len() == n_blocks => match data {
            Buffer::Scales(a) => a,
            Buffer::Full(wide) => {
                let mut a = Vec::with_capacity(n_blocks);
                for (i, x) in wide.into_iter().enumerate() {
                    let narrow = x.as_f64() as f32;
                    if f64::from(narrow) != x.as_f64() && !x.is_nan() {
                        return Err(bad(format!(
                            "buffer `{akey}` element {i} = {x:?} is not an f32 value"
                        )));
                    }
                    a.push(narrow);
                }
                a
            }
            _ => return Err(bad(format!("buffer `{akey}` is not F32 scales"))),
        },
        Ok((got, _)) => {
            return Err(bad(format!(
                "buffer `{akey}` has shape {got:?}, expected [{n_blocks}] (one scale per block \
                 of {block} of the {numel} elements)"
            )));
        }
        Err(what) => {
            return Err(bad(format!(
                "buffer `{akey}` is {what}, expected F32 [{n_blocks}]"
            )));
        }
    };
    if let Some(i) = absmax
        .iter()
        .position(|&a| a < 0.0 || a.to_bits() == (-0.0f32).to_bits())
    {
        return Err(bad(format!(
            "buffer `{akey}` element {i} = {} is negative: a block's scale is its largest magnitude",
            absmax[i]
        )));
    }
    let codes = match lookup(key).ok_or_else(|| bad(format!("buffer `{key}` is missing")))? {
        Ok((got, data)) if got == shape && data.len() == numel => match data {
            Buffer::Codes(c) => c,
            Buffer::Full(values) => {
                let values: Vec<f32> = values.iter().map(|x| x.as_f64() as f32).collect();
                match crate::quant::encode_exact(book, &values, &absmax, block) {
                    Ok(codes) => codes,
                    Err(i) => {
                        return Err(bad(format!(
                            "buffer `{key}` element {i} = {:?} is not a value of the 8-bit state \
                             (c[q]·a for a code q of the {} book and its block's scale a = {:?})",
                            values[i],
                            if nonnegative { "unsigned" } else { "signed" },
                            absmax[i / block]
                        )));
                    }
                }
            }
            _ => {
                return Err(bad(format!(
                    "buffer `{key}` is neither U8 codes nor {}",
                    T::NAME
                )));
            }
        },
        Ok((got, _)) => {
            return Err(bad(format!(
                "buffer `{key}` has shape {got:?}, expected {shape:?} of {numel} elements"
            )));
        }
        Err(what) => {
            return Err(bad(format!(
                "buffer `{key}` is {what}, expected U8 {shape:?}"
            )));
        }
    };
    Ok(QuantState {
        codes,
        absmax,
        nonnegative,
    })
}
