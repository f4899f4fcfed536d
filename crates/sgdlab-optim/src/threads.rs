//! The number of threads an optimizer step uses.
//!
//! Steps run on rayon's global pool (one thread per core, or `RAYON_NUM_THREADS`) until
//! [`set_num_threads`] gives them a pool of their own: what a process that shares the machine
//! with others needs — each rank of a data-parallel job, say, which would otherwise start a
//! thread per core each and oversubscribe them. The kernels' results do not depend on the
//! number of threads (every reduction is ordered), so this changes the speed only.

use std::sync::{Arc, RwLock};

use crate::{Error, Result};

/// The pool of [`set_num_threads`], if one is set.
static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// Runs the steps of every optimizer of this process on `n` threads (`n` ≥ 1), or on
/// rayon's global pool again with `n` = 0. Takes effect at the next step; a step already
/// running finishes on its pool.
///
/// ```
/// sgdlab_optim::set_num_threads(2)?;
/// assert_eq!(sgdlab_optim::num_threads(), 2);
/// sgdlab_optim::set_num_threads(0)?; // back to rayon's global pool
/// # Ok::<(), sgdlab_optim::Error>(())
/// ```
///
/// Errors if the operating system refuses the threads.
pub fn set_num_threads(n: usize) -> Result<()> {
    let pool = if n == 0 {
        None
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("sgdlab-step-{i}"))
            .build()
            .map_err(|e| Error::Unsupported(format!("a pool of {n} threads: {e}")))?;
        Some(Arc::new(pool))
    };
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// The number of threads the next step uses.
pub fn num_threads() -> usize {
    match current() {
        Some(pool) => pool.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

fn current() -> Option<Arc<rayon::ThreadPool>> {
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs `f` on the steps' pool: [`set_num_threads`]'s, or the caller's (rayon's global pool,
/// or the pool the caller already runs in).
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is global: the tests that set it take turns.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The pool is the one set, and back to the caller's with 0; a step on it gives the same
    /// bits as on the global pool.
    #[test]
    fn set_and_reset() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let before = num_threads();
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        assert_eq!(install(rayon::current_num_threads), 3);
        set_num_threads(0).unwrap();
        assert_eq!(num_threads(), before);
    }

    /// A step large enough to be split over the threads gives the same bits on one thread
    /// and on four.
    #[test]
    fn same_bits_on_any_number_of_threads() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        use crate::{Optimizer, StepInfo, Tensor};
        let n = 1 << 20;
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut results = Vec::new();
        for threads in [1, 4] {
            set_num_threads(threads).unwrap();
            let mut opt = Optimizer::<f32>::from_spec("adamw:lr=0.01,clip_norm=1").unwrap();
            let mut p = vec![Tensor::vector("w", vec![0.5f32; n])];
            let g = [Tensor::vector("w", grad.clone())];
            for _ in 0..3 {
                opt.step(&mut p, &g, &StepInfo::default()).unwrap();
            }
            results.push(p[0].data().to_vec());
        }
        set_num_threads(0).unwrap();
        assert!(results[0] == results[1]);
    }
}
